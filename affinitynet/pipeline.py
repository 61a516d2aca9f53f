"""The stage table and the whole pipeline: orders the stages, skips finished ones, writes
``metrics.json``.

``STAGES`` declares every pipeline stage once (command, module, whether it trains, its output);
the command line and ``run`` both read it. To add a stage: write ``stages/<name>.py`` with
``run(cfg)`` (``run(cfg, resume)`` if it trains), its config section in ``config.py``, its
output path in ``artifacts.WorkDir``, and one row here.

``run(cfg)`` is ``affinitynet run``; ``demo()`` is ``affinitynet demo``: the synthetic dataset
and the recipe ``configs/demo.yaml``, then a table CAM vs random walk vs the segmentation
network trained on the random walk's labels.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from affinitynet import artifacts, config as C, distributed
from affinitynet.artifacts import WorkDir
from affinitynet.common import dataset_profile, infer_names, open_dataset
from affinitynet.data.voc import VOCDataset
from affinitynet.evaluation import evaluate_folder
from affinitynet.stages import (make_aff_labels, make_cam, predict, random_walk, segment, synth, train_aff,
                                train_cam, train_seg)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str  # key of its timing (and, for evaluating stages, of ``metrics_key``) in metrics.json
    command: str  # the CLI command
    module: ModuleType  # has run(cfg) -> dict, or run(cfg, resume) -> dict when it trains
    help: str
    trains: bool
    output: Callable[[WorkDir], Path]  # a training stage is done once this file exists
    metrics_key: str | None = None  # its evaluation in metrics.json

    def run(self, cfg: C.RunConfig, resume: bool = False) -> dict[str, Any]:
        return self.module.run(cfg, resume=resume) if self.trains else self.module.run(cfg)


STAGES: tuple[Stage, ...] = (
    Stage("train_cam", "train-cam", train_cam, "stage 1: train the multi-label classifier", True,
          lambda wd: wd.classifier.final),
    Stage("make_cam", "make-cam", make_cam, "stage 2a: multi-scale CAMs (+ CAM prediction and evaluation)",
          False, lambda wd: wd.cam, "cam"),
    Stage("aff_labels", "make-aff-labels", make_aff_labels, "stage 2b: dense-CRF confident labels for AffinityNet",
          False, lambda wd: wd.aff_labels, "aff_labels"),
    Stage("train_aff", "train-aff", train_aff, "stage 3: train AffinityNet", True, lambda wd: wd.affinity.final),
    Stage("random_walk", "random-walk", random_walk, "stage 4: random walk -> pseudo labels (+ evaluation)",
          False, lambda wd: wd.pseudo_labels, "rw"),
    Stage("train_seg", "train-seg", train_seg, "stage 5a: train the segmentation network on the pseudo labels",
          True, lambda wd: wd.segmentation.final),
    Stage("segment", "segment", segment, "stage 5b: segment a split with it (+ evaluation)", False,
          lambda wd: wd.seg_pred, "seg"),
)

# what a stage's result holds beyond its scores (kept out of metrics.json)
_NOT_METRICS = ("confusion", "class_names", "images", "seconds", "history", "final", "steps")

DEMO_DATA = {"train": 200, "val": 50, "seed": 0, "family": "shapes"}


def run(cfg: C.RunConfig) -> dict[str, Any]:
    """Run every stage in order; finished training stages are skipped, interrupted ones resume,
    per-image stages skip finished images. Returns (and writes) the metrics; then writes the
    pictures (``vis/``) and the HTML report (``report/index.html``)."""
    wd = WorkDir(cfg.workdir)
    d, _ = distributed.setup(cfg.device)
    if d.is_main:
        wd.root.mkdir(parents=True, exist_ok=True)
        artifacts.write_bytes(wd.config, C.dump_yaml(cfg).encode())
    metrics: dict[str, Any] = {}
    times: dict[str, float] = {}
    for stage in STAGES:
        t0 = time.time()
        if stage.trains and stage.output(wd).exists():
            if d.is_main:
                print(f"[{stage.name}] done already ({stage.output(wd)}), skipped")
            result: dict[str, Any] = {}
        else:
            result = stage.run(cfg, resume=True)
        times[stage.name] = time.time() - t0
        if stage.metrics_key:
            metrics[stage.metrics_key] = {k: v for k, v in result.items() if k not in _NOT_METRICS}
    voc = open_dataset(cfg)
    metrics.update(seconds=times, eval_split=cfg.dataset.eval_split,
                   dataset={**dataset_profile(voc, infer_names(cfg, voc)), "working_long_side": cfg.dataset.long_side})
    if d.is_main:
        artifacts.write_json(wd.metrics, metrics)
        save_pictures(cfg)
        from affinitynet import report  # matplotlib: loaded here, not with the CLI

        print(f"report: {report.write_report(wd.root)}")
        warnings = [f"{key}: {w}" for key, w in report.run_warnings(metrics)]
        if warnings:
            print("affinitynet: warnings of this run (details under 'diagnostics' in metrics.json):", file=sys.stderr)
            for w in warnings:
                print(f"  - {w}", file=sys.stderr)
    return metrics


def save_pictures(cfg: C.RunConfig, count: int = 6) -> list[Path]:
    """``vis/<image>.png`` for the first images of the evaluation split: image, CAMs, CAM
    prediction, confident labels, pseudo label, segmentation network (where it segmented that
    image), ground truth."""
    from affinitynet import visualize
    from affinitynet.data.images import load_label_png

    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    written = []
    for name in voc.split(cfg.dataset.eval_split)[:count]:
        image = voc.load_image(name)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        labels = {title: load_label_png(wd.png(folder, name)) if wd.png(folder, name).exists() else None
                  for _, title, folder in wd.label_folders}
        labels["ground truth"] = voc.load_gt(name) if voc.has_gt(name) else None
        written.append(visualize.overview(wd.vis / f"{name}.png", image, keys, maps, labels, voc.classes))
    return written


def demo_config(workdir: str | Path, sets: list[str] | None = None, device: str = "auto") -> C.RunConfig:
    """The demo's config: the recipe ``configs/demo.yaml`` with the work folder, the synthetic
    data inside it (``<workdir>/data``) and the device, then ``sets``."""
    place = {"workdir": str(workdir), "dataset": {"root": str(Path(workdir) / "data")}, "device": device}
    return C.load_config(C.RunConfig, "demo", sets, values=place)


def demo(workdir: str | Path = "work/demo", sets: list[str] | None = None, device: str = "auto",
         data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Synthetic dataset (``data`` overrides DEMO_DATA: image counts, seed, family) + whole
    pipeline with the CPU recipe; prints CAM vs random walk vs the segmentation network."""
    t0 = time.time()
    cfg = demo_config(workdir, sets, device)
    root = Path(cfg.dataset.root)
    data = {**DEMO_DATA, **(data or {})}
    d, _ = distributed.setup(cfg.device)
    # under torchrun rank 0 alone writes the dataset; the others wait for it
    if d.is_main and not (root / "ImageSets" / "Segmentation" / "val.txt").exists():
        synth.run(C.SynthConfig(out=str(root), **data))
    distributed.barrier()
    metrics = run(cfg)
    if d.is_main:
        print(comparison_table(metrics))
        print(predict_new_images(cfg, data))
        print(f"demo finished in {time.time() - t0:.0f} s; everything is in {cfg.workdir}")
    return metrics


def predict_new_images(cfg: C.RunConfig, data: dict[str, Any], count: int = 4) -> str:
    """``affinitynet predict`` with the demo's segmentation network on ``count`` new synthetic
    images (the next seed: in no split of the run), scored against their ground truth; returns
    the summary lines."""
    wd = WorkDir(cfg.workdir)
    new = synth.run(C.SynthConfig(out=str(wd.root / "new_images"), train=0, val=count, seed=data["seed"] + 1,
                                  family=data.get("family", "shapes")))
    images = Path(new["root"]) / "JPEGImages"
    out = wd.root / "predict"
    predict.run(C.PredictConfig(weights=str(wd.root), inputs=[str(images)], out=str(out), overlay=True,
                                num_workers=0, device=cfg.device))
    scores = evaluate_folder(out, VOCDataset(new["root"]), [p.stem for p in sorted(images.glob("*.jpg"))])
    return (f"affinitynet predict --weights {wd.root} {images} --out {out} --overlay: {count} new images "
            f"(seed {data['seed'] + 1}, in no split), mIoU {scores['miou']:.1f} against their ground truth; "
            f"pictures in {out / 'overlay'}")


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
