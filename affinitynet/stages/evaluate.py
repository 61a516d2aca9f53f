"""``affinitynet evaluate``: mIoU of a folder of palette-PNG predictions against a dataset split.

Every image of the split needs ``<pred>/<name>.png`` (same size as its ground truth, values
0..C or 255 only where the ground truth is ignored). Scores are in percent with background as a
class; see ``affinitynet.algorithms.metrics``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from affinitynet.algorithms.metrics import confusion_matrix, scores_from_confusion
from affinitynet.config import EvaluateConfig
from affinitynet.data.images import load_label_png
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError


def evaluate_folder(pred_dir: str | os.PathLike, dataset: VOCDataset | str | os.PathLike,
                    names: Sequence[str]) -> dict:
    """Scores of ``pred_dir/<name>.png`` against the ground truth of ``names``.

    Returns the ``scores_from_confusion`` dict plus ``num_images``, ``class_names`` and
    ``confusion`` ((C+1) x (C+1) nested list, rows = ground truth).
    """
    voc = dataset if isinstance(dataset, VOCDataset) else VOCDataset(dataset)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: prediction folder does not exist")
    names = list(names)
    missing = [n for n in names if not (pred_dir / f"{n}.png").is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{pred_dir}: no prediction for {len(missing)} of {len(names)} images "
                         f"(first missing: {shown})")
    no_gt = [n for n in names if not voc.has_gt(n)]
    if no_gt:
        raise InputError(f"{voc.root / 'SegmentationClass' / (no_gt[0] + '.png')}: ground truth "
                         f"missing for {len(no_gt)} of {len(names)} images (first: {no_gt[0]})")
    k = voc.num_classes + 1
    conf = np.zeros((k, k), dtype=np.int64)
    for n in names:
        gt = voc.load_gt(n)
        path = pred_dir / f"{n}.png"
        pred = load_label_png(path)
        if pred.shape != gt.shape:
            raise InputError(f"{path}: prediction size {pred.shape[1]}x{pred.shape[0]} differs from "
                             f"the ground truth's {gt.shape[1]}x{gt.shape[0]}")
        try:
            conf += confusion_matrix(pred, gt, k)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from None
    class_names = ["background", *voc.classes]
    out = scores_from_confusion(conf, class_names)
    out.update(num_images=len(names), class_names=class_names, confusion=conf.tolist())
    return out


def format_table(scores: dict) -> str:
    """Per-class IoU / precision / recall table followed by mIoU and pixel accuracy."""

    def fmt(v: float) -> str:
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


def _json_safe(v):
    if isinstance(v, float) and math.isnan(v):
        return None  # JSON has no NaN; null marks an undefined score
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def write_json(path: Path, data: dict) -> None:
    """Atomic JSON write (temporary file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_json_safe(data), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_json_path(pred: str | os.PathLike, split: str) -> Path:
    """``<pred>/../eval_<pred-folder>_<split>.json``."""
    p = Path(pred).resolve()
    return p.parent / f"eval_{p.name}_{split}.json"


def run(cfg: EvaluateConfig) -> dict:
    """Evaluate ``cfg.pred`` on split ``cfg.split`` of ``cfg.dataset``; print a table, write JSON."""
    if not cfg.pred:
        raise InputError("evaluate: no prediction folder given (--pred)")
    if not cfg.dataset:
        raise InputError("evaluate: no dataset folder given (--dataset)")
    voc = VOCDataset(cfg.dataset)
    names = voc.split(cfg.split, check_images=False)
    scores = evaluate_folder(cfg.pred, voc, names)
    scores.update(split=cfg.split, pred=str(cfg.pred), dataset=str(cfg.dataset))
    out = Path(cfg.out) if cfg.out else default_json_path(cfg.pred, cfg.split)
    write_json(out, scores)
    scores["json"] = str(out)
    print(f"{cfg.pred} on {cfg.dataset} [{cfg.split}, {len(names)} images]")
    print(format_table(scores))
    print(f"scores written to {out}")
    return scores
