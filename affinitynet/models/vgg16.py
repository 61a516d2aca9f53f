"""VGG-16 DeepLab-LargeFOV with output stride 8, as PSA's ``vgg16d``.

pool1-3 are 3x3 stride-2 max pools (padding 1, so an H-pixel side becomes ceil(H/2)); pool4 has
stride 1 and conv5_* dilation 2; fc6 is a 3x3 conv to 1024 channels, dilation 1 in the
classifier and 4 in the AffinityNet (PSA); fc7 is 1x1. Input: Caffe BGR minus the channel means.
Names follow the Caffe model ``vgg16_20M`` (conv1_1 ... fc7), so its converted weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from affinitynet.models.base import Backbone
from affinitynet.models.heads import AffinityNet, ClassifierNet, SegmentationNet

# (name, in, out, dilation) per conv, grouped by stage; a pool follows every stage but the last
_STAGES = (
    (("conv1_1", 3, 64), ("conv1_2", 64, 64)),
    (("conv2_1", 64, 128), ("conv2_2", 128, 128)),
    (("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256)),
    (("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512)),
    (("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512)),
)


class VGG16(Backbone):
    """VGG-16 backbone, (B,3,H,W) Caffe-BGR input -> levels at stride 8.

    Levels: ``conv4`` (512 ch, after conv4_3), ``conv5`` (512, after conv5_3), ``conv5fc``
    (1024, after fc7), all after ReLU.
    """

    level_names = ("conv4", "conv5", "conv5fc")
    level_channels = (512, 512, 1024)
    normalization = "caffe_bgr"
    classifier_dropout = 0.5
    cam_sqrt = True
    conv_before_pool = True
    affinity_groupnorm = True
    affinity_backbone_kwargs = {"fc6_dilation": 4}

    def __init__(self, fc6_dilation: int = 1) -> None:
        super().__init__()
        for stage, convs in enumerate(_STAGES):
            dilation = 2 if stage == 4 else 1
            for name, cin, cout in convs:
                self.add_module(name, nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation))
        self.fc6 = nn.Conv2d(512, 1024, 3, padding=fc6_dilation, dilation=fc6_dilation)
        self.drop6 = nn.Dropout2d(0.5)
        self.fc7 = nn.Conv2d(1024, 1024, 1)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.conv1_1, self.conv1_2, self.conv2_1, self.conv2_2]

    def features_levels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        levels = {}
        for stage, convs in enumerate(_STAGES):
            for name, _, _ in convs:
                x = F.relu(getattr(self, name)(x))
            if stage < 3:
                x = F.max_pool2d(x, 3, stride=2, padding=1)
            elif stage == 3:
                levels["conv4"] = x
                x = F.max_pool2d(x, 3, stride=1, padding=1)
        levels["conv5"] = x
        x = self.drop6(F.relu(self.fc6(x)))
        levels["conv5fc"] = F.relu(self.fc7(x))
        return levels


class VGG16Classifier(ClassifierNet, VGG16):
    """PSA's ``vgg16_cls``: fc8 (1024 -> classes) before the pooling; CAM = sqrt(ReLU(fc8))."""


class VGG16AffinityNet(AffinityNet, VGG16):
    """PSA's ``vgg16_aff``: fc6 dilation 4; f8_* each followed by GroupNorm (8/16/32 groups)."""


class VGG16SegmentationNet(SegmentationNet, VGG16):
    """VGG-16 (fc6/fc7 as in the classifier) + dropout + fc8_seg (3x3, dilation 12 -> classes + 1)."""
