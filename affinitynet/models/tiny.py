"""A small conv+BN+ReLU backbone (~0.5M parameters) for CPU demos and tests; no pretrained weights.

Output stride 8 after three stride-2 stages; the last two stages are dilated (2, 4) instead of
strided, as the large backbones, which gives a ~135-pixel receptive field at stride 8 for
recognising objects from their colour and texture. Trained from scratch, so its batch norm
layers train normally (nothing is frozen).
"""

from __future__ import annotations

import torch
from torch import nn

from affinitynet.models.base import Backbone
from affinitynet.models.heads import AffinityNet, ClassifierNet, SegmentationNet


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Tiny(Backbone):
    """Tiny backbone, (B,3,H,W) ImageNet-normalised RGB -> levels ``conv4`` (96 ch),
    ``conv5`` (128) and ``conv6`` (192), each (B, C, ceil(H/8), ceil(W/8)).
    """

    level_names = ("conv4", "conv5", "conv6")
    level_channels = (96, 128, 192)
    normalization = "imagenet"
    freeze_batchnorm = False

    def __init__(self) -> None:
        super().__init__()
        self.stage1 = nn.Sequential(*_conv_bn_relu(3, 32, stride=2))
        self.stage2 = nn.Sequential(*_conv_bn_relu(32, 48, stride=2), *_conv_bn_relu(48, 48))
        self.stage3 = nn.Sequential(*_conv_bn_relu(48, 96, stride=2), *_conv_bn_relu(96, 96))
        self.stage4 = nn.Sequential(*_conv_bn_relu(96, 128, dilation=2))
        self.stage5 = nn.Sequential(*_conv_bn_relu(128, 192, dilation=4))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        conv4 = self.stage3(self.stage2(self.stage1(x)))
        conv5 = self.stage4(conv4)
        conv6 = self.stage5(conv5)
        return {"conv4": conv4, "conv5": conv5, "conv6": conv6}


class TinyClassifier(ClassifierNet, Tiny):
    """Tiny backbone + GAP + fc8 (192 -> classes)."""


class TinyAffinityNet(AffinityNet, Tiny):
    """Tiny backbone + f8_3/f8_4/f8_5 (96/128/192 -> 64/128/256) + f9."""


class TinySegmentationNet(SegmentationNet, Tiny):
    """Tiny backbone + dropout + fc8_seg (3x3, dilation 12 -> classes + 1): the stage-5 network."""
