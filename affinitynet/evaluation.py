"""Scoring label folders against a dataset's ground truth: what every evaluating stage and
``affinitynet evaluate`` share.

Scores are in percent with background as a class (``affinitynet.algorithms.metrics``). Reads
palette PNGs and CAM files; the arithmetic is in the algorithms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affinitynet import artifacts
from affinitynet.algorithms.cam import SWEEP_THRESHOLDS, ThresholdSweep
from affinitynet.algorithms.metrics import InstanceAP, confusion_matrix, scores_from_confusion, voc_instances
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.images import load_label_png
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError


def names_with_gt(voc: VOCDataset, split: str) -> list[str]:
    """The images of ``split`` that have ground truth (the ones a stage can score)."""
    return [n for n in voc.split(split) if voc.has_gt(n)]


def evaluate_folder(pred_dir: str | os.PathLike, dataset: VOCDataset | str | os.PathLike,
                    names: Sequence[str]) -> dict[str, Any]:
    """Scores of ``pred_dir/<name>.png`` against the ground truth of ``names``.

    Every image needs a prediction of its ground truth's size (values 0..C, or 255 where the
    ground truth is ignored). Returns the ``scores_from_confusion`` dict plus ``num_images``,
    ``class_names`` and ``confusion`` ((C+1) x (C+1) nested list, rows = ground truth).
    """
    voc = dataset if isinstance(dataset, VOCDataset) else VOCDataset(dataset)
    pred_dir, names = _check_predictions(pred_dir, names, ".png", "prediction")
    no_gt = [n for n in names if not voc.has_gt(n)]
    if no_gt:
        raise InputError(f"{voc.root / 'SegmentationClass' / (no_gt[0] + '.png')}: ground truth "
                         f"missing for {len(no_gt)} of {len(names)} images (first: {no_gt[0]})")
    k = voc.num_classes + 1
    conf = np.zeros((k, k), dtype=np.int64)
    for n in names:
        gt = voc.load_gt(n)
        path = pred_dir / f"{n}.png"
        pred = _label_like(path, gt, "prediction")
        try:
            conf += confusion_matrix(pred, gt, k)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
    class_names = ["background", *voc.classes]
    out = scores_from_confusion(conf, class_names)
    out.update(num_images=len(names), class_names=class_names, confusion=conf.tolist())
    return out


def evaluate_instances(pred_dir: str | os.PathLike, dataset: VOCDataset | str | os.PathLike,
                       names: Sequence[str], iou_threshold: float = 0.5) -> dict[str, Any]:
    """Mask AP of instance files ``pred_dir/<name>.json`` (``artifacts.load_instances``)
    against the instances of ``SegmentationObject`` and ``SegmentationClass`` (IRN's evaluation:
    mAP at IoU 0.5, ``algorithms.metrics.InstanceAP``). Returns ``map`` and ``per_class`` (AP in
    percent; a class without ground-truth instances is NaN and left out of the mean),
    ``iou_threshold``, ``num_images``, ``num_instances`` (ground truth), ``num_detections``."""
    voc = dataset if isinstance(dataset, VOCDataset) else VOCDataset(dataset)
    pred_dir, names = _check_predictions(pred_dir, names, ".json", "instance file")
    no_gt = [n for n in names if not (voc.has_gt(n) and voc.has_objects(n))]
    if no_gt:
        raise InputError(f"{voc.objects_path(no_gt[0])}: instance ground truth (SegmentationObject and "
                         f"SegmentationClass) missing for {len(no_gt)} of {len(names)} images (first: {no_gt[0]})")
    ap = InstanceAP(voc.num_classes, iou_threshold)
    detections = 0
    for n in names:
        gt = voc.load_gt(n)
        try:
            gt_masks, gt_labels = voc_instances(gt, voc.load_objects(n))
        except ValueError as exc:
            raise InputError(f"{voc.objects_path(n)}: {exc}") from None
        masks, labels, scores = artifacts.load_instances(pred_dir / f"{n}.json", gt.shape, voc.num_classes)
        ap.add(masks, labels, scores, gt_masks, gt_labels)
        detections += len(masks)
    return {**ap.result(voc.classes), "iou_threshold": iou_threshold, "num_images": len(names),
            "num_instances": int(ap.n_gt.sum()), "num_detections": detections}


def _check_predictions(pred_dir: str | os.PathLike, names: Sequence[str], suffix: str,
                       what: str) -> tuple[Path, list[str]]:
    """(the folder, the names) when ``pred_dir`` holds ``<name><suffix>`` for every name;
    InputError naming the folder and the first missing ones otherwise."""
    pred_dir, names = Path(pred_dir), list(names)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: {what} folder does not exist")
    missing = [n for n in names if not (pred_dir / f"{n}{suffix}").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{pred_dir}: no {what} for {len(missing)} of {len(names)} images "
                         f"(first missing: {shown})")
    return pred_dir, names


def _label_like(path: Path, gt: np.ndarray, what: str) -> np.ndarray:
    """The label PNG at ``path``, which must have the ground truth's size."""
    label = load_label_png(path)
    if label.shape != gt.shape:
        raise InputError(f"{path}: {what} size {label.shape[1]}x{label.shape[0]} differs from the "
                         f"ground truth's {gt.shape[1]}x{gt.shape[0]} (labels from another dataset?)")
    return label


def confident_label_scores(label_dir: Path, voc: VOCDataset, names: Sequence[str],
                           cam_pred_dir: Path | None = None) -> dict[str, float]:
    """Precision and coverage (percent) of confident label maps (255 = unsure) on ``names``:
    ``confident_precision`` = right among the confident labelled pixels, ``confident_coverage``
    = confident share of the labelled pixels; with ``cam_pred_dir``, also how often the CAM
    prediction is right on the same pixels (``cam_precision_on_confident``)."""
    if not names:
        return {}
    correct = confident = valid = cam_correct = 0
    with_cam = cam_pred_dir is not None and all((cam_pred_dir / f"{n}.png").exists() for n in names)
    for name in names:
        gt = voc.load_gt(name)
        label = _label_like(label_dir / f"{name}.png", gt, "label")
        keep = (gt != IGNORE_INDEX) & (label != IGNORE_INDEX)
        valid += int((gt != IGNORE_INDEX).sum())
        confident += int(keep.sum())
        correct += int((label[keep] == gt[keep]).sum())
        if with_cam:
            cam = load_label_png(cam_pred_dir / f"{name}.png")
            cam_correct += int((cam[keep] == gt[keep]).sum())
    out = {"confident_precision": 100.0 * correct / max(confident, 1),
           "confident_coverage": 100.0 * confident / max(valid, 1)}
    if with_cam:
        out["cam_precision_on_confident"] = 100.0 * cam_correct / max(confident, 1)
    return out


def cam_threshold_sweep(cam_file: Callable[[str], Path], voc: VOCDataset, names: Sequence[str],
                        thresholds: Sequence[float] = SWEEP_THRESHOLDS) -> dict[str, Any]:
    """mIoU (percent) of the CAM prediction for every background threshold, from the CAM files
    of ``names``: ``sweep`` {thresholds, miou}, ``best_threshold``, ``best_miou``."""
    sweep = ThresholdSweep(voc.num_classes + 1, thresholds)
    for name in names:
        gt = voc.load_gt(name)
        keys, maps = artifacts.load_cam(cam_file(name), gt.shape, voc.num_classes)
        sweep.add(keys, maps, gt)
    res = sweep.result()
    return {"sweep": {"thresholds": [round(float(t), 2) for t in res["thresholds"]],
                      "miou": [round(float(m), 2) for m in res["miou"]]},
            "best_threshold": res["best_threshold"], "best_miou": res["best_miou"]}


def format_table(scores: dict[str, Any]) -> str:
    """Per-class IoU / precision / recall table followed by mIoU and pixel accuracy."""

    def fmt(v: float | None) -> str:
        return "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.2f}"

    names = list(scores["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}}    IoU   prec    rec"]
    for n in names:
        lines.append(f"{n:<{width}} {fmt(scores['per_class'][n])} {fmt(scores['precision'][n])} "
                     f"{fmt(scores['recall'][n])}")
    lines.append(f"{'mIoU':<{width}} {fmt(scores['miou'])}")
    lines.append(f"{'pixel acc':<{width}} {fmt(scores['pixel_accuracy'])}")
    return "\n".join(lines)


def instance_summary(scores: dict[str, Any]) -> str:
    """One line on instance pseudo labels (``evaluate_instances``' result)."""
    return (f"instance pseudo labels: mask mAP@{scores.get('iou_threshold', 0.5):g} {percent(scores.get('map'))} "
            f"({scores.get('num_detections')} detections, {scores.get('num_instances')} ground-truth instances "
            f"in {scores.get('num_images')} images)")


def percent(v: Any) -> str:
    """A score in percent with one decimal; '-' for none or NaN."""
    return "-" if v is None or v != v else f"{v:.1f}"
