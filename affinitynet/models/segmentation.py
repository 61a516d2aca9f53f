"""Segmentation networks of stage 5 (train-seg, segment, predict), by name (``train_seg.model``):

- ``largefov``: the run's backbone with the DeepLab-LargeFOV head (``SegmentationNet``: one 3x3
  convolution with dilation 12), the paper's choice for its own networks and the default;
- ``deeplabv2``: DeepLab-v2 (Chen et al., TPAMI 2017), ResNet-101 at output stride 8 with ASPP:
  four parallel 3x3 convolutions with dilations 6, 12, 18, 24 whose scores are summed, the
  network most WSSS papers since 2018 report;
- ``deeplabv3_resnet50`` / ``deeplabv3_resnet101``: DeepLab-v3 (Chen et al., 2017) as
  torchvision builds it (``torchvision.models.segmentation``), backbone at output stride 8,
  optionally with torchvision's auxiliary FCN head on layer3 (``train_seg.aux_loss``).

The name -> builder table is ``SEGMENTATION_MODELS`` in ``affinitynet.models``. Every network
takes ImageNet-normalised RGB and gives (B, classes + 1, h, w) scores, background
first, at any stride (callers upsample); with the auxiliary head in training mode it gives
{"out": scores, "aux": scores}. ImageNet weights are torchvision's ResNet files (``.pth``),
loaded into ``backbone`` by ``load_backbone_state_dict``; nothing is ever downloaded.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from affinitynet.models.base import ParamGroups

#: dilations of DeepLab-v2's ASPP branches (Chen et al., TPAMI 2017, "ASPP-L")
ASPP_V2_DILATIONS = (6, 12, 18, 24)
#: weight of the auxiliary head's loss (torchvision's segmentation reference)
AUX_LOSS_WEIGHT = 0.5


def _split_groups(pretrained: list[tuple[str, nn.Parameter]], new: list[tuple[str, nn.Parameter]]) -> ParamGroups:
    """The four parameter groups (PSA's order): pretrained weights, pretrained biases, new
    weights, new biases; trainable parameters only."""
    groups: ParamGroups = ([], [], [], [])
    for offset, params in ((0, pretrained), (2, new)):
        for name, p in params:
            if p.requires_grad:
                groups[offset + name.endswith("bias")].append(p)
    return groups


class ResNetDeepLab(nn.Module):
    """What the ResNet-based DeepLab networks share: ``backbone`` (ImageNet-pretrained),
    ``head`` (new), the four parameter groups and, with ``freeze_batchnorm``, batch norm kept
    in eval mode with frozen affine parameters (DeepLab-v2's Caffe recipe)."""

    normalization = "imagenet"
    feature_stride = 8
    freeze_batchnorm = False

    def new_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def param_groups(self) -> ParamGroups:
        new_ids = {id(p) for m in self.new_modules() for p in m.parameters()}
        named = list(self.named_parameters())
        return _split_groups([(n, p) for n, p in named if id(p) not in new_ids],
                             [(n, p) for n, p in named if id(p) in new_ids])

    def train(self, mode: bool = True) -> "ResNetDeepLab":
        super().train(mode)
        if self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
                    for p in m.parameters():
                        p.requires_grad_(False)
        return self


class DeepLabV2(ResNetDeepLab):
    """DeepLab-v2: ResNet-101 (torchvision's layout), layer3/layer4 dilated to output stride 8,
    and ASPP-v2 (four 3x3 convs, dilations 6/12/18/24, summed) to ``num_classes + 1`` scores."""

    freeze_batchnorm = True  # batch statistics of a few crops per GPU are noise (DeepLab-v2 froze them)

    def __init__(self, num_classes: int, depth: int = 101) -> None:
        super().__init__()
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None, replace_stride_with_dilation=[False, True, True])
        self.backbone = nn.Sequential()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.backbone.add_module(name, getattr(resnet, name))
        self.head = nn.ModuleList(nn.Conv2d(2048, num_classes + 1, 3, padding=d, dilation=d)
                                  for d in ASPP_V2_DILATIONS)
        for conv in self.head:  # DeepLab's initialisation of the class layers
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.train()

    def new_modules(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes + 1, ceil(H/8), ceil(W/8)) scores."""
        features = self.backbone(x)
        return sum(conv(features) for conv in self.head)


class TorchvisionDeepLabV3(ResNetDeepLab):
    """torchvision's DeepLab-v3 on ResNet-50 or -101 (output stride 8), built by torchvision
    with no weights; ``aux``: its auxiliary FCN head on layer3, used in training only."""

    def __init__(self, num_classes: int, depth: int = 50, aux: bool = False) -> None:
        super().__init__()
        build = getattr(torchvision.models.segmentation, f"deeplabv3_resnet{depth}")
        net = build(weights=None, weights_backbone=None, num_classes=num_classes + 1, aux_loss=aux)
        self.backbone, self.head, self.aux_head = net.backbone, net.classifier, net.aux_classifier

    def new_modules(self) -> list[nn.Module]:
        return [self.head] + ([self.aux_head] if self.aux_head is not None else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """(B, 3, H, W) -> (B, num_classes + 1, ceil(H/8), ceil(W/8)) scores; in training with
        the auxiliary head {"out": scores, "aux": scores of the aux head}."""
        features = self.backbone(x)
        out = self.head(features["out"])
        if self.training and self.aux_head is not None:
            return {"out": out, "aux": self.aux_head(features["aux"])}
        return out


def main_scores(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """The scores of a segmentation network's output (the main head's, with an aux head)."""
    return output["out"] if isinstance(output, dict) else output
