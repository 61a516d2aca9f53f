"""``affinitynet evaluate``: mIoU of a folder of palette-PNG predictions against a dataset split.

Every image of the split needs ``<pred>/<name>.png`` (same size as its ground truth, values
0..C or 255 only where the ground truth is ignored). Scores are in percent with background as a
class; see ``affinitynet.evaluation``.
"""

from __future__ import annotations

from pathlib import Path

from affinitynet import artifacts
from affinitynet.config import EvaluateConfig
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError
from affinitynet.evaluation import evaluate_folder, format_table


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
    scores = evaluate_folder(cfg.pred, voc, names)
    scores.update(split=cfg.split, pred=str(cfg.pred), dataset=str(cfg.dataset))
    out = Path(cfg.out) if cfg.out else default_json_path(cfg.pred, cfg.split)
    artifacts.write_json(out, scores)
    scores["json"] = str(out)
    print(f"{cfg.pred} on {cfg.dataset} [{cfg.split}, {len(names)} images]")
    print(format_table(scores))
    print(f"scores written to {out}")
    return scores
