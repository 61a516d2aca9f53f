"""``affinitynet evaluate``: mIoU of a folder of palette-PNG predictions against a dataset split,
or (``--instances``) mask AP of a folder of instance files.

Every image of the split needs ``<pred>/<name>.png`` (same size as its ground truth, values
0..C or 255 only where the ground truth is ignored). Scores are in percent with background as a
class; see ``affinitynet.evaluation``. With ``--instances`` it needs ``<pred>/<name>.json``
(``artifacts.save_instances``: COCO results with RLE masks) and ``SegmentationObject/<name>.png``.
"""

from __future__ import annotations

from pathlib import Path

from affinitynet import artifacts
from affinitynet.config import EvaluateConfig
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError
from affinitynet.evaluation import evaluate_folder, evaluate_instances, format_table


def default_json_path(pred: str | Path, split: str) -> Path:
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
    if cfg.instances:
        scores = evaluate_instances(cfg.pred, voc, names, cfg.iou)
    else:
        scores = evaluate_folder(cfg.pred, voc, names)
    scores.update(split=cfg.split, pred=str(cfg.pred), dataset=str(cfg.dataset))
    out = Path(cfg.out) if cfg.out else default_json_path(cfg.pred, cfg.split)
    artifacts.write_json(out, scores)
    scores["json"] = str(out)
    print(f"{cfg.pred} on {cfg.dataset} [{cfg.split}, {len(names)} images]")
    print(format_instance_table(scores) if cfg.instances else format_table(scores))
    print(f"scores written to {out}")
    return scores


def format_instance_table(scores: dict) -> str:
    """Per-class mask AP, then the mean over the classes with ground-truth instances."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None or v != v else f"{v:.2f}"

    names = list(scores["per_class"])
    width = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{width}} {'AP@' + format(scores['iou_threshold'], 'g'):>8}"]
    lines += [f"{n:<{width}} {fmt(scores['per_class'][n]):>8}" for n in names]
    lines.append(f"{'mAP':<{width}} {fmt(scores['map']):>8}")
    lines.append(f"{scores['num_detections']} detections, {scores['num_instances']} ground-truth instances")
    return "\n".join(lines)
