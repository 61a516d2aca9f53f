"""ResNet-50 in torchvision's layout, dilated to output stride 8 (or 16), as in IRN.

The layers are torchvision's own (``torchvision.models.resnet50``), so its ImageNet checkpoints
load by name after :func:`remap_resnet50_state_dict`. The last stages trade stride for dilation
(torchvision's ``replace_stride_with_dilation``). As IRN does, conv1/bn1 are frozen and every
batch norm keeps its ImageNet running statistics (eval mode) while its affine part trains.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from affinitynet.models.base import Backbone
from affinitynet.models.heads import AffinityNet, ClassifierNet, SegmentationNet

_STRIDE_TO_DILATION = {8: [False, True, True], 16: [False, False, True]}


class ResNet50(Backbone):
    """ResNet-50, (B,3,H,W) ImageNet-normalised RGB -> levels ``layer2`` (512 ch, stride 8),
    ``layer3`` (1024) and ``layer4`` (2048), both dilated to the output stride.
    """

    level_names = ("layer2", "layer3", "layer4")
    level_channels = (512, 1024, 2048)
    normalization = "imagenet"
    freeze_batchnorm = True
    freeze_batchnorm_affine = False

    def __init__(self, output_stride: int = 8) -> None:
        super().__init__()
        if output_stride not in _STRIDE_TO_DILATION:
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        self.feature_stride = output_stride
        net = torchvision.models.resnet50(weights=None,
                                          replace_stride_with_dilation=_STRIDE_TO_DILATION[output_stride])
        # take torchvision's modules as our own (top-level names = torchvision's keys)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))

    def frozen_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1]

    def features_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        layer2 = self.layer2(x)
        layer3 = self.layer3(layer2)
        layer4 = self.layer4(layer3)
        return {"layer2": layer2, "layer3": layer3, "layer4": layer4}


class ResNet50Classifier(ClassifierNet, ResNet50):
    """ResNet-50 + GAP + fc8 (2048 -> classes), IRN's CAM network at output stride 8."""


class ResNet50AffinityNet(AffinityNet, ResNet50):
    """ResNet-50 + f8_3/f8_4/f8_5 (512/1024/2048 -> 64/128/256) + f9."""


def remap_resnet50_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a ResNet-50 checkpoint's keys to ours.

    Accepted layouts: torchvision ImageNet (``conv1.weight``, ``layer1.0.conv1.weight``, ...; its
    ``fc.*`` 1000-class layer is dropped); IRN's ``res50_cam.pth`` (``resnet50.`` prefix removed,
    the ``stage1..4.`` aliases of the same tensors dropped, ``classifier.weight`` -> ``fc8.weight``);
    and any of these wrapped by DataParallel/DDP (``module.`` prefix). Other keys pass unchanged
    (and a strict load then reports them).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("resnet50."):
            key = key[len("resnet50."):]
        elif key.startswith(("stage1.", "stage2.", "stage3.", "stage4.")):
            continue
        if key.startswith("fc.") or key.startswith("avgpool"):
            continue
        if key == "classifier.weight":
            key = "fc8.weight"
        out[key] = value
    return out


class ResNet50SegmentationNet(SegmentationNet, ResNet50):
    """ResNet-50 + dropout + fc8_seg (3x3, dilation 12 -> classes + 1): the stage-5 network."""
