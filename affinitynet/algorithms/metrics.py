"""Segmentation scores: confusion matrix, IoU per class, mIoU, pixel accuracy, precision, recall;
instance segmentation: mask AP at an IoU threshold (IRN's mAP50).

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


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_labels: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 counts, rows = ground truth, columns = prediction; K = ``num_labels``, the
    background and the object classes.

    ``pred`` and ``gt`` are integer label maps of the same shape. Pixels
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
        if g.min() < 0 or g.max() >= num_labels:
            raise ValueError(f"ground-truth value {int(g.max() if g.max() >= num_labels else g.min())} "
                             f"outside 0..{num_labels - 1}")
        if p.min() < 0 or p.max() >= num_labels:
            bad = int(p.max() if p.max() >= num_labels else p.min())
            raise ValueError(f"predicted value {bad} outside 0..{num_labels - 1} at a labelled pixel")
    return np.bincount(g * num_labels + p, minlength=num_labels * num_labels).reshape(
        num_labels, num_labels).astype(np.int64)


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


# --- instance segmentation: mask AP (IRN's evaluation) -------------------------------------------


def mask_iou(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """(N, M) float32 IoU of boolean masks (N, H, W) and (M, H, W); 0 where both are empty."""
    a = np.asarray(masks_a, dtype=bool).reshape(len(masks_a), -1)
    b = np.asarray(masks_b, dtype=bool).reshape(len(masks_b), -1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"mask sizes differ: {np.shape(masks_a)[1:]} and {np.shape(masks_b)[1:]}")
    # float32 counts are exact while a mask has fewer than 2^24 pixels
    dtype = np.float32 if a.shape[1] < 2 ** 24 else np.float64
    inter = a.astype(dtype) @ b.astype(dtype).T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0).astype(np.float32)


def voc_instances(class_map: np.ndarray, object_map: np.ndarray,
                  ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth instances of a VOC image, as chainercv's ``VOCInstanceSegmentationDataset``
    reads them for IRN's evaluation.

    ``class_map`` (H, W) ``SegmentationClass`` (0 = background, class index + 1, 255 = ignore),
    ``object_map`` (H, W) ``SegmentationObject`` (instance ids; 0 and 255 are no instance).
    Returns (masks (R, H, W) bool, labels (R,) int64 class indices), instances in ascending id
    order, each labelled with the lowest labelled class under it. Ignored (255) pixels belong to
    no instance, so a prediction covering them only grows its union.
    """
    class_map = np.asarray(class_map)
    object_map = np.asarray(object_map)
    if class_map.shape != object_map.shape:
        raise ValueError(f"class map {class_map.shape} and object map {object_map.shape} differ in shape")
    ids = np.unique(object_map)
    ids = ids[(ids != 0) & (ids != ignore_index)]
    masks = object_map[None] == ids.reshape(-1, 1, 1)
    labels = []
    for mask in masks:
        classes = np.unique(class_map[mask])
        classes = classes[classes != ignore_index]
        if classes.size == 0 or classes[0] == 0:
            raise ValueError("an object of the instance map has no object class in the class map")
        labels.append(int(classes[0]) - 1)
    return masks, np.asarray(labels, np.int64)


def voc_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC (2010+) average precision of one class: the area under the precision envelope
    (precision made non-increasing from the right) over every recall change, a fraction in
    [0, 1]. ``precision`` and ``recall`` follow the score-sorted detections."""
    prec = np.concatenate([[0.0], np.nan_to_num(np.asarray(precision, np.float64)), [0.0]])
    rec = np.concatenate([[0.0], np.asarray(recall, np.float64), [1.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    step = np.flatnonzero(rec[1:] != rec[:-1])
    return float(np.sum((rec[step + 1] - rec[step]) * prec[step + 1]))


def _descending(scores: np.ndarray) -> np.ndarray:
    # chainercv sorts with argsort()[::-1]; a stable sort reversed is that order for the small
    # arrays where numpy's sort is stable, and a defined order (later first) for ties elsewhere
    return np.argsort(scores, kind="stable")[::-1]


class InstanceAP:
    """Mask AP at one IoU threshold over a dataset (IRN: mAP at IoU 0.5), accumulated image by
    image the way chainercv's ``eval_instance_segmentation_voc`` computes it (IRN's
    ``eval_ins_seg``; VOC 2010+ AP, not the 07 11-point metric).

    Per image and class, detections are taken by descending score; each is matched to the ground
    truth instance of its class with the highest IoU (first on ties); it is a true positive when
    that IoU >= the threshold and that instance is not matched yet, and a false positive
    otherwise (a duplicate does not fall back to another instance). Over the dataset a class's
    detections are sorted by score into a precision / recall curve. There are no "difficult"
    instances: ignored pixels simply belong to no instance (``voc_instances``).
    """

    def __init__(self, num_classes: int, iou_threshold: float) -> None:
        self.num_classes = num_classes
        self.iou_threshold = iou_threshold
        self.n_gt = np.zeros(num_classes, np.int64)
        self._scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
        self._matched: list[list[np.ndarray]] = [[] for _ in range(num_classes)]

    def add(self, pred_masks: np.ndarray, pred_labels: np.ndarray, pred_scores: np.ndarray,
            gt_masks: np.ndarray, gt_labels: np.ndarray) -> None:
        """One image: predictions (N, H, W) bool, (N,) class indices (VOC: 0..19, no background),
        (N,) scores; ground truth (R, H, W) bool, (R,) class indices (``voc_instances``)."""
        pred_masks, gt_masks = np.asarray(pred_masks, dtype=bool), np.asarray(gt_masks, dtype=bool)
        pred_labels = np.asarray(pred_labels, np.int64).reshape(-1)
        pred_scores = np.asarray(pred_scores, np.float64).reshape(-1)
        gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
        if not len(pred_masks) == pred_labels.size == pred_scores.size or len(gt_masks) != gt_labels.size:
            raise ValueError("masks, labels and scores of an image differ in length")
        for labels in (pred_labels, gt_labels):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"class index outside 0..{self.num_classes - 1}")
        for c in np.unique(np.concatenate([pred_labels, gt_labels])):
            pred_c = np.flatnonzero(pred_labels == c)
            pred_c = pred_c[_descending(pred_scores[pred_c])]
            gt_c = np.flatnonzero(gt_labels == c)
            self.n_gt[c] += gt_c.size
            matched = np.zeros(pred_c.size, bool)
            if pred_c.size and gt_c.size:
                iou = mask_iou(pred_masks[pred_c], gt_masks[gt_c])
                best = iou.argmax(axis=1)
                taken = np.zeros(gt_c.size, bool)
                for i, (j, value) in enumerate(zip(best, iou[np.arange(pred_c.size), best])):
                    if value >= self.iou_threshold:
                        matched[i] = not taken[j]
                        taken[j] = True
            self._scores[c].append(pred_scores[pred_c])
            self._matched[c].append(matched)

    def average_precisions(self) -> np.ndarray:
        """(num_classes,) AP in percent; NaN for a class without ground-truth instances."""
        ap = np.full(self.num_classes, math.nan)
        for c in range(self.num_classes):
            if self.n_gt[c] == 0:
                continue
            scores = np.concatenate(self._scores[c]) if self._scores[c] else np.zeros(0)
            matched = np.concatenate(self._matched[c]) if self._matched[c] else np.zeros(0, bool)
            matched = matched[_descending(scores)]
            tp = np.cumsum(matched)
            fp = np.cumsum(~matched)
            ap[c] = 100.0 * voc_average_precision(tp / np.maximum(tp + fp, 1), tp / self.n_gt[c])
        return ap

    def result(self, class_names: Sequence[str] | None = None) -> dict:
        """``{"map": mean AP over the classes with ground truth (NaN if none), "per_class":
        {name: AP}}`` in percent; names default to the class indices as strings."""
        ap = self.average_precisions()
        names = [str(c) for c in range(self.num_classes)] if class_names is None else list(class_names)
        if len(names) != self.num_classes:
            raise ValueError(f"{len(names)} class names for {self.num_classes} classes")
        defined = ap[~np.isnan(ap)]
        return {"map": float(defined.mean()) if defined.size else math.nan,
                "per_class": {n: float(v) for n, v in zip(names, ap)}}
