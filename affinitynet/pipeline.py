"""The whole pipeline: orders the stages and writes ``metrics.json``.

``STAGES`` pairs each row of the stage table (``stage_table.STAGE_TABLE``: names, titles,
folders) with the module that runs it; the command line and ``run`` both read it. To add a
stage: write ``stages/<name>.py`` with ``run(cfg)`` (starting with ``records.start``, or
``training.start`` if it trains), its config section in ``config.py``, its output path in
``artifacts.WorkDir``, one row in the stage table and its module here.

``run(cfg)`` is ``affinitynet run``; ``demo()`` is ``affinitynet demo``: the synthetic dataset
and the recipe ``configs/demo.yaml``, then a table CAM vs random walk vs the segmentation
network trained on the random walk's labels.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from affinitynet import artifacts, config as C, distributed, records
from affinitynet.artifacts import WorkDir
from affinitynet.console import print_run_warnings
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset, size_profile
from affinitynet.evaluation import evaluate_folder, instance_summary, percent
from affinitynet.stage_table import NOT_METRICS, STAGE_BY_NAME, STAGE_TABLE, StageInfo
from affinitynet.stages import (make_aff_labels, make_cam, predict, random_walk, segment, synth, train_aff,
                                train_cam, train_seg)
from affinitynet.stages import import_cams as import_cams_stage

_MODULES: dict[str, ModuleType] = {"train_cam": train_cam, "make_cam": make_cam, "aff_labels": make_aff_labels,
                                   "train_aff": train_aff, "random_walk": random_walk, "train_seg": train_seg,
                                   "segment": segment}


@dataclass(frozen=True)
class Stage:
    """A row of the stage table and the module that runs it (``run(cfg) -> dict``)."""

    info: StageInfo
    module: ModuleType

    def run(self, cfg: C.RunConfig) -> dict[str, Any]:
        return self.module.run(cfg)


STAGES: tuple[Stage, ...] = tuple(Stage(info, _MODULES[info.name]) for info in STAGE_TABLE)


def run_one(stage: Stage, cfg: C.RunConfig) -> dict[str, Any]:
    """One stage on its own (``affinitynet random-walk`` ...): its scores and fingerprint go
    into metrics.json; then names the stages whose outputs were made from other outputs of it
    (``run`` redoes them)."""
    t0 = time.time()
    result = stage.run(cfg)
    _after_one(cfg, stage.info, result, time.time() - t0)
    return result


def import_cams(cfg: C.RunConfig, spec: C.ImportCamsConfig) -> dict[str, Any]:
    """``affinitynet import-cams``: another method's CAMs as make-cam's outputs
    (``stages/import_cams.py``); their scores go into metrics.json as make-cam's."""
    t0 = time.time()
    imported = import_cams_stage.run(cfg, spec)
    names = imported["names"]
    result = {**make_cam.finish(cfg, open_dataset(cfg.dataset), names, imported["decision"], len(names)),
              "import": imported["import"]}
    _after_one(cfg, STAGE_BY_NAME["make_cam"], result, time.time() - t0)
    return result


def _after_one(cfg: C.RunConfig, info: StageInfo, result: dict[str, Any], seconds: float) -> None:
    if distributed.current().is_main:
        _keep_result(WorkDir(cfg.workdir), info, result, seconds)
        behind = [name for name, inputs in records.behind(records.recorded_stages(cfg.workdir)).items()
                  if info.name in inputs]
        if behind:
            print(f"{', '.join(behind)}: made from earlier outputs of {info.name}; `affinitynet run` "
                  "(or each stage's command) redoes them")


def _keep_result(wd: WorkDir, info: StageInfo, result: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Merge one stage's scores, fingerprint and time into metrics.json; returns all of it."""
    metrics = artifacts.read_metrics(wd.metrics)
    if info.evaluates:
        metrics[info.name] = {k: v for k, v in result.items() if k not in NOT_METRICS}
    metrics.setdefault("fingerprints", {})[info.name] = result.get("fingerprint")
    metrics.setdefault("seconds", {})[info.name] = seconds
    artifacts.write_json(wd.metrics, metrics)
    return metrics


DEMO_DATA = {"train": 200, "val": 50, "seed": 0, "family": "shapes"}


def run(cfg: C.RunConfig) -> dict[str, Any]:
    """Run every stage in order. Each compares its record with the config (``records.py``):
    outputs of these settings are kept (finished training stages are skipped, interrupted ones
    resume, per-image stages skip finished images), outputs of other settings are redone. Prints
    one line per stage; returns (and writes) the metrics, with each stage's fingerprint; then
    writes ``config.yaml``, the pictures (``vis/``) and the HTML report (``report/index.html``)."""
    wd = WorkDir(cfg.workdir)
    d, _ = distributed.setup(cfg.device)
    metrics: dict[str, Any] = {}
    for stage in STAGES:
        t0 = time.time()
        result = stage.run(cfg)
        if d.is_main:  # written as each stage ends: a run stopped later keeps the scores so far
            metrics = _keep_result(wd, stage.info, result, time.time() - t0)
    voc = open_dataset(cfg.dataset)
    metrics.update(eval_split=cfg.dataset.eval_split,
                   dataset={**size_profile(voc, inference_names(cfg.dataset, voc)),
                            "working_long_side": cfg.dataset.long_side})
    if d.is_main:
        artifacts.write_json(wd.metrics, metrics)
        # the settings every output now has (without this run's one-off requests)
        artifacts.write_bytes(wd.config, C.dump_yaml(dataclasses.replace(cfg, redo=(), changed="redo")).encode())
        save_pictures(cfg)
        from affinitynet import report  # matplotlib: loaded here, not with the CLI

        print(f"report: {report.write_report(wd.root)}")
        print_run_warnings([f"{key}: {w}" for key, w in report.run_warnings(metrics)])
    return metrics


def save_pictures(cfg: C.RunConfig, count: int = 6) -> list[Path]:
    """``vis/<image>.png`` for the first images of the evaluation split: image, CAMs, CAM
    prediction, confident labels, pseudo label, segmentation network (where it segmented that
    image), ground truth."""
    from affinitynet import visualize
    from affinitynet.data.images import load_label_png

    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg.dataset)
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
        synth.run(C.load_config(C.SynthConfig, values={"out": str(root), **data}))
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
    new = synth.run(C.load_config(C.SynthConfig, values={"out": str(wd.root / "new_images"), "train": 0, "val": count,
                                                         "seed": data["seed"] + 1,
                                                         "family": data.get("family", "shapes")}))
    images = Path(new["root"]) / "JPEGImages"
    out = wd.root / "predict"
    predict.run(C.load_config(C.PredictConfig, values={"weights": str(wd.root), "inputs": [str(images)],
                                                       "out": str(out), "overlay": True, "device": cfg.device,
                                                       "segment": {"num_workers": 0}}))
    scores = evaluate_folder(out, VOCDataset(new["root"]), [p.stem for p in sorted(images.glob("*.jpg"))])
    return (f"affinitynet predict --weights {wd.root} {images} --out {out} --overlay: {count} new images "
            f"(seed {data['seed'] + 1}, in no split), mIoU {scores['miou']:.1f} against their ground truth; "
            f"pictures in {out / 'overlay'}")


def comparison_table(metrics: dict[str, Any]) -> str:
    """Markdown table: IoU per class and mIoU of the CAMs, the random walk and (when it was
    evaluated on the same split) the segmentation network."""
    cam, walk, seg = (metrics.get(name, {}) for name in ("make_cam", "random_walk", "segment"))
    split = metrics.get("eval_split", "eval")
    columns = [(f"{STAGE_BY_NAME['make_cam'].title} IoU", cam), (f"{STAGE_BY_NAME['random_walk'].title} IoU", walk)]
    if seg.get("per_class") and seg.get("split", split) == split:
        columns.append((f"{STAGE_BY_NAME['segment'].title} IoU", seg))
    classes = list((walk.get("per_class") or cam.get("per_class") or {}).keys())
    lines = [f"| class ({split}) | " + " | ".join(title for title, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for c in classes:
        lines.append(f"| {c} | " + " | ".join(percent(m.get("per_class", {}).get(c)) for _, m in columns) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{percent(m.get('miou'))}**" for _, m in columns) + " |")
    if seg.get("miou") is not None and len(columns) == 2:
        lines.append(f"\n{STAGE_BY_NAME['segment'].title} on {seg.get('split')}: mIoU {percent(seg['miou'])}")
    if isinstance(walk.get("instances"), dict):
        lines.append(f"\n{instance_summary(walk['instances'])}")
    return "\n".join(lines)

