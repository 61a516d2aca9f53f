"""IRN's instance pseudo labels: centroids from the displacement field, instance maps, the walk of
every (class, instance) CAM and the detections it gives (Ahn, Cho & Kwak, CVPR 2019, Sec. 3.4
and 4.3; the original ``step/make_ins_seg_labels.py``).

Every cell of the stride-4 grid follows the displacement field to its instance centroid; cells
of weak displacement (near a centroid) form connected clusters, and a cell belongs to the
cluster its centroid lands in. Each class CAM is split by those instance maps, walked on the
boundary affinities like the semantic label (``boundary.boundary_walk``), and every connected
piece of each (class, instance) mask becomes one detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from affinitynet.algorithms.boundary import boundary_walk, upsample_walk
from affinitynet.algorithms.crf import argmax_with_background


def find_centroids(displacement: np.ndarray, iterations: int) -> np.ndarray:
    """Each cell's instance centroid (IRN ``find_centroids_with_refinement``; IRN: 300 steps).

    ``displacement`` (2, h, w) float32 (dy, dx) towards the centroid, in grid cells. Every cell
    starts at its own (y, x) and moves ``iterations`` times by the displacement sampled
    bilinearly at its position (clipped to the grid after each step). Returns (2, h, w) int32
    (y, x), rounded half to even. Float32 throughout, in the original's order of operations, so
    it rounds as the original does.
    """
    disp = np.asarray(displacement, dtype=np.float32)
    height, width = disp.shape[1:]
    y = np.repeat(np.arange(height)[:, None], width, axis=1).astype(np.float32)
    x = np.repeat(np.arange(width)[None, :], height, axis=0).astype(np.float32)
    for _ in range(iterations):
        y_hi, y_lo = np.ceil(y).astype(np.int32), np.floor(y).astype(np.int32)
        x_hi, x_lo = np.ceil(x).astype(np.int32), np.floor(x).astype(np.int32)
        fy, fx = y - y_lo, x - x_lo
        # both moves read the position before either update
        moves = [d[y_hi, x_hi] * fy * fx + d[y_lo, x_hi] * (1 - fy) * fx
                 + d[y_hi, x_lo] * fy * (1 - fx) + d[y_lo, x_lo] * (1 - fy) * (1 - fx) for d in disp]
        y = np.clip(y + moves[0], 0, height - 1)
        x = np.clip(x + moves[1], 0, width - 1)
    return np.stack([np.round(y).astype(np.int32), np.round(x).astype(np.int32)])


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a 2-D boolean ``mask`` -> ((h, w) int64 labels 1..n numbered in
    raster order of first appearance, 0 off the mask; n), the numbering of skimage's
    ``measure.label(connectivity=1)`` that IRN uses."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=ndimage.generate_binary_structure(2, 1))
    labels = labels.astype(np.int64)
    if count > 1:
        # renumber by first appearance explicitly rather than rely on scipy's internal order
        ids, first = np.unique(labels.ravel(), return_index=True)
        ids, first = ids[ids > 0], first[ids > 0]
        lookup = np.zeros(count + 1, np.int64)
        lookup[ids[np.argsort(first)]] = np.arange(1, count + 1)
        labels = lookup[labels]
    return labels, count


def one_hot(values: np.ndarray, count: int | None = None) -> np.ndarray:
    """(...) integer map with values 0..count-1 -> (count, ...) bool (count: max + 1 by default)."""
    values = np.asarray(values)
    count = int(values.max()) + 1 if count is None else count
    return values[None] == np.arange(count).reshape((-1,) + (1,) * values.ndim)


def instance_map(centroids: np.ndarray, displacement: np.ndarray, weak_threshold: float) -> np.ndarray:
    """Instances from centroids (IRN ``cluster_centroids``; IRN: threshold 2.5 cells).

    ``centroids`` (2, h, w) int from ``find_centroids``, ``displacement`` (2, h, w). Cells whose
    displacement is shorter than ``weak_threshold`` form 4-connected clusters (numbered as
    ``label_components``; other cells are 0); each cell takes the cluster number at its centroid
    plus 1, and the distinct values become instances 0..M-1 in ascending order.
    Returns (M, h, w) bool, one instance per cell.
    """
    disp = np.asarray(displacement)
    weak = np.sqrt(disp[1] ** 2 + disp[0] ** 2) < weak_threshold
    clusters, _ = label_components(weak)
    assigned = clusters[centroids[0], centroids[1]] + 1
    _, dense = np.unique(assigned, return_inverse=True)
    return one_hot(dense.reshape(assigned.shape))


@dataclass(frozen=True)
class Detections:
    """Instance detections of one image: ``masks`` (N, H, W) bool, ``classes`` (N,) int64 class
    indices, ``scores`` (N,) float32."""

    masks: np.ndarray
    classes: np.ndarray
    scores: np.ndarray


def instance_shapes(rw_up: np.ndarray | torch.Tensor, bg_threshold: float) -> np.ndarray:
    """(C, H, W) normalised walk scores -> (C, H, W) bool: each pixel to its argmax channel, none
    where [a plane of ``bg_threshold``] wins (IRN: ins_seg_bg_thres 0.25)."""
    scores = rw_up.detach().cpu().numpy() if isinstance(rw_up, torch.Tensor) else np.asarray(rw_up)
    return one_hot(argmax_with_background(scores, bg_threshold), scores.shape[0] + 1)[1:]


def detect_instances(rw_up: np.ndarray | torch.Tensor, shapes: np.ndarray, class_ids: np.ndarray,
                     min_area: float) -> Detections:
    """Detections from instance masks (IRN ``detect_instance``; IRN: min_area = 1 % of H*W).

    ``rw_up`` (C, H, W) scores, ``shapes`` (C, H, W) bool masks, ``class_ids`` (C,) the class
    of each channel. Every 4-connected piece of every non-empty mask, channel by channel and in
    ``label_components`` order, is one detection scored by the maximum of its channel's scores
    over it, or 0 when it has fewer than ``min_area`` pixels (it is still listed).
    """
    scores = rw_up.detach().cpu().numpy() if isinstance(rw_up, torch.Tensor) else np.asarray(rw_up)
    masks, classes, values = [], [], []
    for score, mask, class_id in zip(scores, shapes, np.asarray(class_ids)):
        if not mask.any():
            continue
        pieces, count = label_components(mask)
        for piece in one_hot(pieces, count + 1)[1:]:
            masks.append(piece)
            classes.append(class_id)
            if piece.sum() < min_area:
                values.append(0.0)
                continue
            best = float(score[piece].max())
            # the original takes the max of score * mask over the image, which also sees the
            # zeros off the piece (only matters for negative scores)
            values.append(best if piece.all() else max(best, 0.0))
    height, width = shapes.shape[1:]
    return Detections(masks=np.stack(masks) if masks else np.zeros((0, height, width), bool),
                      classes=np.asarray(classes, np.int64),
                      scores=np.asarray(values, np.float32))


@dataclass(frozen=True)
class InstanceLabels:
    """Everything ``instance_pseudo_labels`` computes for one image (K classes, M instances,
    stride grid h x w, image H x W): ``centroids`` (2, h, w) int32, ``instance_map`` (M, h, w)
    bool, ``instance_cam`` (K, M, h, w), ``rw`` (K*M, h, w), ``rw_up`` (K*M, H, W) (channel
    k*M + m is class k, instance m), ``instance_shape`` (K*M, H, W) bool, ``class_ids`` (K*M,)
    and the ``detections``."""

    centroids: np.ndarray
    instance_map: np.ndarray
    instance_cam: torch.Tensor
    rw: torch.Tensor
    rw_up: torch.Tensor
    instance_shape: np.ndarray
    class_ids: np.ndarray
    detections: Detections


def instance_pseudo_labels(cams: torch.Tensor, keys: np.ndarray, edge: torch.Tensor, displacement: np.ndarray,
                           image_hw: tuple[int, int], *, beta: float, exp_times: int, radius: int, stride: int,
                           bg_threshold: float, centroid_iterations: int, weak_threshold: float,
                           min_area_fraction: float, method: str = "sparse") -> InstanceLabels:
    """IRN's instance pseudo labels of one image (``make_ins_seg_labels``).

    ``cams`` (K, h, w) stride-grid CAMs of the classes ``keys`` (class indices) in [0, 1],
    ``edge`` (h, w) or (1, h, w) boundary map, ``displacement`` (2, h, w) float32 in cells,
    ``image_hw`` (H, W). IRN: beta 10, exp_times 8, radius 5, stride 4, bg_threshold 0.25,
    centroid_iterations 300, weak_threshold 2.5, min_area_fraction 0.01. The walk computes in
    ``edge``'s dtype and device.
    """
    keys = np.asarray(keys, np.int64).reshape(-1)
    centroids = find_centroids(displacement, centroid_iterations)
    instances = instance_map(centroids, displacement, weak_threshold)
    inst = torch.from_numpy(instances).to(device=cams.device, dtype=cams.dtype)
    instance_cam = cams[:, None] * inst[None]
    n_maps = instance_cam.shape[0] * instance_cam.shape[1]
    rw = boundary_walk(instance_cam.reshape(n_maps, *cams.shape[-2:]), edge, beta, exp_times, radius, method)
    rw_up = upsample_walk(rw, image_hw, stride)
    shapes = instance_shapes(rw_up, bg_threshold)
    class_ids = np.repeat(keys, instances.shape[0])
    detections = detect_instances(rw_up, shapes, class_ids, image_hw[0] * image_hw[1] * min_area_fraction)
    return InstanceLabels(centroids, instances, instance_cam, rw, rw_up, shapes, class_ids, detections)
