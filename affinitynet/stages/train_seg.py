"""Stage 5a: train the segmentation network on the pseudo labels (paper Sec. 5: the labels of
the random walk train a fully supervised segmentation model, DeepLab in the paper).

Per-pixel cross-entropy over background + classes, 255 (padding, or ignore in a label file)
left out; the scores at stride 8 are upsampled to the crop before the loss. Each epoch also
reports the loss on the val split's ground truth (monitoring only: nothing is selected on it).
Writes ``segmentation/checkpoint.pt`` each epoch (resumable), ``final.pth`` and ``log.jsonl``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from affinitynet import distributed, records, training
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, training_sizes
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.transforms import ResizePadJointTransform, SegmentationTransform
from affinitynet.data.voc import GroundTruthDataset, LabelMapDataset, open_dataset
from affinitynet.errors import InputError
from affinitynet.inference import segmentation_meta
from affinitynet.models import AUX_LOSS_WEIGHT, build_segmentation_model


def label_dir(cfg: RunConfig) -> Path:
    """The labels the network learns from: ``train_seg.labels`` or the random walk's."""
    return Path(cfg.train_seg.labels) if cfg.train_seg.labels else WorkDir(cfg.workdir).pseudo_labels


def segmentation_loss(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K+1, h, w) scores at any stride against (B, H, W) uint8 labels;
    the scores are upsampled (bilinear) to the label size, 255 is ignored."""
    scores = F.interpolate(scores.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(scores, label.long(), ignore_index=IGNORE_INDEX)


def pixel_loss(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """``segmentation_loss`` of the network's scores; ``batch`` = (images, label maps, ...).
    With an auxiliary head (training only) its loss is added with weight ``AUX_LOSS_WEIGHT``."""
    output = model(batch[0])
    if isinstance(output, dict):
        main, aux = segmentation_loss(output["out"], batch[1]), segmentation_loss(output["aux"], batch[1])
        return main + AUX_LOSS_WEIGHT * aux, {"main": float(main.detach()), "aux": float(aux.detach())}
    return segmentation_loss(output, batch[1]), {}


def run(cfg: RunConfig) -> dict[str, Any]:
    ts = cfg.train_seg
    _, device = distributed.setup(cfg.device)
    voc = open_dataset(cfg.dataset)
    labels = label_dir(cfg)
    if not labels.is_dir():
        raise InputError(f"{labels}: label folder does not exist (run random-walk first, or set train_seg.labels)")
    training.seed_everything(ts.seed)  # the head's initial weights depend on the seed only
    net = build_segmentation_model(ts.model, cfg.backbone_of(ts), voc.num_classes, ts.aux_loss)
    transform = SegmentationTransform(ts.crop, ts.resize_long, ts.color_jitter, net.normalization, flip=ts.flip)
    names = voc.split(cfg.dataset.train_split)
    train_set = LabelMapDataset(voc, names, labels, transform, cfg.dataset.long_side)  # checks every label map
    val_set = None  # validation loss against the ground truth, when the val split has it
    if voc.has_split(cfg.dataset.val_split):
        val_set = GroundTruthDataset(voc, voc.split(cfg.dataset.val_split),
                                     ResizePadJointTransform(ts.crop, net.normalization))
    decision, done = training.start(cfg, "train_seg")
    if done:
        return done
    training.initial_weights(net, cfg, ts)
    announce_sizes(cfg.dataset, voc, names, "train-seg", training_sizes(ts))
    result = training.fit(net, pixel_loss, train_set, val_set, ts, WorkDir(cfg.workdir).segmentation, device,
                          resume=decision.status == "continued", config=cfg, desc="train-seg",
                          meta=segmentation_meta(cfg, net.normalization, voc.classes))
    return {**result, **records.outcome(decision, "train_seg", len(result["history"]))}
