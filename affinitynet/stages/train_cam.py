"""Stage 1: train the multi-label classifier whose CAMs seed everything (paper Sec. 3.1).

Multi-label soft-margin loss, SGD with the poly schedule over the four parameter groups.
Writes ``classifier/checkpoint.pt`` each epoch (resumable), ``classifier/final.pth`` (weights
only) and ``classifier/log.jsonl`` (one line per step and per epoch).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from affinitynet import distributed, training
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.data.transforms import ClassificationTransform, ResizePadTransform
from affinitynet.data.voc import ClassificationDataset, VOCDataset
from affinitynet.models import build_classifier


def build(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    """The classifier with its initial weights (ImageNet file, if given)."""
    tc = cfg.train_cam
    net = build_classifier(tc.backbone, num_classes)
    if tc.weights:
        training.load_backbone_weights(net, tc.weights)
    return net


def classification_loss(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-label soft-margin loss of the classifier's logits (paper Sec. 3.1, PSA train_cls).

    ``batch`` = (images (B, 3, H, W), labels (B, C) 0/1, ...): the mean over images and classes
    of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] for the logits z = model(images).
    """
    image, label = batch[0], batch[1]
    return F.multilabel_soft_margin_loss(model(image).float(), label.float()), {}


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    tc = cfg.train_cam
    dist_info, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = VOCDataset(cfg.dataset.root, cfg.dataset.labels or None)
    training.seed_everything(tc.seed)  # the heads' initial weights depend on the seed only
    net = build(cfg, voc.num_classes)
    transform = ClassificationTransform(
        crop=tc.crop, resize_long=tc.resize_long, color_jitter=tc.color_jitter, normalization=net.normalization
    )
    train_set = ClassificationDataset(voc, voc.split(cfg.dataset.train_split), transform)
    val_set = None
    if voc.has_split(cfg.dataset.val_split):
        val_tf = ResizePadTransform(tc.crop, net.normalization)
        val_set = ClassificationDataset(voc, voc.split(cfg.dataset.val_split), val_tf)

    channels_last = tc.channels_last and device.type == "cuda"

    def loss_fn(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        image, label = training.image_to(batch[0], device, channels_last), batch[1].to(device, non_blocking=True)
        return classification_loss(model, (image, label))

    t0 = time.time()
    result = training.fit_stage(
        tc, net=net, train_set=train_set, val_set=val_set, loss_fn=loss_fn, out_dir=wd.classifier,
        device=device, dist_info=dist_info, resume=resume, config=cfg, desc="train-cam",
        channels_last=channels_last,
    )
    result["seconds"] = time.time() - t0
    return result


def final_weights(cfg: RunConfig) -> Path:
    return WorkDir(cfg.workdir).classifier / "final.pth"
