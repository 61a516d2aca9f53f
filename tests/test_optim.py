"""Parameter groups and the poly-lr SGD against the original's (golden data), momentum quirk,
and resuming."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from affinitynet.models import PolyOptimizer, build_affinity_net, build_classifier, build_optimizer, poly_lr
from conftest import golden_cases


class TwoConvs(nn.Module):
    """Stand-in network with one parameter per group, for the schedule."""

    def __init__(self) -> None:
        super().__init__()
        self.old = nn.Conv2d(2, 3, 1)
        self.new = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.new(self.old(x))

    def param_groups(self):
        return [self.old.weight], [self.old.bias], [self.new.weight], [self.new.bias]


def _train_steps(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int = 0) -> list[list[float]]:
    g = torch.Generator().manual_seed(seed)
    lrs = []
    for _ in range(steps):
        loss = net(torch.randn(4, 2, 3, 3, generator=g)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lrs.append([group["lr"] for group in opt.param_groups])
    return lrs


@pytest.mark.parametrize("path", golden_cases("optim_lr*_max*.json"))
def test_parameter_groups_match_original(path):
    golden = json.loads(path.read_text())
    nets = [k for k in golden if k != "schedule"]
    assert nets
    for net_name in nets:
        backbone, kind = net_name.rsplit("_", 1)
        with torch.device("meta"):
            net = build_classifier(backbone) if kind == "cls" else build_affinity_net(backbone)
        net.train()
        names = {id(p): n for n, p in net.named_parameters()}
        groups = net.param_groups()
        expected = golden[net_name]
        assert [[names[id(p)] for p in g] for g in groups] == expected["group_names"], net_name
        assert [len(g) for g in groups] == expected["group_tensors"], net_name
        assert [sum(p.numel() for p in g) for g in groups] == expected["group_elements"], net_name
        assert sorted(n for n, p in net.named_parameters() if p.requires_grad) == expected["trainable"]


@pytest.mark.parametrize("path", golden_cases("optim_lr*_max*.json"))
def test_schedule_matches_original(path):
    schedule = json.loads(path.read_text())["schedule"]
    lr, max_step, expected = schedule["lr"], schedule["max_step"], schedule["lr_after_step"]
    torch.manual_seed(0)
    net = TwoConvs()
    opt = build_optimizer(net, lr=lr, weight_decay=5e-4, max_step=max_step, momentum=5e-4)
    got = _train_steps(net, opt, len(expected))
    assert torch.allclose(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                          rtol=1e-12, atol=0)
    for step, row in enumerate(expected):
        assert poly_lr(lr, step, max_step) == pytest.approx(row[0], rel=1e-12)


def test_groups_lr_weight_decay_and_momentum_quirk():
    net = TwoConvs()
    from affinitynet.config import TrainAffConfig, TrainCamConfig

    # PSA passes the weight decay as SGD's momentum: the config's default momentum is that value
    for section in (TrainCamConfig(), TrainAffConfig()):
        assert section.momentum == section.weight_decay == 5e-4
    opt = build_optimizer(net, lr=0.01, weight_decay=5e-4, max_step=100, momentum=5e-4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.02, 0.1, 0.2])
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 5e-4, 0.0]
    assert all(g["momentum"] == 5e-4 for g in opt.param_groups)
    assert all(g["momentum"] == 0.9 for g in build_optimizer(net, 0.01, 5e-4, 100, momentum=0.9).param_groups)


def test_first_update_is_plain_sgd_with_decay():
    torch.manual_seed(0)
    net = TwoConvs()
    before = [p.detach().clone() for p in (net.old.weight, net.old.bias, net.new.weight, net.new.bias)]
    opt = build_optimizer(net, lr=0.1, weight_decay=0.01, max_step=10, momentum=0.01)
    net(torch.ones(1, 2, 1, 1)).sum().backward()
    grads = [p.grad.clone() for p in (net.old.weight, net.old.bias, net.new.weight, net.new.bias)]
    opt.step()
    after = [net.old.weight, net.old.bias, net.new.weight, net.new.bias]
    for p0, g, p1, lr, wd in zip(before, grads, after, (0.1, 0.2, 1.0, 2.0), (0.01, 0, 0.01, 0)):
        assert torch.allclose(p1, p0 - lr * (g + wd * p0), atol=1e-7)


def test_resume_continues_schedule_and_momentum():
    torch.manual_seed(0)
    reference = TwoConvs()
    resumed = TwoConvs()
    resumed.load_state_dict(reference.state_dict())
    opt_ref = build_optimizer(reference, 0.1, 5e-4, 8, momentum=0.9)
    lrs_ref = _train_steps(reference, opt_ref, 6)

    opt_a = build_optimizer(resumed, 0.1, 5e-4, 8, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # first half, same inputs as the reference
        resumed(torch.randn(4, 2, 3, 3, generator=g)).square().mean().backward()
        opt_a.step()
        opt_a.zero_grad()
    saved = opt_a.state_dict()
    assert saved["global_step"] == 3

    opt_b = build_optimizer(resumed, 0.1, 5e-4, 8, momentum=0.9)
    opt_b.load_state_dict(saved)
    assert opt_b.global_step == 3
    lrs = []
    for _ in range(3):
        resumed(torch.randn(4, 2, 3, 3, generator=g)).square().mean().backward()
        opt_b.step()
        opt_b.zero_grad()
        lrs.append([group["lr"] for group in opt_b.param_groups])
    assert torch.allclose(torch.tensor(lrs, dtype=torch.float64),
                          torch.tensor(lrs_ref[3:], dtype=torch.float64), rtol=1e-12, atol=0)
    for a, b in zip(reference.parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-7)


def test_lr_frozen_after_max_step_and_poly_values():
    assert poly_lr(1.0, 0, 10) == 1.0
    assert poly_lr(1.0, 5, 10) == pytest.approx(0.5 ** 0.9)
    assert poly_lr(1.0, 9, 10) == poly_lr(1.0, 10, 10) == poly_lr(1.0, 99, 10) == pytest.approx(0.1 ** 0.9)
    net = TwoConvs()
    opt = PolyOptimizer(net.parameters(), lr=0.5, weight_decay=0.0, max_step=3, momentum=0.0)
    lrs = _train_steps(net, opt, 6)
    assert [row[0] for row in lrs] == pytest.approx([0.5, 0.5 * (2 / 3) ** 0.9, 0.5 * (1 / 3) ** 0.9] + [0.5 * (1 / 3) ** 0.9] * 3)


def test_build_optimizer_on_real_networks_covers_trainable():
    for net in (build_classifier("tiny"), build_affinity_net("tiny")):
        opt = build_optimizer(net, 0.01, 5e-4, 10, momentum=5e-4)
        in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
        assert in_opt == {id(p) for p in net.parameters() if p.requires_grad}
    with torch.device("meta"):
        r38 = build_classifier("resnet38")
    opt = build_optimizer(r38, 0.01, 5e-4, 10, momentum=5e-4)  # empty bias groups are fine
    assert [len(g["params"]) for g in opt.param_groups] == [35, 0, 1, 0]
