"""A small conv+BN+ReLU backbone (~0.5M parameters) for CPU demos and tests; no pretrained weights.
Its networks: classifier, AffinityNet, segmentation network and IRN's boundary / displacement
network (``TinyIRN``).

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
from affinitynet.models.irn import BoundaryDisplacementNet, MeanShift, branch_layer


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


class TinyIRN(BoundaryDisplacementNet):
    """IRN's inter-pixel relation network on the tiny backbone, for CPU demos and tests: the
    frozen tiny backbone (the stride-4 level ``stage2`` and the three stride-8 levels) with a
    boundary branch and a displacement branch on the stride-4 grid, laid out as
    :class:`~affinitynet.models.irn.ResNet50IRN`'s at a quarter of the width.

    ``forward``: (B,3,H,W) -> (edge_out (B,1,h,w) logits, dp_out (B,2,h,w)), h = ceil(H/4),
    w = ceil(W/4). Its backbone keys are the tiny classifier's (``stage1`` .. ``stage5``), so
    it starts from a trained classifier as IRN starts from ImageNet.
    """

    def __init__(self) -> None:
        super().__init__()
        trunk = Tiny()
        self.stage1, self.stage2, self.stage3 = trunk.stage1, trunk.stage2, trunk.stage3
        self.stage4, self.stage5 = trunk.stage4, trunk.stage5
        self.mean_shift = MeanShift(2)
        # boundary branch: the four levels to 16 channels each at stride 4, then 64 -> 1
        self.fc_edge1 = branch_layer(48, 16, 4)
        self.fc_edge2 = branch_layer(96, 16, 4, upsample=2)
        self.fc_edge3 = branch_layer(128, 16, 4, upsample=2)
        self.fc_edge4 = branch_layer(192, 16, 4, upsample=2)
        self.fc_edge5 = nn.Conv2d(64, 1, 1, bias=True)
        # displacement branch: the three deep levels meet at stride 8, then join the shallow one
        self.fc_dp1 = branch_layer(48, 32, 4)
        self.fc_dp2 = branch_layer(96 + 128 + 192, 128, 8, upsample=2)
        self.fc_dp3 = nn.Sequential(nn.Conv2d(160, 64, 1, bias=False), nn.GroupNorm(8, 64), nn.ReLU(),
                                    nn.Conv2d(64, 2, 1, bias=False), self.mean_shift)
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4,
                                          self.fc_edge5])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3])
        self.apply_freeze()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3, self.stage4, self.stage5]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) normalised image -> edge_out (B,1,h,w) logits, dp_out (B,2,h,w)."""
        x2 = self.stage2(self.stage1(x)).detach()  # the backbone never trains (IRN)
        x3 = self.stage3(x2).detach()
        x4 = self.stage4(x3).detach()
        x5 = self.stage5(x4).detach()
        h, w = x2.shape[2:]  # the stride-4 grid; upsampled stride-8 levels can overshoot it
        edges = [self.fc_edge1(x2), *(layer(x)[..., :h, :w] for layer, x in
                                      ((self.fc_edge2, x3), (self.fc_edge3, x4), (self.fc_edge4, x5)))]
        edge_out = self.fc_edge5(torch.cat(edges, dim=1))
        deep = self.fc_dp2(torch.cat([x3, x4, x5], dim=1))[..., :h, :w]
        dp_out = self.fc_dp3(torch.cat([self.fc_dp1(x2), deep], dim=1))
        return edge_out, dp_out
