"""Networks: backbones (ResNet-38, VGG-16, ResNet-50, tiny), the classifier/CAM, affinity and
segmentation heads, parameter groups, checkpoint loading, and the poly-lr optimizer.

Every network has output stride 8 and exposes ``normalization``, ``feature_stride``,
``param_groups()`` and a ``train()`` that keeps the paper's frozen layers frozen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from affinitynet.models.base import (Backbone, backbone_keys, check_state_dict, input_to,
                                     load_backbone_state_dict, load_state_dict_strict)
from affinitynet.models.heads import AffinityNet, ClassifierNet, SegmentationNet
from affinitynet.models.optim import PolyOptimizer, build_optimizer, poly_lr
from affinitynet.models.resnet38 import (ResNet38, ResNet38AffinityNet, ResNet38Classifier,
                                         ResNet38SegmentationNet)
from affinitynet.models.resnet50 import (ResNet50, ResNet50AffinityNet, ResNet50Classifier,
                                         ResNet50SegmentationNet, remap_resnet50_state_dict)
from affinitynet.models.segmentation import AUX_LOSS_WEIGHT, DeepLabV2, TorchvisionDeepLabV3, main_scores
from affinitynet.models.irn import BoundaryDisplacementNet, ResNet50IRN
from affinitynet.models.tiny import Tiny, TinyAffinityNet, TinyClassifier, TinyIRN, TinySegmentationNet
from affinitynet.models.vgg16 import VGG16, VGG16AffinityNet, VGG16Classifier, VGG16SegmentationNet


@dataclass(frozen=True)
class BackboneSpec:
    """The networks of one backbone (each knows its input normalisation and initial weights)."""

    classifier: type[ClassifierNet]
    affinity: type[AffinityNet]
    segmentation: type[SegmentationNet]
    irn: type[BoundaryDisplacementNet] | None = None  # IRN's network (``method: irn``), where there is one


BACKBONES: dict[str, BackboneSpec] = {
    "resnet38": BackboneSpec(ResNet38Classifier, ResNet38AffinityNet, ResNet38SegmentationNet),
    "vgg16": BackboneSpec(VGG16Classifier, VGG16AffinityNet, VGG16SegmentationNet),
    "resnet50": BackboneSpec(ResNet50Classifier, ResNet50AffinityNet, ResNet50SegmentationNet, ResNet50IRN),
    "tiny": BackboneSpec(TinyClassifier, TinyAffinityNet, TinySegmentationNet, TinyIRN),
}


def _spec(backbone: str) -> BackboneSpec:
    try:
        return BACKBONES[backbone]
    except KeyError:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}") from None


def build_classifier(backbone: str, num_classes: int = 20) -> ClassifierNet:
    """Classification/CAM network on ``backbone``, in training mode (frozen layers frozen)."""
    return _spec(backbone).classifier(num_classes=num_classes).train()


def build_affinity_net(backbone: str) -> AffinityNet:
    """AffinityNet on ``backbone``, in training mode (frozen layers frozen)."""
    return _spec(backbone).affinity().train()


def build_irn_net(backbone: str) -> BoundaryDisplacementNet:
    """IRN's boundary / displacement network on ``backbone``, in training mode (backbone frozen)."""
    irn = _spec(backbone).irn
    if irn is None:
        raise ValueError(f"IRN's network has no {backbone} variant; choose one of "
                         f"{', '.join(name for name, spec in BACKBONES.items() if spec.irn)}")
    return irn().train()


def build_segmentation_net(backbone: str, num_classes: int = 20) -> SegmentationNet:
    """The LargeFOV segmentation network (stage 5) on ``backbone``: ``num_classes`` objects + background."""
    return _spec(backbone).segmentation(num_classes=num_classes).train()


# The segmentation networks of stage 5 by name (train_seg.model): builder(backbone, num_classes,
# aux) -> network. ``backbone`` matters for largefov only, ``aux`` for the torchvision ones only.
SEGMENTATION_MODELS: dict[str, Callable[[str, int, bool], nn.Module]] = {
    "largefov": lambda backbone, k, aux: build_segmentation_net(backbone, k),
    "deeplabv2": lambda backbone, k, aux: DeepLabV2(k, depth=101),
    "deeplabv3_resnet50": lambda backbone, k, aux: TorchvisionDeepLabV3(k, depth=50, aux=aux),
    "deeplabv3_resnet101": lambda backbone, k, aux: TorchvisionDeepLabV3(k, depth=101, aux=aux),
}


def build_segmentation_model(model: str, backbone: str, num_classes: int, aux: bool = False) -> nn.Module:
    """Segmentation network ``model`` (see models/segmentation.py) for ``num_classes`` objects +
    background, in training mode."""
    try:
        builder = SEGMENTATION_MODELS[model]
    except KeyError:
        raise ValueError(f"unknown segmentation model {model!r}; choose one of {', '.join(SEGMENTATION_MODELS)}") from None
    return builder(backbone, num_classes, aux).train()


__all__ = [
    "BACKBONES", "BackboneSpec", "Backbone", "ClassifierNet", "AffinityNet", "SegmentationNet",
    "build_classifier", "build_affinity_net", "build_irn_net", "build_segmentation_net", "build_segmentation_model",
    "SEGMENTATION_MODELS", "DeepLabV2", "TorchvisionDeepLabV3", "AUX_LOSS_WEIGHT", "main_scores",
    "load_state_dict_strict", "load_backbone_state_dict", "check_state_dict", "backbone_keys", "input_to",
    "remap_resnet50_state_dict",
    "PolyOptimizer", "build_optimizer", "poly_lr",
    "ResNet38", "ResNet38Classifier", "ResNet38AffinityNet", "ResNet38SegmentationNet",
    "VGG16", "VGG16Classifier", "VGG16AffinityNet", "VGG16SegmentationNet",
    "ResNet50", "ResNet50Classifier", "ResNet50AffinityNet", "ResNet50SegmentationNet",
    "Tiny", "TinyClassifier", "TinyAffinityNet", "TinySegmentationNet", "TinyIRN", "ResNet50IRN",
    "BoundaryDisplacementNet",
]
