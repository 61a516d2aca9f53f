"""The whole pipeline: orders the stages, skips finished ones, writes ``metrics.json``.

``run(cfg)`` is ``affinitynet run``; ``demo()`` is ``affinitynet demo``: the synthetic dataset
and the whole pipeline with the tiny backbone on the CPU, then a table CAM vs random walk vs the
segmentation network trained on the random walk's labels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from affinitynet import artifacts, config as C, distributed
from affinitynet.artifacts import WorkDir
from affinitynet.stages import (make_aff_labels, make_cam, random_walk, segment, synth, train_aff, train_cam,
                                train_seg)

# What the demo changes from the paper's defaults, and why. Everything else is the paper's.
DEMO_OVERRIDES: dict[str, Any] = {
    "dataset": {
        "train_split": "train",
        "eval_split": "val",  # report on held-out images
        "val_split": "val",
        "infer_splits": ["train"],
    },
    "train_cam": {
        "backbone": "tiny",  # CPU budget: no ImageNet weights, ~0.3M parameters
        "batch_size": 16,
        "epochs": 12,
        "lr": 0.1,
        "crop": 224,  # synthetic images are ~200-320 px
        "resize_long": [200, 320],
        "num_workers": 0,
    },
    "make_cam": {"scales": [1.0, 0.5, 1.5], "num_workers": 0},
    "train_aff": {
        "batch_size": 8,
        "epochs": 6,
        "lr": 0.1,
        "crop": 224,
        "resize_long": [200, 320],
        "num_workers": 0,
    },
    # random walk: the paper's alpha 16, beta 8, logt 8 (measured best on the synthetic val too)
    "train_seg": {  # as the classifier: CPU budget, synthetic image sizes
        "batch_size": 16,
        "epochs": 12,
        "crop": 224,
        "resize_long": [200, 320],
        "num_workers": 0,
    },
    "segment": {"num_workers": 0},
}
DEMO_DATA = {"train": 200, "val": 50, "seed": 0}


def _stage_seconds(result: Any) -> float | None:
    return result.get("seconds") if isinstance(result, dict) else None


def run(cfg: C.RunConfig) -> dict[str, Any]:
    """Run every stage in order; finished training stages are skipped, interrupted ones resume,
    per-image stages skip finished images. Returns (and writes) the metrics."""
    wd = WorkDir(cfg.workdir)
    d, _ = distributed.setup(cfg.device)
    if d.is_main:
        wd.root.mkdir(parents=True, exist_ok=True)
        artifacts.write_bytes(wd.config, C.dump_yaml(cfg).encode())
    times: dict[str, float] = {}
    results: dict[str, Any] = {}
    for name, stage, final in (
        ("train_cam", train_cam, wd.classifier / "final.pth"),
        ("make_cam", make_cam, None),
        ("aff_labels", make_aff_labels, None),
        ("train_aff", train_aff, wd.affinity / "final.pth"),
        ("random_walk", random_walk, None),
        ("train_seg", train_seg, wd.segmentation / "final.pth"),
        ("segment", segment, None),
    ):
        t0 = time.time()
        if final is not None:
            if final.exists():
                if d.is_main:
                    print(f"[{name}] done already ({final}), skipped")
                results[name] = {}
            else:
                results[name] = stage.run(cfg, resume=True)
        else:
            results[name] = stage.run(cfg)
        times[name] = time.time() - t0
    metrics = {
        "cam": _pick(results["make_cam"], ("miou", "per_class", "best_threshold", "best_miou", "pixel_accuracy")),
        "aff_labels": _pick(results["aff_labels"], ("confident_precision", "confident_coverage",
                                                    "cam_precision_on_confident", "images_per_second")),
        "rw": _pick(results["random_walk"], ("miou", "per_class", "pixel_accuracy")),
        "seg": _pick(results["segment"], ("split", "miou", "per_class", "pixel_accuracy")),
        "seconds": times,
        "eval_split": cfg.dataset.eval_split,
    }
    if d.is_main:
        artifacts.write_json(wd.metrics, metrics)
        save_pictures(cfg)
    return metrics


def save_pictures(cfg: C.RunConfig, count: int = 6) -> list[Path]:
    """``vis/<image>.png`` for the first images of the evaluation split: image, CAMs, CAM
    prediction, confident labels, pseudo label, segmentation network (where it segmented that
    image), ground truth."""
    from affinitynet import visualize
    from affinitynet.data.images import load_label_png
    from affinitynet.stages.common import open_dataset

    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    written = []
    for name in voc.split(cfg.dataset.eval_split)[:count]:
        image = voc.load_image(name)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        labels = {title: load_label_png(wd.png(folder, name)) if wd.png(folder, name).exists() else None
                  for title, folder in (("CAM prediction", wd.cam_pred), ("confident (CRF)", wd.aff_labels),
                                        ("random walk", wd.pseudo_labels),
                                        ("segmentation net", wd.seg_pred))}
        labels["ground truth"] = voc.load_gt(name) if voc.has_gt(name) else None
        written.append(visualize.overview(wd.vis / f"{name}.png", image, keys, maps, labels, voc.classes))
    return written


def _pick(result: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: result[k] for k in keys if k in result}


def demo_config(workdir: str | Path, sets: list[str] | None = None, device: str = "auto") -> C.RunConfig:
    cfg = C.RunConfig()
    C.apply_overrides(cfg, DEMO_OVERRIDES)
    cfg.workdir = str(workdir)
    cfg.device = device
    cfg.dataset.root = str(Path(workdir) / "data")
    if sets:
        C.apply_overrides(cfg, C.parse_set(sets))
    C.validate(cfg)
    return cfg


def demo(workdir: str | Path = "work/demo", sets: list[str] | None = None, device: str = "auto",
         data: dict[str, int] | None = None) -> dict[str, Any]:
    """Synthetic dataset + whole pipeline with the tiny backbone; prints CAM vs random walk vs
    the segmentation network."""
    t0 = time.time()
    cfg = demo_config(workdir, sets, device)
    root = Path(cfg.dataset.root)
    data = {**DEMO_DATA, **(data or {})}
    d, _ = distributed.setup(cfg.device)
    # under torchrun rank 0 alone writes the dataset; the others wait for it
    if d.is_main and not (root / "ImageSets" / "Segmentation" / "val.txt").exists():
        synth.run(C.SynthConfig(out=str(root), train=data["train"], val=data["val"], seed=data["seed"]))
    distributed.barrier()
    metrics = run(cfg)
    if d.is_main:
        print(comparison_table(metrics))
        print(f"demo finished in {time.time() - t0:.0f} s; everything is in {cfg.workdir}")
    return metrics


def comparison_table(metrics: dict[str, Any]) -> str:
    """Markdown table: IoU per class and mIoU of the CAMs, the random walk and (when it was
    evaluated on the same split) the segmentation network."""
    cam, rw, seg = metrics.get("cam", {}), metrics.get("rw", {}), metrics.get("seg", {})
    split = metrics.get("eval_split", "eval")
    columns = [("CAM IoU", cam), ("random walk IoU", rw)]
    if seg.get("per_class") and seg.get("split", split) == split:
        columns.append(("segmentation net IoU", seg))
    classes = list((rw.get("per_class") or cam.get("per_class") or {}).keys())
    lines = [f"| class ({split}) | " + " | ".join(title for title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(_fmt(m.get("per_class", {}).get(c)) for _, m in columns) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{_fmt(m.get('miou'))}**" for _, m in columns) + " |")
    if seg.get("miou") is not None and len(columns) == 2:
        lines.append(f"\nsegmentation net on {seg.get('split')}: mIoU {_fmt(seg['miou'])}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return "-" if v is None or v != v else f"{v:.1f}"
