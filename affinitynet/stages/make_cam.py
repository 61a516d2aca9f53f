"""Stage 2a: multi-scale + flip CAMs of every image (paper Sec. 3.1; PSA infer_cls.py).

Writes ``cam/<image>.npz`` (format in artifacts.py) and, optionally, the CAM prediction with a
constant background score as ``cam_pred/<image>.png``; then evaluates the prediction on the
evaluation split and sweeps the background threshold. Finished images are skipped on a rerun.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from affinitynet import artifacts, distributed
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.artifacts import WorkDir
from affinitynet.common import (announce_sizes, dataset_profile, for_each_image, image_to, inference_net, infer_names,
                                load_trained, open_dataset, report)
from affinitynet.config import RunConfig
from affinitynet.data.images import save_label_png
from affinitynet.errors import InputError
from affinitynet.diagnostics import MOSTLY, cam_coverage, cam_warnings, scale_hint
from affinitynet.evaluation import cam_threshold_sweep, evaluate_folder, names_with_gt
from affinitynet.inference import cams_of_image
from affinitynet.models import build_classifier


def cam_function(net: torch.nn.Module, device: torch.device, amp: bool = False,
                 channels_last: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """make-cam's network call for ``multiscale_cam``: puts ``net`` in eval mode on ``device``
    and returns x (B, 3, h, w) float -> CAMs (B, C, ceil(h/8), ceil(w/8)) float32 >= 0.

    ``amp``: bf16 autocast, on CUDA only (CAMs differ from fp32 by ~1e-2 relative).
    ``channels_last``: NHWC network and input; faster on CUDA and, for ResNet-38 at VOC size,
    ~1.15x on the CPU too (benchmarks/bench_cam_inference.py).
    """
    inference_net(net, device, channels_last)
    use_amp = amp and device.type == "cuda"

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            return net.cam(image_to(x, device, channels_last)).float()

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
    net = load_trained(build_classifier(cfg.train_cam.backbone, voc.num_classes), wd.classifier.final,
                       "classifier")
    cam_fn = cam_function(net, device, amp=mc.amp, channels_last=mc.channels_last)

    def one_image(name: str, image: np.ndarray, label: np.ndarray) -> None:
        if label.sum() == 0:
            raise InputError(f"{voc.image_path(name)}: image '{name}' has no class label, so it has no "
                             "CAM to infer (label it or remove it from the inference splits)")
        keys, maps = cams_of_image(cam_fn, net.normalization, image, label, mc, cfg.dataset.long_side,
                                   batch_flip_on(device), device)
        if mc.save_pred:
            save_label_png(wd.png(wd.cam_pred, name), cam_prediction(keys, maps, mc.bg_score, image.shape[:2]))
        # the CAM file is written last: its presence marks the image as done
        artifacts.save_cam(wd.cam_file(name), keys, maps, voc.num_classes)

    names = infer_names(cfg, voc)
    announce_sizes(cfg, voc, names, "make-cam", f"CAMs at scales {', '.join(map(str, mc.scales))} of that size")
    result = for_each_image(voc, names, wd.cam_file, [wd.cam, wd.cam_pred], one_image,
                            num_workers=mc.num_workers, desc="make-cam")
    if distributed.current().is_main:
        scored = names_with_gt(voc, cfg.dataset.eval_split)
        if scored and mc.save_pred:
            result.update(evaluate_folder(wd.cam_pred, voc, scored))
        if scored and mc.sweep:
            result.update(cam_threshold_sweep(wd.cam_file, voc, scored))
        diag = cam_coverage(wd.cam_file, voc, names, mc.bg_score)
        sweep = ({"best_threshold": result["best_threshold"], "best_miou": result["best_miou"],
                  "miou_at_bg_score": result.get("miou", result["best_miou"])} if "best_threshold" in result else None)
        hint = scale_hint(cfg.dataset.long_side, dataset_profile(voc, names), cfg.train_cam.resize_long)
        result.update(diagnostics=diag, warnings=cam_warnings(diag, hint, sweep, mc.bg_score))
        report("make-cam", f"CAM coverage {diag['coverage']['mean']:.0f} % of the image on average "
               f"(median {diag['coverage']['median']:.0f} %; {diag['images_mostly_covered']:.0f} % of images "
               f"over {MOSTLY:.0f} %)", result["warnings"])
    return result
