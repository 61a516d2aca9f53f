"""Stage 5a: train the segmentation network on the pseudo labels (paper Sec. 5: the labels of
the random walk train a fully supervised segmentation model, DeepLab in the paper).

Per-pixel cross-entropy over background + classes, 255 (padding, or ignore in a label file)
left out; the scores at stride 8 are upsampled to the crop before the loss. Each epoch also
reports the loss on the val split's ground truth (monitoring only: nothing is selected on it).
Writes ``segmentation/checkpoint.pt`` each epoch (resumable), ``final.pth`` and ``log.jsonl``.
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
from affinitynet.data.transforms import IGNORE_INDEX, ResizePadJointTransform, SegmentationTransform
from affinitynet.data.voc import AffinityDataset, GroundTruthDataset
from affinitynet.errors import InputError
from affinitynet.models import build_segmentation_net
from affinitynet.stages.common import open_dataset


def seg_backbone(cfg: RunConfig) -> str:
    return cfg.train_seg.backbone or cfg.train_cam.backbone


def label_dir(cfg: RunConfig) -> Path:
    """The labels the network learns from: ``train_seg.labels`` or the random walk's."""
    return Path(cfg.train_seg.labels) if cfg.train_seg.labels else WorkDir(cfg.workdir).pseudo_labels


def build(cfg: RunConfig, num_classes: int) -> torch.nn.Module:
    """The network with its initial backbone weights: a weights file when given, else the trained
    classifier's backbone when it exists (the paper starts DeepLab from ImageNet weights)."""
    ts = cfg.train_seg
    net = build_segmentation_net(seg_backbone(cfg), num_classes)
    if ts.weights:
        training.load_backbone_weights(net, ts.weights)
    elif ts.init_from_classifier:
        final = WorkDir(cfg.workdir).classifier / "final.pth"
        if final.exists() and seg_backbone(cfg) == cfg.train_cam.backbone:
            training.load_backbone_weights(net, str(final))
    return net


def segmentation_loss(scores: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K+1, h, w) scores at any stride against (B, H, W) uint8 labels;
    the scores are upsampled (bilinear) to the label size, 255 is ignored."""
    scores = F.interpolate(scores.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(scores, label.long(), ignore_index=IGNORE_INDEX)


def run(cfg: RunConfig, resume: bool = False) -> dict[str, Any]:
    ts = cfg.train_seg
    dist_info, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    training.seed_everything(ts.seed)  # the head's initial weights depend on the seed only
    net = build(cfg, voc.num_classes)
    transform = SegmentationTransform(crop=ts.crop, resize_long=ts.resize_long, color_jitter=ts.color_jitter,
                                      normalization=net.normalization)
    labels = label_dir(cfg)
    if not labels.is_dir():
        raise InputError(f"{labels}: label folder does not exist (run random-walk first, or set train_seg.labels)")
    train_set = AffinityDataset(voc, voc.split(cfg.dataset.train_split), labels, transform)
    val_set = None  # validation loss against the ground truth, when the val split has it
    if voc.has_split(cfg.dataset.val_split):
        val_set = GroundTruthDataset(voc, voc.split(cfg.dataset.val_split),
                                     ResizePadJointTransform(ts.crop, net.normalization))
    channels_last = ts.channels_last and device.type == "cuda"

    def loss_fn(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        image, label = training.image_to(batch[0], device, channels_last), batch[1].to(device)
        return segmentation_loss(model(image), label), {}

    t0 = time.time()
    result = training.fit_stage(
        ts, net=net, train_set=train_set, val_set=val_set, loss_fn=loss_fn, out_dir=wd.segmentation,
        device=device, dist_info=dist_info, resume=resume, config=cfg, desc="train-seg",
        channels_last=channels_last,
    )
    result["seconds"] = time.time() - t0
    return result
