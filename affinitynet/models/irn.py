"""IRN's two networks (Ahn, Cho & Kwak, CVPR 2019, "Weakly Supervised Learning of Instance
Segmentation with Inter-pixel Relations"): the ResNet-50 CAM network and the inter-pixel
relation network (class boundary and displacement field branches).

Both keep the module layout of the original release, so the state dicts have IRN's key names,
shapes and order, including the aliases its modules create (``resnet50.conv1`` is also
``stage1.0`` and ``backbone.0.0``; ``classifier`` is ``newly_added.0``; ...): IRN's
``res50_cam.pth`` loads with :func:`~affinitynet.models.base.load_state_dict_strict` and
``res50_irn.pth`` with :func:`load_irn_state_dict`.

The backbone is torchvision's ResNet-50 (bottleneck stride on the 3x3 conv) with strides
(2, 2, 2, 1) and no dilation: output stride 16. Its batch norms always normalise with their
running statistics, in every mode (IRN's ``FixedBatchNorm``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from affinitynet.models.base import Backbone, ParamGroup, load_state_dict_strict

#: lr multiplier of the layers trained from scratch: the CAM classifier and the displacement
#: branch (IRN train_cam.py / train_irn.py: 10x the base rate)
NEW_LAYER_LR_MULT = 10.0

#: the non-weight buffers IRN's training module saves in res50_irn.pth (its path index of the
#: training crop); IRN's inference drops them (``load_state_dict(strict=False)``)
_LOSS_BUFFER = re.compile(r"(path_indices\d+|disp_target)")


class RunningStatsBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always uses its running statistics, whatever the mode (IRN's
    ``FixedBatchNorm``): (B, C, H, W) -> (B, C, H, W). Its affine part still takes gradients."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            training=False, eps=self.eps)


def resnet50_trunk() -> nn.Module:
    """torchvision's ResNet-50 without its pooling and fc, layer4 at stride 1 without dilation
    (IRN ``resnet50(strides=(2, 2, 2, 1))``) and :class:`RunningStatsBatchNorm2d` throughout.

    Submodules conv1, bn1, relu, maxpool, layer1..layer4: (B,3,H,W) -> x1 (64, H/4), layer1
    (256, /4), layer2 (512, /8), layer3 (1024, /16), layer4 (2048, /16); sizes rounded up.
    """
    net = torchvision.models.resnet50(weights=None, norm_layer=RunningStatsBatchNorm2d)
    del net.fc, net.avgpool  # no parameters of IRN's; avgpool has none, fc would add keys
    first = net.layer4[0]
    first.conv2.stride = (1, 1)
    first.downsample[0].stride = (1, 1)
    first.stride = 1
    return net


class ResNet50CAM(Backbone):
    """IRN's CAM network (``net.resnet50_cam``): ResNet-50 at output stride 16 and a 1x1 class
    conv without bias (``classifier``, 2048 -> num_classes).

    ``forward``: (B,3,H,W) ImageNet-normalised -> logits (B, num_classes): the classifier on the
    spatial mean of the last features. ``cam``: (B, num_classes, ceil(H/16), ceil(W/16)), the
    ReLU of the classifier applied at every cell, >= 0.

    Training (IRN train_cam.py): conv1/bn1 are frozen and the gradient stops after layer2 (IRN
    detaches it), so stem, layer1 and layer2 never train; layer3, layer4 (batch norm affine
    included) train at the base rate, the classifier at 10x; both groups with weight decay.
    """

    normalization = "imagenet"
    feature_stride = 16
    freeze_batchnorm = True
    freeze_batchnorm_affine = False

    def __init__(self, num_classes: int = 20) -> None:
        super().__init__()
        self.num_classes = num_classes
        # IRN's layout, aliases included: the stages and ModuleLists re-register the trunk's modules
        self.resnet50 = resnet50_trunk()
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
        self.stage2 = nn.Sequential(r.layer2)
        self.stage3 = nn.Sequential(r.layer3)
        self.stage4 = nn.Sequential(r.layer4)
        self.classifier = nn.Conv2d(2048, num_classes, 1, bias=False)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4])
        self.newly_added = nn.ModuleList([self.classifier])
        self.apply_freeze()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.stage1, self.stage2]

    def new_layers(self) -> list[nn.Module]:
        return [self.classifier]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> last features (B, 2048, ceil(H/16), ceil(W/16))."""
        x = self.stage2(self.stage1(x)).detach()  # IRN trains layer3 and layer4 only
        return self.stage4(self.stage3(x))

    def _logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features.mean(dim=(2, 3), keepdim=True)).flatten(1)

    def _cam(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(F.conv2d(features, self.classifier.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) normalised image -> logits (B, num_classes), before the sigmoid."""
        return self._logits(self.features(x))

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B,3,H,W) -> class activation maps (B, num_classes, ceil(H/16), ceil(W/16)), >= 0."""
        return self._cam(self.features(x))

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and CAMs from one backbone pass."""
        features = self.features(x)
        return self._logits(features), self._cam(features)

    def param_groups(self) -> list[ParamGroup]:  # type: ignore[override]
        """IRN train_cam.py's two groups, trainable parameters only: backbone (lr, decay) and
        classifier (10 lr, decay)."""
        return [ParamGroup([p for p in self.backbone.parameters() if p.requires_grad], 1.0, True, "backbone"),
                ParamGroup([p for p in self.newly_added.parameters() if p.requires_grad], NEW_LAYER_LR_MULT, True,
                           "classifier")]


class MeanShift(nn.Module):
    """Subtracts ``running_mean`` (one value per channel) in eval mode, nothing in training mode
    (IRN ``Net.MeanShift``): train_irn.py sets it to the mean displacement over the training
    images, to remove the displacement field's bias at inference. (B, C, H, W) -> same."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x
        return x - self.running_mean.view(1, -1, 1, 1)


def branch_layer(c_in: int, c_out: int, groups: int, upsample: int = 1) -> nn.Sequential:
    """1x1 conv (no bias), GroupNorm, bilinear upsampling (if any), ReLU: IRN's branch layer,
    upsampling before the ReLU as in the original."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.GroupNorm(groups, c_out)]
    if upsample > 1:
        layers.append(nn.Upsample(scale_factor=upsample, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class BoundaryDisplacementNet(Backbone):
    """What every inter-pixel relation network shares (IRN's ``resnet50_irn`` and
    :class:`TinyIRN`): a frozen backbone in eval mode, a boundary branch (``edge_layers``) and a
    displacement branch (``dp_layers``, ending in ``mean_shift``) on the stride-4 grid, IRN's
    inference (``edge_displacement``) and its two parameter groups.

    Subclasses build the layers and ``forward``: (B,3,H,W) -> (edge_out (B,1,h,w) logits,
    dp_out (B,2,h,w)), h = ceil(H/4), w = ceil(W/4).
    """

    normalization = "imagenet"
    feature_stride = 4
    freeze_batchnorm = True
    freeze_batchnorm_affine = True
    edge_layers: nn.ModuleList
    dp_layers: nn.ModuleList

    def new_layers(self) -> list[nn.Module]:
        return [*self.edge_layers, *self.dp_layers]

    def trunk(self) -> nn.Module:
        """The module whose state dict a backbone's weights file fits (initial weights)."""
        return self

    def train(self, mode: bool = True) -> "BoundaryDisplacementNet":
        """Switch mode (the MeanShift follows it); the backbone stays frozen and in eval mode."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def edge_displacement(self, image: torch.Tensor, crop_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """IRN's inference (``EdgeDisplacement``) on one normalised image (3,H,W) or (1,3,H,W).

        The image and its left-right flip run as one batch, zero-padded at the bottom/right to
        ``crop_size`` x ``crop_size`` (IRN: 512; a side already longer is not padded, where the
        original would cut the image), and the outputs are cropped to the stride-4 grid.
        Returns edge (1, h, w) in (0, 1): sigmoid of the mean of the two boundary logits with the
        flip undone; dp (2, h, w): the displacement of the unflipped image (MeanShift applied in
        eval mode, as IRN's make_sem_seg_labels / make_ins_seg_labels run it).
        """
        x = image if image.dim() == 4 else image[None]
        if x.shape[0] != 1:
            raise ValueError(f"edge_displacement takes one image, got a batch of {x.shape[0]}")
        height, width = x.shape[2:]
        h, w = (height - 1) // self.feature_stride + 1, (width - 1) // self.feature_stride + 1
        pack = torch.cat([x, x.flip(-1)], dim=0)
        # the padding is part of what the network sees (GroupNorm statistics), so it matters
        pack = F.pad(pack, (0, max(0, crop_size - width), 0, max(0, crop_size - height)))
        edge_out, dp_out = self(pack)
        edge_out, dp_out = edge_out[..., :h, :w], dp_out[..., :h, :w]
        edge = torch.sigmoid(edge_out[0] / 2 + edge_out[1].flip(-1) / 2)
        return edge, dp_out[0]

    def param_groups(self) -> list[ParamGroup]:  # type: ignore[override]
        """IRN train_irn.py's two groups: boundary branch (lr, decay), displacement branch
        (10 lr, decay)."""
        return [ParamGroup([p for p in self.edge_layers.parameters() if p.requires_grad], 1.0, True, "boundary"),
                ParamGroup([p for p in self.dp_layers.parameters() if p.requires_grad], NEW_LAYER_LR_MULT, True,
                           "displacement")]


class ResNet50IRN(BoundaryDisplacementNet):
    """IRN's inter-pixel relation network (``net.resnet50_irn``): a
    frozen ResNet-50 (strides 2, 2, 2, 1) with a class boundary branch and a displacement field
    branch, both on the stride-4 grid.

    ``forward``: (B,3,H,W) ImageNet-normalised -> (edge_out (B,1,h,w) boundary logits, dp_out
    (B,2,h,w) displacements (dy, dx) in stride-4 cells), h = ceil(H/4), w = ceil(W/4). In eval
    mode ``mean_shift.running_mean`` is subtracted from dp_out.

    Training (IRN train_irn.py): the backbone is frozen; the boundary branch trains at the base
    rate and the displacement branch at 10x, both with weight decay.
    """

    def __init__(self) -> None:
        super().__init__()
        self.resnet50 = resnet50_trunk()
        r = self.resnet50
        self.stage1 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.stage2 = nn.Sequential(r.layer1)
        self.stage3 = nn.Sequential(r.layer2)
        self.stage4 = nn.Sequential(r.layer3)
        self.stage5 = nn.Sequential(r.layer4)
        self.mean_shift = MeanShift(2)
        # boundary branch: five levels to 32 channels each at stride 4, then 160 -> 1
        self.fc_edge1 = branch_layer(64, 32, 4)
        self.fc_edge2 = branch_layer(256, 32, 4)
        self.fc_edge3 = branch_layer(512, 32, 4, upsample=2)
        self.fc_edge4 = branch_layer(1024, 32, 4, upsample=4)
        self.fc_edge5 = branch_layer(2048, 32, 4, upsample=4)
        self.fc_edge6 = nn.Conv2d(160, 1, 1, bias=True)
        # displacement branch: the three deep levels meet at stride 8, then join the shallow two
        self.fc_dp1 = branch_layer(64, 64, 8)
        self.fc_dp2 = branch_layer(256, 128, 16)
        self.fc_dp3 = branch_layer(512, 256, 16)
        self.fc_dp4 = branch_layer(1024, 256, 16, upsample=2)
        self.fc_dp5 = branch_layer(2048, 256, 16, upsample=2)
        self.fc_dp6 = branch_layer(768, 256, 16, upsample=2)
        self.fc_dp7 = nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(),
                                    nn.Conv2d(256, 2, 1, bias=False), self.mean_shift)
        self.backbone = nn.ModuleList([self.stage1, self.stage2, self.stage3, self.stage4, self.stage5])
        self.edge_layers = nn.ModuleList([self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4,
                                          self.fc_edge5, self.fc_edge6])
        self.dp_layers = nn.ModuleList([self.fc_dp1, self.fc_dp2, self.fc_dp3, self.fc_dp4, self.fc_dp5,
                                        self.fc_dp6, self.fc_dp7])
        self.apply_freeze()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.resnet50, self.backbone]  # the trunk and IRN's stage wrappers of it

    def trunk(self) -> nn.Module:
        """torchvision's ResNet-50 layout: ImageNet files and our ResNet-50 classifier fit it."""
        return self.resnet50

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) normalised image -> edge_out (B,1,h,w) logits, dp_out (B,2,h,w)."""
        x1 = self.stage1(x).detach()  # the backbone never trains (IRN)
        x2 = self.stage2(x1).detach()
        x3 = self.stage3(x2).detach()
        x4 = self.stage4(x3).detach()
        x5 = self.stage5(x4).detach()
        h, w = x2.shape[2:]  # the stride-4 grid; upsampled deeper levels can overshoot it

        edges = [self.fc_edge1(x1), self.fc_edge2(x2), self.fc_edge3(x3)[..., :h, :w],
                 self.fc_edge4(x4)[..., :h, :w], self.fc_edge5(x5)[..., :h, :w]]
        edge_out = self.fc_edge6(torch.cat(edges, dim=1))

        dp3 = self.fc_dp3(x3)
        h8, w8 = dp3.shape[2:]
        deep = torch.cat([dp3, self.fc_dp4(x4)[..., :h8, :w8], self.fc_dp5(x5)[..., :h8, :w8]], dim=1)
        dp_up3 = self.fc_dp6(deep)[..., :h, :w]
        dp_out = self.fc_dp7(torch.cat([self.fc_dp1(x1), self.fc_dp2(x2), dp_up3], dim=1))
        return edge_out, dp_out


def load_irn_state_dict(net: ResNet50IRN, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Load IRN's ``res50_irn.pth`` (or a state dict of :class:`ResNet50IRN`) into ``net``.

    IRN saves its training module, which adds the path index of the training crop
    (``path_indices0..``, ``disp_target``); those are dropped, and every network key must then
    fit exactly (missing / unexpected keys and shape mismatches raise
    :class:`~affinitynet.errors.InputError`). Returns the dropped keys.
    """
    dropped = [k for k in state_dict if _LOSS_BUFFER.fullmatch(k)]
    load_state_dict_strict(net, {k: v for k, v in state_dict.items() if k not in set(dropped)})
    return dropped


__all__ = ["ResNet50CAM", "ResNet50IRN", "BoundaryDisplacementNet", "branch_layer", "MeanShift", "RunningStatsBatchNorm2d", "resnet50_trunk",
           "load_irn_state_dict", "NEW_LAYER_LR_MULT"]
