"""SGD with the poly learning-rate schedule and PSA's four parameter groups.

Groups (pretrained weights, pretrained biases, new weights, new biases) get the learning rates
(lr, 2lr, 10lr, 20lr) and weight decay (wd, 0, wd, 0), as PSA's train_cls/train_aff. A network
may instead declare its own groups as :class:`~affinitynet.models.base.ParamGroup` objects (IRN's
two, with lr and 10lr). Before each update at step s < max_step every lr becomes
initial * (1 - s/max_step)^0.9; from max_step on it stays where it was.

PSA's quirk: its optimizer calls ``SGD(params, lr, weight_decay)`` positionally, which passes the
weight decay as the *momentum*; so the released models were trained with momentum 0.0005 (= wd).
The caller passes the momentum (the config's default is that 5e-4; e.g. 0.9 for DeepLab's).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from affinitynet.models.base import ParamGroup

#: poly schedule exponent (PSA; Chen et al. DeepLab)
POLY_POWER = 0.9
#: learning-rate multipliers of the four parameter groups (PSA)
GROUP_LR_MULT = (1.0, 2.0, 10.0, 20.0)
#: whether each group gets weight decay (biases do not, PSA)
GROUP_DECAY = (True, False, True, False)


def poly_lr(base_lr: float, step: int, max_step: int, power: float = POLY_POWER) -> float:
    """Learning rate used by update ``step`` (0-based): base_lr * (1 - step/max_step)^power.

    From ``max_step`` on the schedule stops, so the rate stays at that of step max_step - 1 (PSA).
    """
    step = min(step, max_step - 1)
    return base_lr * (1.0 - step / max_step) ** power


class PolyOptimizer(torch.optim.SGD):
    """SGD whose group learning rates follow :func:`poly_lr` from their initial values.

    The step counter is in :meth:`state_dict`, so a resumed run continues the schedule.
    """

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float, max_step: int,
                 momentum: float, power: float = POLY_POWER) -> None:
        if max_step < 1:
            raise ValueError(f"max_step must be >= 1, got {max_step}")
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.global_step = 0
        self.max_step = max_step
        self.power = power
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])

    def step(self, closure=None):  # type: ignore[override]
        """Set the poly learning rates for the current step, update, then count the step."""
        if self.global_step < self.max_step:
            for group in self.param_groups:
                group["lr"] = poly_lr(group["initial_lr"], self.global_step, self.max_step, self.power)
        loss = super().step(closure)
        self.global_step += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["global_step"] = self.global_step
        state["max_step"] = self.max_step
        state["power"] = self.power
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.global_step = int(state_dict.pop("global_step", 0))
        self.max_step = int(state_dict.pop("max_step", self.max_step))
        self.power = float(state_dict.pop("power", self.power))
        super().load_state_dict(state_dict)


def optimizer_groups(net: torch.nn.Module) -> list[ParamGroup]:
    """``net.param_groups()`` as :class:`ParamGroup` objects: a network's own declared groups as
    they are, PSA's four lists with PSA's multipliers and decay flags."""
    groups = list(net.param_groups())
    if all(isinstance(g, ParamGroup) for g in groups):
        return groups
    if len(groups) != len(GROUP_LR_MULT) or any(isinstance(g, ParamGroup) for g in groups):
        raise TypeError(f"{type(net).__name__}.param_groups() must return PSA's four parameter lists "
                        "or a list of ParamGroup")
    return [ParamGroup(list(params), mult, decay)
            for params, mult, decay in zip(groups, GROUP_LR_MULT, GROUP_DECAY)]


def build_optimizer(net: torch.nn.Module, lr: float, weight_decay: float, max_step: int,
                    momentum: float) -> PolyOptimizer:
    """PolyOptimizer over the network's parameter groups (:func:`optimizer_groups`): each at
    ``lr`` times its multiplier, with ``weight_decay`` where the group takes it.

    ``net`` must be in the mode it will train in (its frozen layers are left out of the groups).
    """
    groups = [{"params": list(g.params), "lr": lr * g.lr_mult, "weight_decay": weight_decay if g.weight_decay else 0.0}
              for g in optimizer_groups(net)]
    return PolyOptimizer(groups, lr=lr, weight_decay=weight_decay, max_step=max_step, momentum=momentum)
