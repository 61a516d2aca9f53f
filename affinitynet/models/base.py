"""The backbone contract shared by every network, parameter groups, and checkpoint loading.

A backbone is an ``nn.Module`` whose parameters sit at the top level of its state dict (no
``backbone.`` prefix), so the heads in :mod:`affinitynet.models.heads` can subclass it and keep the
exact key names of the original releases (PSA's ``res38_cls.pth`` etc.).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from affinitynet.errors import InputError

ParamGroups = tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]


@dataclass(frozen=True)
class ParamGroup:
    """One optimizer group a network declares itself (IRN's networks; PSA's use the four
    groups of :meth:`Backbone.param_groups`): its parameters, the multiple of the base learning
    rate it trains with, and whether it gets the weight decay."""

    params: list[nn.Parameter]
    lr_mult: float
    weight_decay: bool
    name: str = ""

# Modules whose ``weight``/``bias`` go into the parameter groups (PSA's get_parameter_groups).
_GROUPED = (nn.Conv2d, nn.GroupNorm, nn.BatchNorm2d)


class Backbone(nn.Module):
    """Feature extractor with output stride 8 and three feature levels for AffinityNet.

    Subclasses set the class attributes and implement :meth:`features_levels`.
    """

    #: names of the three levels, shallow to deep (AffinityNet's f8_3, f8_4, f8_5 inputs)
    level_names: tuple[str, str, str] = ("conv4", "conv5", "conv6")
    #: channels of the three levels
    level_channels: tuple[int, int, int] = (0, 0, 0)
    #: "imagenet" (RGB/255, mean/std) or "caffe_bgr" (BGR minus the Caffe means)
    normalization: str = "imagenet"
    #: dropout before the classifier (PSA: ``dropout7`` / ``drop7``, 0.5)
    classifier_dropout: float = 0.0
    #: VGG-16 DeepLab: 1x1 class conv before global pooling and sqrt of the CAM (PSA vgg16_cls)
    cam_sqrt: bool = False
    conv_before_pool: bool = False
    #: VGG-16 AffinityNet: GroupNorm after each f8_* conv (PSA vgg16_aff)
    affinity_groupnorm: bool = False
    #: keyword arguments the AffinityNet variant passes to the backbone constructor
    affinity_backbone_kwargs: dict = {}
    #: whether batch norm layers stay in eval mode with frozen affine parameters while training
    freeze_batchnorm: bool = True
    #: whether batch norm affine parameters are frozen too (else only their running statistics)
    freeze_batchnorm_affine: bool = True

    feature_stride: int = 8

    def features_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B,3,H,W) normalised image -> the three levels, each (B,C_i,ceil(H/8),ceil(W/8))."""
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """Modules whose parameters are never trained (the paper's recipe)."""
        return []

    def new_layers(self) -> list[nn.Module]:
        """Layers trained from scratch (10x/20x learning rate); the heads extend this."""
        return []

    # -- training mode -----------------------------------------------------------------------
    def apply_freeze(self) -> None:
        """Set ``requires_grad=False`` on the frozen modules and (if configured) batch norm."""
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if self.freeze_batchnorm and self.freeze_batchnorm_affine:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        """Switch mode; frozen layers stay frozen and batch norm stays in eval mode (PSA)."""
        super().train(mode)
        self.apply_freeze()
        if self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def param_groups(self) -> ParamGroups:
        """(pretrained weights, pretrained biases, new weights, new biases), trainable only.

        Walks the modules in registration order like PSA's ``get_parameter_groups``: weights and
        biases of convolutions and normalisation layers; a layer counts as new when it is in
        :meth:`new_layers`. Every trainable parameter ends up in exactly one group.
        """
        new = {id(m) for m in self.new_layers()}
        groups: ParamGroups = ([], [], [], [])
        seen: set[int] = set()
        for m in self.modules():
            if not isinstance(m, _GROUPED):
                continue
            offset = 2 if id(m) in new else 0
            for which, p in ((0, m.weight), (1, m.bias)):
                if p is not None and p.requires_grad and id(p) not in seen:
                    groups[offset + which].append(p)
                    seen.add(id(p))
        leftover = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in seen]
        if leftover:  # a layer type the walk does not know: fail loudly rather than not train it
            raise TypeError(f"parameters outside the parameter groups: {leftover}")
        return groups


def input_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A (B, 3, H, W) batch to ``device``, NHWC when the network is (``channels_last``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


def _describe(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" ... and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(net: nn.Module, state_dict: Mapping[str, torch.Tensor],
                     keys: Iterable[str] | None = None) -> None:
    """Raise :class:`InputError` naming missing/unexpected keys and shape mismatches at once.

    ``keys`` restricts the check to those keys of ``net`` (unexpected keys are then ignored).
    A missing ``num_batches_tracked`` is tolerated (checkpoints from PyTorch < 0.4.1 lack it).
    """
    own = net.state_dict()
    wanted = list(own) if keys is None else list(keys)
    missing = [k for k in wanted if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own] if keys is None else []
    mismatched = [f"{k} (checkpoint {tuple(state_dict[k].shape)} vs network {tuple(own[k].shape)})"
                  for k in wanted if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_describe(mismatched)}")
    if problems:
        raise InputError(f"checkpoint does not fit {type(net).__name__}: " + "; ".join(problems))


def load_state_dict_strict(net: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Load a full checkpoint (e.g. PSA's ``res38_cls.pth``): names and shapes must match exactly.

    Raises :class:`InputError` listing every missing key, unexpected key and shape mismatch.
    """
    state = {k: torch.as_tensor(v) for k, v in state_dict.items()}  # numpy arrays welcome
    check_state_dict(net, state)
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros_like(v)
    net.load_state_dict(state, strict=True)


def backbone_keys(net: nn.Module) -> list[str]:
    """State-dict keys of ``net`` that belong to its backbone (not to the heads' fc8 / f8_* /
    gn8_* / f9 / fc8_seg, nor to IRN's boundary and displacement branches)."""
    head_prefixes = ("fc8.", "f8_", "gn8_", "f9.", "fc8_seg.", "fc_edge", "fc_dp", "mean_shift.", "edge_layers.",
                     "dp_layers.")
    return [k for k in net.state_dict() if not k.startswith(head_prefixes)]


def load_backbone_state_dict(net: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Initialise the backbone of ``net`` from pretrained weights or a trained sibling network.

    Every backbone key must be present with the right shape (else :class:`InputError`); head
    keys of ``net`` keep their fresh initialisation. Returns the checkpoint keys not used (e.g.
    the classifier's ``fc8.weight`` when initialising an AffinityNet from it). A network with a
    ``backbone`` submodule (the DeepLab networks) takes the weights there: a torchvision ResNet
    file (its ``fc`` left unused) or a checkpoint of such a network (``backbone.`` keys).
    """
    inner = getattr(net, "backbone", None)
    if isinstance(inner, nn.Module):
        net, state_dict = inner, {k.removeprefix("backbone."): v for k, v in state_dict.items()}
        keys = list(inner.state_dict())
    else:
        keys = backbone_keys(net)
    check_state_dict(net, state_dict, keys)
    own = net.state_dict()
    subset = {k: torch.as_tensor(state_dict[k]) for k in keys if k in state_dict}
    for k in keys:
        if k not in subset:  # only num_batches_tracked can be absent here
            subset[k] = torch.zeros_like(own[k])
    net.load_state_dict(subset, strict=False)
    return [k for k in state_dict if k not in set(keys)]
