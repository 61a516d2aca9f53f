"""Class activation maps: multi-scale + flip fusion, CAM prediction, background-threshold sweep.

Follows the inference procedure of the paper (Ahn & Kwak, CVPR 2018, Sec. 3.1 / 4.1) as released
in PSA's ``infer_cls.py``: CAMs of the image at several scales and their horizontal flips are
upsampled to the image size, masked by the image label, summed, and each class map is divided by
its maximum so that it lies in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.algorithms.metrics import mean_iou
from affinitynet.algorithms.resize import resize_image

# Background thresholds swept by default when choosing the CAM background score.
SWEEP_THRESHOLDS: np.ndarray = np.round(np.arange(0.05, 0.96, 0.05), 2)

# Added to each class map's maximum before dividing, as in PSA (keeps all-zero maps finite).
_NORM_EPS = 1e-5


def background_score(cam_maps: np.ndarray | torch.Tensor, alpha: float) -> np.ndarray | torch.Tensor:
    """Background score (1 - max over classes)^alpha (paper Eq. 8).

    ``cam_maps`` (K, ...) class maps in [0, 1] (numpy or torch) -> (...) of the same kind;
    alpha > 1 (paper: 4 / 32 for the CRF, 16 for the random walk) weakens the background where
    any class is confident. With K = 0 the score is 1. Numpy stays numpy: the CRF runs in forked
    worker processes, where torch's thread pool must not be touched.
    """
    if isinstance(cam_maps, torch.Tensor):
        if cam_maps.shape[0] == 0:
            return torch.ones(cam_maps.shape[1:], dtype=cam_maps.dtype, device=cam_maps.device)
        return (1 - cam_maps.amax(dim=0)) ** alpha
    if cam_maps.shape[0] == 0:
        return np.ones(cam_maps.shape[1:], dtype=cam_maps.dtype)
    return np.power(1 - np.max(cam_maps, axis=0), alpha)


def multiscale_cam(
    cam_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    label: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    scales: Sequence[float],
    flip: bool = True,
    batch_flip: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Fused, normalised CAMs of the classes present in ``label``.

    Args:
        cam_fn: network CAM function, float tensor (B, 3, h, w) -> (B, C, h', w') non-negative CAMs
            at any output stride; called under ``torch.inference_mode``.
        image: (H, W, 3) uint8 RGB image.
        label: (C,) image label, 1 for present classes, 0 otherwise.
        normalize: uint8 (h, w, 3) -> float32 (3, h, w) array or tensor (the network's input
            normalisation).
        scales: image scales, summed in this order (the float sum depends on it; PSA's are 1.0,
            0.5, 1.5, 2.0).
        flip: also run the horizontally flipped image at every scale (flipped back before summing).
        batch_flip: run an image and its flip as one batch of 2 (same result, fewer calls).
        device: device of the network behind ``cam_fn``.

    Returns:
        keys: (k,) int64 class indices with label 1, ascending.
        maps: (k, H, W) float32 CAMs in [0, 1], each divided by (its maximum + 1e-5).
    """
    height, width = image.shape[:2]
    label_vec = np.asarray(label, dtype=np.float32).reshape(-1)
    label_t = torch.from_numpy(label_vec).to(device).view(1, -1, 1, 1)
    total: torch.Tensor | None = None

    def fused(x: torch.Tensor) -> torch.Tensor:
        cam = cam_fn(x.to(device))
        return F.interpolate(cam.float(), size=(height, width), mode="bilinear", align_corners=False) * label_t

    with torch.inference_mode():
        for scale in scales:
            x = torch.as_tensor(np.asarray(normalize(resize_image(image, scale)), dtype=np.float32))[None]
            if not flip:
                cams = [fused(x)[0]]
            elif batch_flip:
                both = fused(torch.cat([x, x.flip(-1)], dim=0))
                cams = [both[0], both[1].flip(-1)]
            else:
                cams = [fused(x)[0], fused(x.flip(-1))[0].flip(-1)]
            # Added one map at a time in PSA's order (scale, then flip) so the float sum matches it.
            for cam in cams:
                total = cam.clone() if total is None else total + cam
        assert total is not None, "scales must not be empty"
        norm = total / (total.amax(dim=(1, 2), keepdim=True) + _NORM_EPS)
        keys = np.flatnonzero(label_vec > 1e-5).astype(np.int64)
        maps = norm[torch.from_numpy(keys).to(norm.device)].cpu().numpy().astype(np.float32)
    return keys, maps


def cam_prediction(
    keys: np.ndarray,
    maps: np.ndarray,
    bg_score: float,
    shape_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Label map from normalised CAMs with a constant background score (PSA: 0.2): a pixel is
    background unless some normalised class map exceeds it.

    Argmax over [bg_score] + maps (ties go to background, then to the lower class);
    0 = background, class index + 1 for objects. ``shape_hw`` is needed only when there are
    no keys. Returns (H, W) uint8.
    """
    maps = np.asarray(maps)
    if len(keys) == 0:
        if shape_hw is None:
            shape_hw = maps.shape[-2:]
        return np.zeros(shape_hw, np.uint8)
    bg = np.full((1,) + maps.shape[1:], bg_score, dtype=maps.dtype)
    position = np.argmax(np.concatenate([bg, maps], axis=0), axis=0)
    lookup = np.concatenate([[0], np.asarray(keys, dtype=np.int64) + 1])
    return lookup[position].astype(np.uint8)


class ThresholdSweep:
    """Confusion matrices of CAM predictions for many background thresholds, in one pass.

    For each threshold t the prediction is :func:`cam_prediction` with ``bg_score=t``.
    ``add`` one image at a time, then read ``result()``.
    """

    def __init__(self, num_classes: int, thresholds: Iterable[float] = SWEEP_THRESHOLDS):
        self.num_classes = num_classes
        self.thresholds = np.asarray(list(thresholds), dtype=np.float64)
        self.confusion = np.zeros((len(self.thresholds), num_classes, num_classes), np.int64)

    def add(self, keys: np.ndarray, maps: np.ndarray, gt: np.ndarray) -> None:
        """Accumulate one image: keys (k,), maps (k, H, W) in [0, 1], gt (H, W) with 255 ignored."""
        k, nc = self.num_classes, len(self.thresholds)
        gt = np.asarray(gt).reshape(-1).astype(np.int64)
        if len(keys):
            maps = np.asarray(maps).reshape(len(keys), -1)
            best = maps.max(0)
            fg = (np.asarray(keys, np.int64) + 1)[maps.argmax(0)]
        else:
            best = np.zeros(gt.shape, np.float32)
            fg = np.zeros(gt.shape, np.int64)
        valid = gt < k  # drops 255 (ignore) and anything outside the class range
        gt, best, fg = gt[valid], best[valid], fg[valid]
        # Background wins ties (it comes first in the argmax), hence strict ">".
        pred = np.where(best[None, :] > self.thresholds.astype(best.dtype)[:, None], fg[None, :], 0)
        index = (np.arange(nc)[:, None] * k + gt[None, :]) * k + pred
        self.confusion += np.bincount(index.reshape(-1), minlength=nc * k * k).reshape(nc, k, k)

    def result(self) -> dict:
        """{"thresholds": (T,), "miou": (T,) percent, "best_threshold": float, "best_miou": percent}."""
        miou = np.array([mean_iou(c) for c in self.confusion])
        best = int(np.nanargmax(miou)) if np.isfinite(miou).any() else 0
        return {
            "thresholds": self.thresholds.copy(),
            "miou": miou,
            "best_threshold": float(self.thresholds[best]),
            "best_miou": float(miou[best]),
        }


def best_threshold(
    samples: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    thresholds: Iterable[float] = SWEEP_THRESHOLDS,
) -> dict:
    """Sweep the CAM background threshold over (keys, maps, gt) samples; see :class:`ThresholdSweep`.

    Returns {"thresholds", "miou", "best_threshold", "best_miou"}; the first best wins ties.
    """
    sweep = ThresholdSweep(num_classes, thresholds)
    for keys, maps, gt in samples:
        sweep.add(keys, maps, gt)
    return sweep.result()
