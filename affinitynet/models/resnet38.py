"""ResNet-38 ("model A1" of Wu, Shen & van den Hengel, 2016) with output stride 8, as in PSA.

Pre-activation residual blocks (BN-ReLU before each conv). Strides 2 in b2, b3, b4; b5 has
dilation 2, b6 and b7 (bottleneck blocks with dropout 0.3 / 0.5) dilation 4. Parameter names
are those of PSA's ``resnet38d`` so the released ``res38_cls.pth`` / ``res38_aff.pth`` and the
converted ImageNet weights (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params``) load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affinitynet.models.base import Backbone
from affinitynet.models.heads import AffinityNet, ClassifierNet, SegmentationNet


class ResBlock(nn.Module):
    """Pre-activation block: two 3x3 convs; a 1x1 projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, stride: int = 1,
                 first_dilation: int | None = None, dilation: int = 1) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, mid_channels, 3, stride, padding=first_dilation,
                                       dilation=first_dilation, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (block output, BN-ReLU of the input); the latter is a feature level."""
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(preact)
        y = self.conv_branch2a(preact)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y, preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class BottleneckBlock(nn.Module):
    """Pre-activation bottleneck 1x1 -> 3x3 (dilated) -> 1x1 with channel dropout (b6, b7)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, stride, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(out_channels // 4, out_channels // 2, 3, padding=dilation,
                                        dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward_with_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preact = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(preact)
        y = self.conv_branch2a(preact)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return shortcut + y, preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_preact(x)[0]


class ResNet38(Backbone):
    """ResNet-38 backbone, (B,3,H,W) ImageNet-normalised RGB -> levels at stride 8.

    Levels: ``conv4`` (512 ch, BN-ReLU input of b5), ``conv5`` (1024, BN-ReLU input of b6),
    ``conv6`` (4096, ReLU(bn7(b7 output))). 104.3M parameters in the backbone.
    """

    level_names = ("conv4", "conv5", "conv6")
    level_channels = (512, 1024, 4096)
    normalization = "imagenet"
    classifier_dropout = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.conv1a = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.b2 = ResBlock(64, 128, 128, stride=2)
        self.b2_1 = ResBlock(128, 128, 128)
        self.b2_2 = ResBlock(128, 128, 128)
        self.b3 = ResBlock(128, 256, 256, stride=2)
        self.b3_1 = ResBlock(256, 256, 256)
        self.b3_2 = ResBlock(256, 256, 256)
        self.b4 = ResBlock(256, 512, 512, stride=2)
        self.b4_1 = ResBlock(512, 512, 512)
        self.b4_2 = ResBlock(512, 512, 512)
        self.b4_3 = ResBlock(512, 512, 512)
        self.b4_4 = ResBlock(512, 512, 512)
        self.b4_5 = ResBlock(512, 512, 512)
        self.b5 = ResBlock(512, 512, 1024, first_dilation=1, dilation=2)
        self.b5_1 = ResBlock(1024, 512, 1024, dilation=2)
        self.b5_2 = ResBlock(1024, 512, 1024, dilation=2)
        self.b6 = BottleneckBlock(1024, 2048, dilation=4, dropout=0.3)
        self.b7 = BottleneckBlock(2048, 4096, dilation=4, dropout=0.5)
        self.bn7 = nn.BatchNorm2d(4096)

    def frozen_modules(self) -> list[nn.Module]:
        # PSA freezes the first conv and the three stride-2 blocks after it (plus all BN)
        return [self.conv1a, self.b2, self.b2_1, self.b2_2]

    def features_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1a(x)
        for block in (self.b2, self.b2_1, self.b2_2, self.b3, self.b3_1, self.b3_2,
                      self.b4, self.b4_1, self.b4_2, self.b4_3, self.b4_4, self.b4_5):
            x = block(x)
        x, conv4 = self.b5.forward_with_preact(x)
        x = self.b5_2(self.b5_1(x))
        x, conv5 = self.b6.forward_with_preact(x)
        conv6 = F.relu(self.bn7(self.b7(x)))
        return {"conv4": conv4, "conv5": conv5, "conv6": conv6}


class ResNet38Classifier(ClassifierNet, ResNet38):
    """PSA's ``resnet38_cls``: ResNet-38 + dropout 0.5 + GAP + fc8 (4096 -> classes)."""


class ResNet38AffinityNet(AffinityNet, ResNet38):
    """PSA's ``resnet38_aff``: ResNet-38 + f8_3/f8_4/f8_5 (512/1024/4096 -> 64/128/256) + f9."""


class ResNet38SegmentationNet(SegmentationNet, ResNet38):
    """ResNet-38 + dropout + fc8_seg (3x3, dilation 12 -> classes + 1): the stage-5 network."""
