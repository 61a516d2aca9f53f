"""Segmentation scores: confusion matrix, IoU per class, mIoU, pixel accuracy, precision, recall.

All scores are in **percent** (mIoU in 0..100). Background is class 0 and counts as a class
(named "background"), as in the paper's VOC evaluation. A class absent from both the prediction
and the ground truth has 0/0 = NaN IoU and is left out of the mean (so an evaluation over a few
images is not dragged down by classes that never occur); precision is NaN for a class never
predicted and recall NaN for a class never in the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from affinitynet.conventions import IGNORE_INDEX


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; K = ``num_classes``.

    ``pred`` and ``gt`` are integer label maps of the same shape (K counts background). Pixels
    whose ground truth is ``ignore_index`` are skipped; any other prediction or ground-truth value
    outside 0..K-1 is a ValueError (it would otherwise vanish from the scores silently).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    valid = gt != ignore_index
    g = gt[valid].astype(np.int64)
    p = pred[valid].astype(np.int64)
    if g.size:
        if g.min() < 0 or g.max() >= num_classes:
            raise ValueError(f"ground-truth value {int(g.max() if g.max() >= num_classes else g.min())} "
                             f"outside 0..{num_classes - 1}")
        if p.min() < 0 or p.max() >= num_classes:
            bad = int(p.max() if p.max() >= num_classes else p.min())
            raise ValueError(f"predicted value {bad} outside 0..{num_classes - 1} at a labelled pixel")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 100.0 * num / np.maximum(den, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean IoU (percent) of a (K, K) confusion matrix over the classes that occur in the
    prediction or the ground truth; NaN when none does."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    iou = _ratio(tp, conf.sum(axis=0) + conf.sum(axis=1) - tp)
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else math.nan


def scores_from_confusion(conf: np.ndarray, class_names: Sequence[str]) -> dict:
    """Scores from a (K, K) confusion matrix; ``class_names`` has K names, background first.

    Returns ``{"miou", "pixel_accuracy", "per_class": {name: iou}, "precision": {..},
    "recall": {..}}`` in percent; NaN marks an undefined (0/0) value.
    """
    conf = np.asarray(conf, dtype=np.float64)
    k = conf.shape[0]
    if conf.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {conf.shape} does not match {len(class_names)} class names")
    tp = np.diag(conf)
    gt_count = conf.sum(axis=1)
    pred_count = conf.sum(axis=0)
    iou = _ratio(tp, gt_count + pred_count - tp)
    precision = _ratio(tp, pred_count)
    recall = _ratio(tp, gt_count)
    total = conf.sum()
    return {
        "miou": mean_iou(conf),
        "pixel_accuracy": float(100.0 * tp.sum() / total) if total > 0 else math.nan,
        "per_class": {n: float(v) for n, v in zip(class_names, iou)},
        "precision": {n: float(v) for n, v in zip(class_names, precision)},
        "recall": {n: float(v) for n, v in zip(class_names, recall)},
    }
