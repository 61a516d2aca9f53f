"""Class activation maps: multi-scale + flip fusion, CAM prediction, background-threshold sweep.

Follows the inference procedure of the paper (Ahn & Kwak, CVPR 2018, Sec. 3.1 / 4.1) as released
in PSA's ``infer_cls.py``: CAMs of the image at several scales and their horizontal flips are
upsampled to the image size, masked by the image label, summed, and each class map is divided by
its maximum so that it lies in [0, 1]. IRN (Ahn, Cho & Kwak, CVPR 2019, ``make_cam.py``) fuses the
same way onto two grids (its stride-4 grid, and the image size cropped from a stride-16 multiple):
one code path, :func:`multiscale_cams`, with the grids as parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.algorithms.metrics import mean_iou
from affinitynet.algorithms.resize import resize_image, scaled_size

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


@dataclass(frozen=True)
class CamGrid:
    """Where :func:`multiscale_cams` puts the fused CAMs: every scale's CAM is upsampled
    bilinearly to ``upsample`` (default: ``size``), cropped to its top-left ``size`` (h, w), and
    then summed. PSA: the image size. IRN: the stride-4 grid (ceil(H/4), ceil(W/4)), and the image
    size cropped out of (16*ceil(H/16), 16*ceil(W/16)) (IRN make_cam.py, ``strided_cam`` and
    ``high_res``)."""

    size: tuple[int, int]
    upsample: tuple[int, int] | None = None


def strided_size(image_hw: tuple[int, int], stride: int) -> tuple[int, int]:
    """(ceil(H/stride), ceil(W/stride)): the grid of a network with that output stride (IRN)."""
    return (image_hw[0] - 1) // stride + 1, (image_hw[1] - 1) // stride + 1


def scale_cams(
    cam_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    scales: Sequence[float],
    flip: bool = True,
    batch_flip: bool = True,
    device: str | torch.device = "cpu",
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The network's CAMs of ``image`` at every scale, before any fusion.

    Each scale is a Pillow bicubic resize to (round(H*s), round(W*s)) (none when that is the
    image's own size, as PSA's and IRN's loaders), normalised. Returns, per scale in order,
    (CAM of the image, CAM of its horizontal flip *as computed*, i.e. still mirrored, or None
    without ``flip``), each (C, h_s, w_s) float32 on ``device``. Arguments as in
    :func:`multiscale_cams`.
    """
    out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    with torch.inference_mode():
        for scale in scales:
            scaled = image if scaled_size(image.shape[:2], scale) == image.shape[:2] else resize_image(image, scale)
            x = torch.as_tensor(np.asarray(normalize(scaled), dtype=np.float32))[None].to(device)
            if not flip:
                out.append((cam_fn(x)[0].float(), None))
            elif batch_flip:
                both = cam_fn(torch.cat([x, x.flip(-1)], dim=0)).float()
                out.append((both[0], both[1]))
            else:
                out.append((cam_fn(x)[0].float(), cam_fn(x.flip(-1))[0].float()))
    return out


def fuse_cams(
    cams: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    label: np.ndarray,
    grid: CamGrid,
    flip_before_upsample: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the CAMs of :func:`scale_cams` on ``grid``, normalised per class.

    Every CAM is upsampled (bilinear, align_corners=False) to ``grid.upsample`` (the flip's then
    flipped back), cropped to ``grid.size``, multiplied by the 0/1 ``label`` (C,), and added.
    ``flip_before_upsample``: undo the flip and add the image's and the flip's CAMs at the
    network's resolution, then upsample the sum (IRN's CAM network does this inside its forward);
    otherwise each is upsampled on its own and flipped back afterwards (PSA). Both orders give
    the same maps up to float rounding.

    Returns keys (k,) int64, the class indices with label 1 ascending, and maps (k, h, w) float32
    in [0, 1]: each class map divided by (its maximum + 1e-5).
    """
    assert len(cams) > 0, "scales must not be empty"
    label_vec = np.asarray(label, dtype=np.float32).reshape(-1)
    label_t = torch.from_numpy(label_vec).to(cams[0][0].device).view(-1, 1, 1)
    size = tuple(grid.size)
    upsample = tuple(grid.upsample) if grid.upsample is not None else size

    def placed(c: torch.Tensor, flip_back: bool = False) -> torch.Tensor:
        up = F.interpolate(c[None], size=upsample, mode="bilinear", align_corners=False)[0]
        if flip_back:  # on the whole upsampled grid, so that the crop keeps the right part
            up = up.flip(-1)
        return up[:, :size[0], :size[1]] * label_t

    total: torch.Tensor | None = None
    with torch.inference_mode():
        for cam, mirrored in cams:
            if mirrored is None:
                parts = [placed(cam)]
            elif flip_before_upsample:
                parts = [placed(cam + mirrored.flip(-1))]
            else:
                parts = [placed(cam), placed(mirrored, flip_back=True)]
            # One map at a time in the original's order (scale, then flip): the float sum depends on it.
            for part in parts:
                total = part.clone() if total is None else total + part
        assert total is not None
        norm = total / (total.amax(dim=(1, 2), keepdim=True) + _NORM_EPS)
        keys = np.flatnonzero(label_vec > 1e-5).astype(np.int64)
        maps = norm[torch.from_numpy(keys).to(norm.device)].cpu().numpy().astype(np.float32)
    return keys, maps


def multiscale_cams(
    cam_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    label: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    scales: Sequence[float],
    grids: Sequence[CamGrid],
    flip: bool = True,
    batch_flip: bool = True,
    device: str | torch.device = "cpu",
    flip_before_upsample: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fused, normalised CAMs of the classes present in ``label``, on one or more grids from a
    single pass of the network per scale.

    Args:
        cam_fn: network CAM function, float tensor (B, 3, h, w) -> (B, C, h', w') non-negative CAMs
            at any output stride; called under ``torch.inference_mode``.
        image: (H, W, 3) uint8 RGB image.
        label: (C,) image label, 1 for present classes, 0 otherwise.
        normalize: uint8 (h, w, 3) -> float32 (3, h, w) array or tensor (the network's input
            normalisation).
        scales: image scales, summed in this order (the float sum depends on it; PSA's and IRN's
            are 1.0, 0.5, 1.5, 2.0).
        grids: the output grids (:class:`CamGrid`), e.g. PSA's ``CamGrid((H, W))``.
        flip: also run the horizontally flipped image at every scale (flipped back before summing).
        batch_flip: run an image and its flip as one batch of 2 (same result, fewer calls).
        device: device of the network behind ``cam_fn``.
        flip_before_upsample: see :func:`fuse_cams` (True for IRN).

    Returns:
        keys: (k,) int64 class indices with label 1, ascending.
        maps: per grid, (k, h, w) float32 CAMs in [0, 1], each divided by (its maximum + 1e-5).
    """
    cams = scale_cams(cam_fn, image, normalize, scales, flip, batch_flip, device)
    keys = np.flatnonzero(np.asarray(label, dtype=np.float32).reshape(-1) > 1e-5).astype(np.int64)
    return keys, [fuse_cams(cams, label, grid, flip_before_upsample)[1] for grid in grids]


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
    """PSA's CAMs (``infer_cls.py``): :func:`multiscale_cams` on the image's own H x W grid.

    Returns keys (k,) int64 (class indices with label 1, ascending) and maps (k, H, W) float32
    in [0, 1], each divided by (its maximum + 1e-5).
    """
    keys, (maps,) = multiscale_cams(cam_fn, image, label, normalize, scales, [CamGrid(image.shape[:2])],
                                    flip, batch_flip, device)
    return keys, maps


def irn_multiscale_cam(
    cam_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    label: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    scales: Sequence[float],
    stride: int,
    cam_stride: int,
    flip: bool = True,
    batch_flip: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IRN's CAMs (Ahn, Cho & Kwak 2019; IRN ``make_cam.py``) from one pass per scale.

    ``stride``: the grid of ``strided_cam`` (IRN: 4, its boundary / displacement grid);
    ``cam_stride``: the CAM network's output stride (IRN: 16); ``high_res`` is upsampled to
    ``cam_stride * ceil(H / cam_stride)`` (likewise W) and cropped to H x W, as IRN does. The image
    and its flip are added at the network's resolution (IRN's CAM network does it in its forward).

    Returns keys (k,) int64, strided_cam (k, ceil(H/stride), ceil(W/stride)) and high_res
    (k, H, W), float32 in [0, 1], each class map divided by (its maximum + 1e-5).
    """
    height_width = tuple(image.shape[:2])
    up_h, up_w = strided_size(height_width, cam_stride)
    grids = [CamGrid(strided_size(height_width, stride)),
             CamGrid(height_width, (up_h * cam_stride, up_w * cam_stride))]
    keys, (strided, high_res) = multiscale_cams(cam_fn, image, label, normalize, scales, grids, flip, batch_flip,
                                                device, flip_before_upsample=True)
    return keys, strided, high_res


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

    For each threshold t the prediction is :func:`cam_prediction` with ``bg_score=t``;
    ``num_labels`` = background + the object classes.
    ``add`` one image at a time, then read ``result()``.
    """

    def __init__(self, num_labels: int, thresholds: Iterable[float] = SWEEP_THRESHOLDS):
        self.num_labels = num_labels
        self.thresholds = np.asarray(list(thresholds), dtype=np.float64)
        self.confusion = np.zeros((len(self.thresholds), num_labels, num_labels), np.int64)

    def add(self, keys: np.ndarray, maps: np.ndarray, gt: np.ndarray) -> None:
        """Accumulate one image: keys (k,), maps (k, H, W) in [0, 1], gt (H, W) with 255 ignored."""
        k, nc = self.num_labels, len(self.thresholds)
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
    num_labels: int,
    thresholds: Iterable[float] = SWEEP_THRESHOLDS,
) -> dict:
    """Sweep the CAM background threshold over (keys, maps, gt) samples; see :class:`ThresholdSweep`.

    Returns {"thresholds", "miou", "best_threshold", "best_miou"}; the first best wins ties.
    """
    sweep = ThresholdSweep(num_labels, thresholds)
    for keys, maps, gt in samples:
        sweep.add(keys, maps, gt)
    return sweep.result()


@dataclass(frozen=True)
class ConformedCams:
    """CAMs of another method brought to this package's form by :func:`conform_cams`."""

    maps: np.ndarray  # (k, H, W) float32 in [0, 1]
    normalised: bool  # they were not in [0, 1]: ReLU, then each map divided by (its maximum + 1e-5)
    upsampled: bool  # they were on the stride grid: upsampled to the image


# how far outside [0, 1] maps may stray and still count as normalised (float16 rounding)
_RANGE_SLACK = 1e-3


def conform_cams(maps: np.ndarray, image_hw: tuple[int, int], stride: int = 0) -> ConformedCams:
    """Check and normalise CAMs made elsewhere (``affinitynet import-cams``).

    ``maps`` (k, H, W) at the image size ``image_hw``, or with ``stride`` > 0 possibly on the
    stride grid (ceil(H/stride), ceil(W/stride)) of IRN's ``cam``: those are upsampled bilinearly
    by ``stride`` and cropped to H x W (as IRN crops ``high_res`` out of its upsampled grid). Maps with values
    outside [0, 1] are normalised as PSA's ``infer_cls.py`` does: ReLU, then each class map
    divided by (its maximum + 1e-5). Raises ValueError (one line) for another shape or size, or
    NaN / infinite values.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise ValueError(f"maps of shape {tuple(maps.shape)}, expected (classes, height, width)")
    if not np.isfinite(maps).all():
        raise ValueError(f"{int((~np.isfinite(maps)).sum())} values are NaN or infinite")
    size, upsampled = tuple(maps.shape[1:]), False
    if size != tuple(image_hw):
        grid = strided_size(image_hw, stride) if stride else None
        if size != grid:
            also = f" or the stride-{stride} grid {grid[0]}x{grid[1]}" if grid else ""
            raise ValueError(f"maps of {size[0]}x{size[1]} px, but the image is {image_hw[0]}x{image_hw[1]}{also}")
        up = F.interpolate(torch.from_numpy(maps)[None], scale_factor=stride, mode="bilinear", align_corners=False)
        maps, upsampled = up[0, :, :image_hw[0], :image_hw[1]].numpy(), True
    normalised = bool(maps.size) and (maps.min() < -_RANGE_SLACK or maps.max() > 1 + _RANGE_SLACK)
    if normalised:
        maps = np.maximum(maps, 0)
        maps = maps / (maps.max(axis=(1, 2), keepdims=True) + _NORM_EPS)
    return ConformedCams(np.clip(maps, 0, 1).astype(np.float32), normalised, upsampled)


def strided_cams(maps: np.ndarray, stride: int) -> np.ndarray:
    """CAMs (k, H, W) in [0, 1] on the stride grid (k, ceil(H/stride), ceil(W/stride)), for
    IRN's ``cam`` entry (``export-labels --cams irn``): the mean over each cell, each class map
    then divided by (its maximum + 1e-5) as IRN normalises its ``strided_cam``."""
    maps = np.asarray(maps, np.float32)
    grid = strided_size(tuple(maps.shape[1:]), stride)
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(maps)[None], grid)[0].numpy()
    return pooled / (pooled.max(axis=(1, 2), keepdims=True, initial=0) + _NORM_EPS)
