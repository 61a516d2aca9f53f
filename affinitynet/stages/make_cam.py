"""Stage 2a: multi-scale + flip CAMs of every image (paper Sec. 3.1; PSA infer_cls.py, or with
``make_cam.fusion: irn`` IRN make_cam.py, which also keeps the stride-4 maps IRN's walk starts from).

Writes ``cam/<image>.npz`` (format in artifacts.py) and, optionally, the CAM prediction with a
constant background score as ``cam_pred/<image>.png``; then evaluates the prediction on the
evaluation split and sweeps the background threshold. Finished images are skipped on a rerun.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affinitynet import artifacts, distributed, records
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, print_diagnostics
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset, size_profile
from affinitynet.diagnostics import MOSTLY, cam_coverage, cam_warnings, scale_hint, sweep_summary
from affinitynet.errors import InputError
from affinitynet.evaluation import cam_threshold_sweep, evaluate_folder, names_with_gt
from affinitynet.inference import cams_of_image, irn_cams_of_image, load_trained, prepare
from affinitynet.models import build_classifier
from affinitynet.per_image import for_each_image, todo


def run(cfg: RunConfig) -> dict[str, Any]:
    mc = cfg.make_cam
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg.dataset)
    names = inference_names(cfg.dataset, voc)
    decision = records.start(cfg, "make_cam")
    if decision.status == "given":  # imported CAMs (import-cams): no classifier to make more
        missing = [n for n in names if not wd.cam_file(n).exists()]
        if missing:
            raise InputError(f"make-cam: the CAMs in {wd.cam} were imported ({decision.record.given}), but "
                             f"{len(missing)} of {len(names)} images have none (e.g. {missing[0]}); import them "
                             "again with affinitynet import-cams")
        return finish(cfg, voc, names, decision, 0)
    net = load_trained(build_classifier(cfg.train_cam.backbone, voc.num_classes), wd.classifier.final, "classifier")
    classifier = prepare(net, device, mc.channels_last, mc.amp)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        if label.sum() == 0:
            raise InputError(f"{voc.image_path(name)}: image '{name}' has no class label, so it has no "
                             "CAM to infer (label it or remove it from the inference splits)")
        work, strided = WorkImage(image, cfg.dataset.long_side), None
        if mc.fusion == "irn":
            keys, strided, maps = irn_cams_of_image(classifier, work, label, mc)
        else:
            keys, maps = cams_of_image(classifier, work, label, mc)
        if mc.save_pred:
            save_label_png(wd.png(wd.cam_pred, name), cam_prediction(keys, maps, mc.bg_score, image.shape[:2]))
        # the CAM file is written last: its presence marks the image as done
        artifacts.save_cam(wd.cam_file(name), keys, maps, voc.num_classes, strided)

    announce_sizes(cfg.dataset, voc, names, "make-cam", f"CAMs at scales {', '.join(map(str, mc.scales))} of that size")
    result = for_each_image(voc, names, wd.cam_file, [wd.cam, wd.cam_pred], one_image,
                            num_workers=mc.num_workers, desc="make-cam")
    return finish(cfg, voc, names, decision, result["images"])


def finish(cfg: RunConfig, voc: VOCDataset, names: list[str], decision: records.Start,
           done_now: int) -> dict[str, Any]:
    """With every CAM file there (made here or imported): the missing CAM predictions, the
    stage's status line, and on rank 0 the scores and diagnostics."""
    if cfg.make_cam.save_pred:
        write_predictions(cfg, voc, names)
    result: dict[str, Any] = {"images": done_now, **records.outcome(decision, "make_cam", done_now)}
    if distributed.current().is_main:
        result.update(evaluate_cams(cfg, voc, names))
    return result


def write_predictions(cfg: RunConfig, voc: VOCDataset, names: list[str]) -> None:
    """The CAM predictions missing beside finished CAM files (e.g. set aside for another
    ``make_cam.bg_score``), from the CAM files: this rank's share."""
    wd = WorkDir(cfg.workdir)
    for name in todo(names, lambda n: wd.png(wd.cam_pred, n), [wd.cam_pred]):
        if wd.cam_file(name).exists():
            keys, maps = artifacts.load_cam(wd.cam_file(name), num_classes=voc.num_classes)
            save_label_png(wd.png(wd.cam_pred, name), cam_prediction(keys, maps, cfg.make_cam.bg_score, maps.shape[1:]))
    distributed.barrier()


def evaluate_cams(cfg: RunConfig, voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """The CAM prediction's scores and the background-threshold sweep on the evaluation split
    (where it has ground truth), and the CAM diagnostics with their warnings."""
    mc, wd, result = cfg.make_cam, WorkDir(cfg.workdir), {}
    scored = names_with_gt(voc, cfg.dataset.eval_split)
    if scored and mc.save_pred:
        result.update(evaluate_folder(wd.cam_pred, voc, scored))
    if scored and mc.sweep:
        result.update(cam_threshold_sweep(wd.cam_file, voc, scored))
    diag = cam_coverage(wd.cam_file, voc, names, mc.bg_score)
    hint = scale_hint(cfg.dataset.long_side, size_profile(voc, names), cfg.train_cam.resize_long)
    result.update(diagnostics=diag, warnings=cam_warnings(diag, hint, sweep_summary(result), mc.bg_score))
    print_diagnostics("make-cam", f"CAM coverage {diag['coverage']['mean']:.0f} % of the image on average "
                      f"(median {diag['coverage']['median']:.0f} %; {diag['images_mostly_covered']:.0f} % of images "
                      f"over {MOSTLY:.0f} %)", result["warnings"])
    return result
