"""Stage 2b: confident foreground / background regions by dense CRF (paper Sec. 3.2).

For each image the CAMs get a background score (1 - max CAM)^alpha with a low alpha (4) and a
high alpha (32); each stack is refined by a dense CRF. Writes both CRF outputs,
``crf/<image>.npz``: AffinityNet's training samples apply the confident-label rule to them on
each crop's stride-8 grid, as the original does. Also writes the rule at full resolution,
``aff_labels/<image>.png`` (foreground trusted from the low-alpha result, background from the
high-alpha result, the rest unsure, 255), for pictures, the report and diagnostics. The CRF is
CPU-bound, so images are spread over a process pool (and over ranks under torchrun); each image
is done exactly once and written atomically, its score file last.

With ``method: irn`` it writes IRN's confident labels instead (``ir_labels`` section: IRN's label
CRF of the CAMs against a background plane of 0.30 for the objects and of 0.05 for the
background), ``aff_labels/<image>.png`` alone, which IRN's network trains on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from affinitynet import artifacts, distributed, records
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.console import announce_sizes, print_diagnostics
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset
from affinitynet.diagnostics import cam_coverage, confident_regions, confident_warnings
from affinitynet.evaluation import confident_label_scores, names_with_gt
from affinitynet.inference import confident_label_map, crf_scores, ir_label_map
from affinitynet.parallel import map_in_processes, usable_cores
from affinitynet.per_image import todo
from affinitynet.stage_table import section_of


@dataclass(frozen=True)
class LabelJob:
    """What a CRF worker process needs to label one image (sent along with every image)."""

    cfg: RunConfig

    def __call__(self, name: str) -> str:
        voc = open_dataset(self.cfg.dataset)
        wd = WorkDir(self.cfg.workdir)
        image = WorkImage(voc.load_image(name), self.cfg.dataset.long_side)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.native_size, voc.num_classes)
        # the CRF's kernels are in pixels: it runs at the working size, where the network trains
        if self.cfg.method == "irn":  # IRN's labels alone: the network trains on them
            label = image.label_to_native(ir_label_map(image, keys, maps, self.cfg.ir_labels))
            save_label_png(wd.png(wd.aff_labels, name), label)
            return name
        low, high = crf_scores(image, maps, self.cfg.aff_labels)
        save_label_png(wd.png(wd.aff_labels, name), confident_label_map(image, keys, low, high))
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
    voc = open_dataset(cfg.dataset)
    names = inference_names(cfg.dataset, voc)
    announce_sizes(cfg.dataset, voc, names, "make-aff-labels", "the dense CRF runs at that size")
    decision = records.start(cfg, "aff_labels")
    irn = cfg.method == "irn"
    # PSA's image is done when its CRF scores are written (last), IRN's when its label is
    pending = todo(names, (lambda n: wd.png(wd.aff_labels, n)) if irn else wd.crf_file,
                   [wd.aff_labels] if irn else [wd.crf, wd.aff_labels])
    requested = getattr(cfg, section_of("aff_labels", cfg.method)).processes
    processes = min(process_count(requested), max(1, len(pending)))
    t0 = time.time()
    # the CRF is numpy and C++ only: nothing in the workers touches torch's thread pool
    map_in_processes(LabelJob(cfg), pending, processes, "make-aff-labels", progress=distributed.current().is_main)
    seconds = time.time() - t0
    distributed.barrier()
    result: dict[str, Any] = {"images": len(pending), "seconds": seconds, "processes": processes,
                              "images_per_second": len(pending) / seconds if seconds > 0 and pending else None,
                              **records.outcome(decision, "aff_labels", len(pending))}
    if distributed.current().is_main:
        result.update(evaluate_confident_labels(cfg, voc, names))
    return result


def evaluate_confident_labels(cfg: RunConfig, voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """Precision and coverage of the confident labels on the evaluation split (where it has
    ground truth), and the confident-region diagnostics with their warnings."""
    wd = WorkDir(cfg.workdir)
    result = confident_label_scores(wd.aff_labels, voc, names_with_gt(voc, cfg.dataset.eval_split),
                                    cam_pred_dir=wd.cam_pred)
    diag = confident_regions(wd.aff_labels, names, voc.classes)
    cams = cam_coverage(wd.cam_file, voc, names, cfg.make_cam.bg_score)
    result.update(diagnostics=diag, warnings=confident_warnings(diag, cams))
    print_diagnostics("make-aff-labels", f"confident background {diag['background']['mean']:.0f} %, objects "
                      f"{diag['objects']['mean']:.0f} %, unsure {diag['unsure']['mean']:.0f} % of the pixels on average",
                      result["warnings"])
    return result
