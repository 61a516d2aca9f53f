"""Stage 2b: confident foreground / background regions by dense CRF (paper Sec. 3.2).

For each image the CAMs get a background score (1 - max CAM)^alpha with a low alpha (4) and a
high alpha (32); each stack is refined by a dense CRF; foreground is trusted from the low-alpha
result, background from the high-alpha result, the rest is unsure (255). Writes
``aff_labels/<image>.png``. The CRF is CPU-bound, so images are spread over a process pool
(and over ranks under torchrun); each image is done exactly once and written atomically.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.algorithms.crf import confident_labels, crf_with_background
from affinitynet.artifacts import WorkDir
from affinitynet.config import AffLabelsConfig, RunConfig
from affinitynet.data.images import load_label_png, save_label_png
from affinitynet.errors import InputError
from affinitynet.stages.common import infer_names, open_dataset, todo

_JOB: dict[str, Any] = {}


def confident_label_map(image: np.ndarray, keys: np.ndarray, maps: np.ndarray,
                        settings: AffLabelsConfig) -> np.ndarray:
    """Confident labels of one image (paper Sec. 3.2): (H, W) uint8, 0 background, class index
    + 1 foreground, 255 unsure. Objects are trusted where the CRF with the *low* alpha (strong
    background score) still finds them, background where the CRF with the *high* alpha (weak
    background score) still finds it.

    ``image`` (H, W, 3) uint8; ``keys`` (k,) and ``maps`` (k, H, W) the image's CAMs.
    """
    low = crf_with_background(image, maps, settings.low_alpha, iterations=settings.crf_iterations)
    high = crf_with_background(image, maps, settings.high_alpha, iterations=settings.crf_iterations)
    return confident_labels(low, high, keys=keys)


def _init(cfg: RunConfig) -> None:
    _JOB["cfg"] = cfg
    _JOB["voc"] = open_dataset(cfg)


def _label_one(name: str) -> str:
    cfg, voc = _JOB["cfg"], _JOB["voc"]
    wd = WorkDir(cfg.workdir)
    image = voc.load_image(name)
    keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
    label = confident_label_map(image, keys, maps, cfg.aff_labels)
    save_label_png(wd.png(wd.aff_labels, name), label)
    return name


def process_count(requested: int) -> int:
    """CRF processes of this rank: ``requested``, or (0) this node's cores shared evenly among
    the ranks torchrun started on it."""
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // distributed.local_world_size())


def run(cfg: RunConfig) -> dict[str, Any]:
    wd = WorkDir(cfg.workdir)
    distributed.setup(cfg.device)
    voc = open_dataset(cfg)
    names = infer_names(cfg, voc)
    pending = todo(names, lambda n: wd.png(wd.aff_labels, n), [wd.aff_labels])
    processes = min(process_count(cfg.aff_labels.processes), max(1, len(pending)))
    t0 = time.time()
    # closed before an error propagates, so the error line is printed after the bar, not under it
    with tqdm(total=len(pending), desc="make-aff-labels", dynamic_ncols=True,
              disable=not distributed.current().is_main) as bar:
        if processes == 1:
            _init(cfg)
            for name in pending:
                _label_one(name)
                bar.update()
        else:
            # fork shares the already-imported modules; the CRF itself holds no threads or locks
            ctx = mp.get_context("fork")
            with ctx.Pool(processes, initializer=_init, initargs=(cfg,)) as pool:
                for _ in pool.imap_unordered(_label_one, pending, chunksize=1):
                    bar.update()
    seconds = time.time() - t0
    distributed.barrier()
    result: dict[str, Any] = {"images": len(pending), "seconds": seconds, "processes": processes,
                              "images_per_second": len(pending) / seconds if seconds > 0 and pending else None}
    if distributed.current().is_main:
        result.update(evaluate(cfg, voc))
    return result


def evaluate(cfg: RunConfig, voc) -> dict[str, Any]:
    """Precision and coverage of the confident labels on the evaluation split, and how often the
    CAM prediction is right on the same confident pixels (for comparison)."""
    wd = WorkDir(cfg.workdir)
    names = [n for n in voc.split(cfg.dataset.eval_split) if voc.has_gt(n)]
    if not names:
        return {}
    correct = confident = valid = cam_correct = 0
    have_cam_pred = all(wd.png(wd.cam_pred, n).exists() for n in names)
    for name in names:
        gt = voc.load_gt(name)
        path = wd.png(wd.aff_labels, name)
        label = load_label_png(path)
        if label.shape != gt.shape:  # e.g. a label folder left from another dataset
            raise InputError(f"{path}: label size {label.shape[1]}x{label.shape[0]} differs from the "
                             f"ground truth's {gt.shape[1]}x{gt.shape[0]} (labels from another dataset?)")
        keep = (gt != 255) & (label != 255)
        valid += int((gt != 255).sum())
        confident += int(keep.sum())
        correct += int((label[keep] == gt[keep]).sum())
        if have_cam_pred:
            cam = load_label_png(wd.png(wd.cam_pred, name))
            cam_correct += int((cam[keep] == gt[keep]).sum())
    out = {
        "confident_precision": 100.0 * correct / max(confident, 1),
        "confident_coverage": 100.0 * confident / max(valid, 1),
    }
    if have_cam_pred:
        out["cam_precision_on_confident"] = 100.0 * cam_correct / max(confident, 1)
    return out
