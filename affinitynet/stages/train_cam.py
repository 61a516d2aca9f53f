"""Stage 1: train the multi-label classifier whose CAMs seed everything (paper Sec. 3.1).

Multi-label soft-margin loss, SGD with the poly schedule over the four parameter groups.
Writes ``classifier/checkpoint.pt`` each epoch (resumable), ``classifier/final.pth`` (weights
only) and ``classifier/log.jsonl`` (one line per step and per epoch).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from affinitynet import distributed, records, training
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, training_sizes
from affinitynet.data.transforms import ClassificationTransform, ResizePadTransform
from affinitynet.data.voc import ClassificationDataset, open_dataset
from affinitynet.models import build_classifier


def classification_loss(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Multi-label soft-margin loss of the classifier's logits (paper Sec. 3.1, PSA train_cls).

    ``batch`` = (images (B, 3, H, W), labels (B, C) 0/1, ...): the mean over images and classes
    of -[y log sigmoid(z) + (1 - y) log(1 - sigmoid(z))] for the logits z = model(images).
    """
    image, label = batch[0], batch[1]
    return F.multilabel_soft_margin_loss(model(image).float(), label.float()), {}


def run(cfg: RunConfig) -> dict[str, Any]:
    tc = cfg.train_cam
    _, device = distributed.setup(cfg.device)
    voc = open_dataset(cfg.dataset)
    training.seed_everything(tc.seed)  # the head's initial weights depend on the seed only
    net = build_classifier(tc.backbone, voc.num_classes)
    transform = ClassificationTransform(tc.crop, tc.resize_long, tc.color_jitter, net.normalization, flip=tc.flip)
    names = voc.split(cfg.dataset.train_split)
    train_set = ClassificationDataset(voc, names, transform, cfg.dataset.long_side)  # checks every image's labels
    val_set = None
    if voc.has_split(cfg.dataset.val_split):  # validation loss of the whole images, resized
        val_set = ClassificationDataset(voc, voc.split(cfg.dataset.val_split),
                                        ResizePadTransform(tc.crop, net.normalization))
    decision, done = training.start(cfg, "train_cam")
    if done:
        return done
    training.initial_weights(net, cfg, tc)
    announce_sizes(cfg.dataset, voc, names, "train-cam", training_sizes(tc))
    result = training.fit(net, classification_loss, train_set, val_set, tc, WorkDir(cfg.workdir).classifier, device,
                          resume=decision.status == "continued", config=cfg, desc="train-cam")
    return {**result, **records.outcome(decision, "train_cam", len(result["history"]))}
