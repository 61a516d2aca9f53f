"""Stage 2a: multi-scale + flip CAMs of every image (paper Sec. 3.1; PSA infer_cls.py).

Writes ``cam/<image>.npz`` (format in artifacts.py) and, optionally, the CAM prediction with a
constant background score as ``cam_pred/<image>.png``; then evaluates the prediction on the
evaluation split and sweeps the background threshold. Finished images are skipped on a rerun.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.algorithms.cam import ThresholdSweep, cam_prediction, multiscale_cam
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import normalize
from affinitynet.errors import InputError
from affinitynet.models import build_classifier
from affinitynet.stages.common import (check_image_size, checked_image, image_loader, infer_names, load_trained,
                                      open_dataset, todo)


def cam_function(net: torch.nn.Module, device: torch.device, amp: bool = False,
                 channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """make-cam's network call for ``multiscale_cam``: puts ``net`` in eval mode on ``device``
    and returns x (B, 3, h, w) float -> CAMs (B, C, ceil(h/8), ceil(w/8)) float32 >= 0.

    ``amp``: bf16 autocast, on CUDA only (CAMs differ from fp32 by ~1e-2 relative).
    ``channels_last``: NHWC network and input; faster on CUDA and, for ResNet-38 at VOC size,
    ~1.15x on the CPU too (benchmarks/bench_cam_inference.py).
    """
    net.eval().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    use_amp = amp and device.type == "cuda"

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return net.cam(x).float()

    return cam_fn


def batch_flip_on(device: torch.device) -> bool:
    """Whether make-cam runs an image and its flip as one batch of 2: on CUDA (fewer, fuller
    kernels); on the CPU two passes of 1 measured ~10 % faster (benchmarks/bench_cam_inference.py)."""
    return device.type == "cuda"


def run(cfg: RunConfig) -> dict[str, Any]:
    mc = cfg.make_cam
    _, device = distributed.setup(cfg.device)
    wd = WorkDir(cfg.workdir)
    voc = open_dataset(cfg)
    names = infer_names(cfg, voc)
    net = build_classifier(cfg.train_cam.backbone, voc.num_classes)
    load_trained(net, wd.classifier / "final.pth", "classifier")
    cam_fn = cam_function(net, device, amp=mc.amp, channels_last=mc.channels_last)

    def norm(image: np.ndarray) -> torch.Tensor:
        return normalize(image, net.normalization)

    pending = todo(names, wd.cam_file, [wd.cam, wd.cam_pred])
    t0 = time.time()
    loader = image_loader(voc, pending, mc.num_workers)
    for name, image, label in tqdm(loader, desc="make-cam", total=len(pending), dynamic_ncols=True,
                                   disable=not distributed.current().is_main):
        image = checked_image(image)
        check_image_size(voc, name, image.shape[:2])
        if label.sum() == 0:
            raise InputError(f"{voc.image_path(name)}: image '{name}' has no class label, so it has no "
                             "CAM to infer (label it or remove it from the inference splits)")
        keys, maps = multiscale_cam(cam_fn, image, label, norm, scales=mc.scales, flip=mc.flip,
                                    batch_flip=batch_flip_on(device), device=device)
        if mc.save_pred:
            save_label_png(wd.png(wd.cam_pred, name),
                           cam_prediction(keys, maps, image.shape[:2], bg_score=mc.bg_score))
        # the CAM file is written last: its presence marks the image as done
        artifacts.save_cam(wd.cam_file(name), keys, maps, voc.num_classes)
    distributed.barrier()
    seconds = time.time() - t0
    result: dict[str, Any] = {"images": len(pending), "seconds": seconds}
    if distributed.current().is_main:
        result.update(evaluate(cfg, voc))
    return result


def evaluate(cfg: RunConfig, voc) -> dict[str, Any]:
    """CAM prediction mIoU on the evaluation split, and the background-threshold sweep."""
    from affinitynet.stages.evaluate import evaluate_folder

    wd = WorkDir(cfg.workdir)
    names = [n for n in voc.split(cfg.dataset.eval_split) if voc.has_gt(n)]
    if not names:
        return {}
    out: dict[str, Any] = {}
    if cfg.make_cam.save_pred:
        out.update(evaluate_folder(wd.cam_pred, voc, names))
    if cfg.make_cam.sweep:
        sweep = ThresholdSweep(voc.num_classes + 1)
        for name in names:
            gt = voc.load_gt(name)
            keys, maps = artifacts.load_cam(wd.cam_file(name), gt.shape, voc.num_classes)
            sweep.add(keys, maps, gt)
        res = sweep.result()
        out["sweep"] = {
            "thresholds": [round(float(t), 2) for t in res["thresholds"]],
            "miou": [round(100 * float(m), 2) for m in res["miou"]],
        }
        out["best_threshold"] = res["best_threshold"]
        out["best_miou"] = 100 * res["best_miou"]
    return out
