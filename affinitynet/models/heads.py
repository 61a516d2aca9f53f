"""The heads on top of any :class:`~affinitynet.models.base.Backbone`: the paper's two
(classifier/CAM, AffinityNet) and the segmentation network trained on the pseudo labels.

All are mixins: a concrete network is ``class ResNet38Classifier(ClassifierNet, ResNet38)``, so
the head's layers (``fc8``; ``f8_3``, ``f8_4``, ``f8_5``, ``f9``; ``fc8_seg``) sit next to the
backbone's in one flat state dict, with the names of the original release where it had them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from torch import nn

from affinitynet.algorithms.affinity import affinity_from_features
from affinitynet.models.base import Backbone

#: output channels of f8_3, f8_4, f8_5 (Ahn & Kwak 2018, Sec. 4.1: 64, 128, 256 -> 448)
AFFINITY_LEVEL_CHANNELS = (64, 128, 256)
#: GroupNorm groups of the VGG-16 AffinityNet (PSA vgg16_aff: 8, 16, 32)
AFFINITY_GN_GROUPS = (8, 16, 32)


class ClassifierNet(Backbone):
    """Multi-label classifier whose 1x1 class conv also gives the class activation maps.

    logits = fc8(global average pool(features)) (B, num_classes); the CAM is fc8 applied at
    every cell, ReLU (and sqrt for VGG-16, as PSA's vgg16_cls), (B, num_classes, h, w) >= 0.
    """

    def __init__(self, num_classes: int = 20, **backbone_kwargs) -> None:
        super().__init__(**backbone_kwargs)
        self.num_classes = num_classes
        self.dropout7 = nn.Dropout2d(self.classifier_dropout) if self.classifier_dropout > 0 else nn.Identity()
        self.fc8 = nn.Conv2d(self.level_channels[2], num_classes, 1, bias=False)
        nn.init.xavier_uniform_(self.fc8.weight)
        self.apply_freeze()

    def new_layers(self) -> list[nn.Module]:
        return super().new_layers() + [self.fc8]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> the deepest level (B, C, ceil(H/8), ceil(W/8))."""
        return self.features_levels(x)[self.level_names[2]]

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        features = self.dropout7(features)
        if self.conv_before_pool:  # PSA vgg16_cls: fc8 then average pooling
            return self.fc8(features).mean(dim=(2, 3))
        return self.fc8(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def _cam(self, features: torch.Tensor) -> torch.Tensor:
        cam = F.relu(F.conv2d(features, self.fc8.weight))
        return torch.sqrt(cam) if self.cam_sqrt else cam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised image -> logits (B, num_classes), before the sigmoid."""
        return self._logits(self.features(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> class activation maps (B, num_classes, ceil(H/8), ceil(W/8)), >= 0."""
        return self._cam(self.features(x))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and CAM from one backbone pass (the CAM sees no classifier dropout)."""
        features = self.features(x)
        return self._logits(features), self._cam(features)


#: dilation of the segmentation head's 3x3 conv: DeepLab-LargeFOV's (Chen et al., ICLR 2015)
SEGMENTATION_DILATION = 12


class SegmentationNet(Backbone):
    """Segmentation network of the last step (paper Sec. 5: a DeepLab-style network trained on
    the random walk's pseudo labels).

    The deepest backbone level, dropout, and one 3x3 convolution with dilation 12 (DeepLab-
    LargeFOV's field of view) to ``num_classes + 1`` scores, background first:
    (B, 3, H, W) -> (B, num_classes + 1, ceil(H/8), ceil(W/8)).
    """

    def __init__(self, num_classes: int = 20, **backbone_kwargs) -> None:
        super().__init__(**backbone_kwargs)
        self.num_classes = num_classes
        self.dropout7 = nn.Dropout2d(self.classifier_dropout) if self.classifier_dropout > 0 else nn.Identity()
        d = SEGMENTATION_DILATION
        self.fc8_seg = nn.Conv2d(self.level_channels[2], num_classes + 1, 3, padding=d, dilation=d)
        nn.init.normal_(self.fc8_seg.weight, std=0.01)  # DeepLab's initialisation of the class layer
        nn.init.zeros_(self.fc8_seg.bias)
        self.apply_freeze()

    def new_layers(self) -> list[nn.Module]:
        return super().new_layers() + [self.fc8_seg]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised image -> class scores (B, num_classes + 1, ceil(H/8), ceil(W/8))."""
        features = self.features_levels(x)[self.level_names[2]]
        return self.fc8_seg(self.dropout7(features))


class AffinityNet(Backbone):
    """AffinityNet (Ahn & Kwak 2018, Sec. 4.1): 448-channel features for semantic affinity.

    Each backbone level gets a 1x1 conv (no bias) to 64/128/256 channels and an ELU (GroupNorm
    before the ELU on VGG-16); their concatenation goes through a 1x1 conv 448->448 and an ELU.
    """

    def __init__(self, **backbone_kwargs) -> None:
        super().__init__(**{**self.affinity_backbone_kwargs, **backbone_kwargs})
        c3, c4, c5 = self.level_channels
        o3, o4, o5 = AFFINITY_LEVEL_CHANNELS
        self.f8_3 = nn.Conv2d(c3, o3, 1, bias=False)
        self.f8_4 = nn.Conv2d(c4, o4, 1, bias=False)
        self.f8_5 = nn.Conv2d(c5, o5, 1, bias=False)
        if self.affinity_groupnorm:
            g3, g4, g5 = AFFINITY_GN_GROUPS
            self.gn8_3 = nn.GroupNorm(g3, o3)
            self.gn8_4 = nn.GroupNorm(g4, o4)
            self.gn8_5 = nn.GroupNorm(g5, o5)
        self.f9 = nn.Conv2d(o3 + o4 + o5, o3 + o4 + o5, 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)  # PSA's initialisation of f9
        self.apply_freeze()

    def new_layers(self) -> list[nn.Module]:
        # GroupNorm layers count as pretrained, as in PSA (only the 1x1 convs are new)
        return super().new_layers() + [self.f8_3, self.f8_4, self.f8_5, self.f9]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised image -> affinity features (B, 448, ceil(H/8), ceil(W/8)), the
        ELU of f9's output (> -1); the affinities are measured on exactly these (paper Eq. 1)."""
        by_name = self.features_levels(x)
        levels = [by_name[name] for name in self.level_names]
        convs = (self.f8_3, self.f8_4, self.f8_5)
        norms = ((self.gn8_3, self.gn8_4, self.gn8_5) if self.affinity_groupnorm
                 else (nn.Identity(),) * 3)
        parts = [F.elu(norm(conv(level))) for level, conv, norm in zip(levels, convs, norms)]
        return F.elu(self.f9(torch.cat(parts, dim=1)))

    def affinity(self, x: torch.Tensor, radius: int) -> torch.Tensor:
        """(B,3,H,W) normalised image -> pair affinities (B, n_offsets, n_from) in (0, 1]."""
        return affinity_from_features(self(x), radius)

