"""Stage 2b: confident foreground / background regions by dense CRF (paper Sec. 3.2).

For each image the CAMs get a background score (1 - max CAM)^alpha with a low alpha (4) and a
high alpha (32); each stack is refined by a dense CRF. Writes both CRF outputs,
``crf/<image>.npz``: AffinityNet's training samples apply the confident-label rule to them on
each crop's stride-8 grid, as the original does. Also writes the rule at full resolution,
``aff_labels/<image>.png`` (foreground trusted from the low-alpha result, background from the
high-alpha result, the rest unsure, 255), for pictures, the report and diagnostics. The CRF is
CPU-bound, so images are spread over a process pool (and over ranks under torchrun); each image
is done exactly once and written atomically, its score file last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from affinitynet import artifacts, distributed
from affinitynet.algorithms.crf import confident_labels, crf_with_background
from affinitynet.artifacts import WorkDir
from affinitynet.algorithms.resize import resize_label, resize_maps
from affinitynet.common import announce_sizes, infer_names, open_dataset, report, todo, working_image
from affinitynet.config import AffLabelsConfig, RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.diagnostics import confident_regions, confident_warnings
from affinitynet.evaluation import confident_label_scores, names_with_gt
from affinitynet.parallel import map_in_processes, usable_cores


def crf_scores(image: np.ndarray, maps: np.ndarray, settings: AffLabelsConfig) -> tuple[np.ndarray, np.ndarray]:
    """The dense-CRF scores of one image for the low and the high alpha (paper Sec. 3.2): each
    (k+1, H, W) float32, background first. ``image`` (H, W, 3) uint8; ``maps`` (k, H, W) its CAMs."""
    return (crf_with_background(image, maps, settings.low_alpha, settings.crf_iterations),
            crf_with_background(image, maps, settings.high_alpha, settings.crf_iterations))


def confident_label_map(image: np.ndarray, keys: np.ndarray, maps: np.ndarray,
                        settings: AffLabelsConfig) -> np.ndarray:
    """Confident labels of one image at full resolution (paper Sec. 3.2): (H, W) uint8, 0
    background, class index + 1 foreground, 255 unsure. Objects are trusted where the CRF with
    the *low* alpha (strong background score) still finds them, background where the CRF with
    the *high* alpha (weak background score) still finds it.

    ``image`` (H, W, 3) uint8; ``keys`` (k,) and ``maps`` (k, H, W) the image's CAMs.
    """
    return confident_labels(*crf_scores(image, maps, settings), keys=keys)


@dataclass(frozen=True)
class LabelJob:
    """What a CRF worker process needs to label one image (sent along with every image)."""

    cfg: RunConfig

    def __call__(self, name: str) -> str:
        voc = open_dataset(self.cfg)
        wd = WorkDir(self.cfg.workdir)
        image = voc.load_image(name)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        # the CRF's kernels are in pixels: it runs at the working size, where AffinityNet trains;
        # the full-resolution labels come back to the native size
        work = working_image(image, self.cfg.dataset.long_side)
        low, high = crf_scores(work, resize_maps(maps, work.shape[:2]), self.cfg.aff_labels)
        label = confident_labels(low, high, keys=keys)
        save_label_png(wd.png(wd.aff_labels, name), resize_label(label, image.shape[:2]))
        artifacts.save_crf_scores(wd.crf_file(name), keys, low, high)  # last: marks the image done
        return name


def process_count(requested: int) -> int:
    """CRF processes of this rank: ``requested``, or (0) this node's cores shared evenly among
    the ranks torchrun started on it."""
    if requested > 0:
        return requested
    return max(1, usable_cores() // distributed.local_world_size())


def run(cfg: RunConfig) -> dict[str, Any]:
    wd = WorkDir(cfg.workdir)
    distributed.setup(cfg.device)
    voc = open_dataset(cfg)
    names = infer_names(cfg, voc)
    announce_sizes(cfg, voc, names, "make-aff-labels", "the dense CRF runs at that size")
    pending = todo(names, wd.crf_file, [wd.crf, wd.aff_labels])
    processes = min(process_count(cfg.aff_labels.processes), max(1, len(pending)))
    t0 = time.time()
    # the CRF is numpy and C++ only: nothing in the workers touches torch's thread pool
    map_in_processes(LabelJob(cfg), pending, processes, "make-aff-labels", progress=distributed.current().is_main)
    seconds = time.time() - t0
    distributed.barrier()
    result: dict[str, Any] = {"images": len(pending), "seconds": seconds, "processes": processes,
                              "images_per_second": len(pending) / seconds if seconds > 0 and pending else None}
    if distributed.current().is_main:
        result.update(confident_label_scores(wd.aff_labels, voc, names_with_gt(voc, cfg.dataset.eval_split),
                                             cam_pred_dir=wd.cam_pred))
        diag = confident_regions(wd.aff_labels, names, voc.classes)
        result.update(diagnostics=diag, warnings=confident_warnings(diag))
        report("make-aff-labels", f"confident background {diag['background']['mean']:.0f} %, objects "
               f"{diag['objects']['mean']:.0f} %, unsure {diag['unsure']['mean']:.0f} % of the pixels on average",
               result["warnings"])
    return result
