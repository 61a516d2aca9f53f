"""IRN's class boundaries: pair affinities from a boundary map, the walk they drive, its semantic
pseudo label, and the inter-pixel-relation labels that train the boundary map (Ahn, Cho & Kwak,
CVPR 2019, Sec. 3.3-3.4 and 4; the original ``misc/indexing.py``, ``make_sem_seg_labels`` and
``VOC12AffinityDataset``).

The affinity of two cells of the stride-4 grid is 1 - the largest boundary value on the path
between them (``path_index.direction_path``), so a boundary anywhere between two cells cuts
them apart. Pair arrays are (..., D, n_src) in IRN's direction order (``path_index``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.algorithms.crf import argmax_with_background
from affinitynet.algorithms.path_index import PathIndex, path_groups, source_block
from affinitynet.algorithms.random_walk import (grid_affinity_dense, grid_transition, random_walk_dense,
                                                random_walk_steps, zero_off_grid)
from affinitynet.algorithms.resize import resize_label
from affinitynet.conventions import IGNORE_INDEX

WALK_METHODS = ("sparse", "dense")


def edge_to_affinity(edge: torch.Tensor, radius: int) -> torch.Tensor:
    """Pair affinities of the source block from a boundary map (IRN's ``edge_to_affinity``).

    ``edge`` (B, h, w) or (B, 1, h, w) boundary probabilities in [0, 1] -> (B, D, n_src):
    for direction i and source s, 1 - max of ``edge`` over direction i's path placed at s
    (source, destination and the cells between). Exact (a max and one subtraction), and
    differentiable: the gradient reaches the path's largest cell, as the original's max-pool.
    Reads shifted views of the grid instead of gathering the large path-index tensor.
    """
    if edge.dim() == 4:
        edge = edge.flatten(1, 2) if edge.shape[1] == 1 else edge
    if edge.dim() != 3:
        raise ValueError(f"edge must be (B, h, w) or (B, 1, h, w), got {tuple(edge.shape)}")
    rows, cols = source_block(edge.shape[-2], edge.shape[-1], radius)
    x0 = radius - 1
    out = []
    for group in path_groups(radius):
        for path in group:
            on_path = torch.stack([edge[:, y:y + rows, x0 + x:x0 + x + cols] for y, x in path.tolist()])
            out.append(1 - on_path.max(dim=0).values.flatten(1))
    return torch.stack(out, dim=1)


def edge_to_affinity_indexed(edge: torch.Tensor, index: PathIndex) -> torch.Tensor:
    """``edge_to_affinity`` through the path-index tensor (the original's gather), for
    checking: ``edge`` (B, h, w) -> (B, D, n_src)."""
    flat = edge.reshape(edge.shape[0], -1)
    out = []
    for ind in index.path_indices:
        gathered = flat[:, torch.from_numpy(ind.reshape(-1)).to(edge.device)].reshape(edge.shape[0], *ind.shape)
        out.append(1 - gathered.max(dim=2).values)
    return torch.cat(out, dim=1)


def grid_boundary_affinity(edge: torch.Tensor, radius: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Boundary affinities of every pair inside the grid, for the walk (IRN's ``propagate_to_edge``).

    ``edge`` (h, w) (or (1, h, w)) in [0, 1] -> (weights (D, h, w), offsets): weights[i, y, x] is
    1 - max of ``edge`` over direction i's path placed at (y, x) when the partner
    (y + dy_i, x + dx_i) is on the grid, else 0; ``offsets`` the D directions in IRN's order.
    (The original pads the map with 1.0 and crops its matrix back to the grid; a path between two
    cells of the grid stays in the box they span, so that is exactly this.)
    """
    if edge.dim() == 3 and edge.shape[0] == 1:
        edge = edge[0]
    if edge.dim() != 2:
        raise ValueError(f"edge must be (h, w) or (1, h, w), got {tuple(edge.shape)}")
    height, width = edge.shape
    r = radius - 1
    # padded so that the source block of the padded grid is exactly the grid
    padded = F.pad(edge[None, None], (r, r, 0, r), value=1.0)[0]
    weights = edge_to_affinity(padded, radius)[0].reshape(-1, height, width)
    offsets = [(int(dy), int(dx)) for group in path_groups(radius) for dy, dx in group[:, 0]]
    # the 1.0 padding already gives 0 there; explicit, so values above 1 cannot leak pairs
    return zero_off_grid(weights, offsets), offsets


def boundary_walk(maps: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: int, radius: int,
                  method: str = "sparse") -> torch.Tensor:
    """IRN's walk of score maps on the boundary affinities (``propagate_to_edge``; IRN: beta 10,
    exp_times 8, radius 5).

    ``maps`` (C, h, w) scores, ``edge`` (h, w) or (1, h, w) boundary map in [0, 1] -> (C, h, w):
    x = maps * (1 - edge), then x @ T^(2^exp_times) with T = A^beta column-normalised.
    Computes in the dtype and on the device of ``edge``; ``method="dense"`` forms the n x n
    matrix and squares it, as the original (for checking).
    """
    if method == "sparse":
        return boundary_walks(maps, edge, beta, (exp_times,), radius)[exp_times]
    if method != "dense":
        raise ValueError(f"unknown random walk method {method!r} (one of {', '.join(WALK_METHODS)})")
    x, edge = _walk_start(maps, edge)
    if x.shape[0] == 0:
        return x
    weights, offsets = grid_boundary_affinity(edge, radius)
    walked = random_walk_dense(x.reshape(x.shape[0], -1), grid_affinity_dense(weights, offsets), beta, exp_times)
    return walked.reshape(x.shape)


def boundary_walks(maps: torch.Tensor, edge: torch.Tensor, beta: float, exp_times: Sequence[int],
                   radius: int) -> dict[int, torch.Tensor]:
    """``boundary_walk`` (sparse) after 2^e steps for every e of ``exp_times``, from one walk:
    {e: (C, h, w)} (what ``tune`` compares)."""
    x, edge = _walk_start(maps, edge)
    if x.shape[0] == 0:
        return {e: x for e in exp_times}
    weights, offsets = grid_boundary_affinity(edge, radius)
    return random_walk_steps(x, grid_transition(weights, offsets, beta), tuple(exp_times))


def _walk_start(maps: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps * (1 - edge) in edge's dtype and device, edge as (h, w))."""
    edge = edge.reshape(edge.shape[-2:])
    if maps.shape[-2:] != edge.shape:
        raise ValueError(f"maps grid {tuple(maps.shape[-2:])} != boundary grid {tuple(edge.shape)}")
    return maps.to(device=edge.device, dtype=edge.dtype) * (1 - edge), edge


def upsample_walk(rw: torch.Tensor, image_hw: tuple[int, int], stride: int) -> torch.Tensor:
    """Walked scores (C, h, w) on the stride grid -> (C, H, W): bilinear x ``stride``
    (align_corners=False), cropped to the image, divided by the maximum over all maps and pixels
    (IRN's ``rw_up``; left as is when that maximum is 0, where the original would divide by 0)."""
    height, width = image_hw
    up = F.interpolate(rw[:, None], scale_factor=stride, mode="bilinear", align_corners=False)
    up = up[:, 0, :height, :width]
    top = up.max() if up.numel() else up.new_zeros(())
    return up / top if top > 0 else up


def semantic_label(rw_up: torch.Tensor | np.ndarray, keys: np.ndarray, bg_threshold: float) -> np.ndarray:
    """(K, H, W) normalised walk scores of the classes ``keys`` (class indices) -> (H, W) uint8
    label: argmax over [a plane of ``bg_threshold``] + rw_up (IRN: sem_seg_bg_thres 0.25),
    position 0 -> 0 and position k -> keys[k-1] + 1."""
    scores = rw_up.detach().cpu().numpy() if isinstance(rw_up, torch.Tensor) else np.asarray(rw_up)
    lookup = np.concatenate([[0], np.asarray(keys, np.int64).reshape(-1) + 1])
    return lookup[argmax_with_background(scores, bg_threshold)].astype(np.uint8)


def semantic_pseudo_label(cams: torch.Tensor, keys: np.ndarray, edge: torch.Tensor, image_hw: tuple[int, int],
                          beta: float, exp_times: int, bg_threshold: float, radius: int, stride: int,
                          method: str = "sparse") -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """IRN's semantic pseudo label of one image (``make_sem_seg_labels``).

    ``cams`` (K, h, w) stride-grid CAMs of the classes ``keys`` (class indices), each scaled to
    [0, 1]; ``edge`` (h, w) or (1, h, w) boundary map; ``image_hw`` (H, W); IRN: beta 10,
    exp_times 8, bg_threshold 0.25, radius 5, stride 4. Computes in ``edge``'s dtype and device.
    Returns (label (H, W) uint8 with 0 = background and class index + 1, rw (K, h, w),
    rw_up (K, H, W)).
    """
    rw = boundary_walk(cams, edge, beta, exp_times, radius, method)
    rw_up = upsample_walk(rw, image_hw, stride)
    return semantic_label(rw_up, keys, bg_threshold), rw, rw_up


def pair_labels(label: np.ndarray | torch.Tensor, radius: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRN's inter-pixel relation labels of every pair of a label map (``GetAffinityLabelFromIndices``).

    ``label`` (h, w) integers, 0 = background, other values = classes (only equality matters),
    255 = not confident. Returns float32 ``bg_pos``, ``fg_pos``, ``neg``, each (D, n_src) with
    0/1 entries (IRN's direction order): both cells background; both the same class; different
    labels; pairs touching 255 are in none. IRN counts any value >= 21 as invalid (VOC's 20
    classes); here only 255 is, so any class count works, and for VOC labels the sets are the same.
    """
    label = label.long() if isinstance(label, torch.Tensor) else torch.from_numpy(np.array(label, dtype=np.int64))
    height, width = label.shape
    rows, cols = source_block(height, width, radius)
    x0 = radius - 1
    src = label[:rows, x0:x0 + cols].reshape(1, -1)
    dst = torch.stack([label[dy:dy + rows, x0 + dx:x0 + dx + cols].reshape(-1)
                       for group in path_groups(radius) for dy, dx in group[:, 0].tolist()])
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    same = (src == dst) & valid
    return (same & (src == 0)).float(), (same & (src != 0)).float(), (~same & valid).float()


def reduce_label(label: np.ndarray, stride: int) -> np.ndarray:
    """(H, W) uint8 label map -> (round(H/stride), round(W/stride)) by Pillow's nearest resize
    (IRN's ``pil_rescale(label, 1/stride, order=0)``; for sides divisible by 4 and stride 4 it
    takes rows and columns 4i + 2)."""
    height, width = label.shape
    return resize_label(np.ascontiguousarray(label, dtype=np.uint8), (round(height / stride), round(width / stride)))


def ir_pair_labels(label: np.ndarray, radius: int, stride: int
                   ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor]:
    """IRN's training labels of one cropped IR label map (``VOC12AffinityDataset``; IRN:
    radius 10, stride 4): (reduced label (h, w) uint8, bg_pos, fg_pos, neg (D, n_src) float32)."""
    reduced = reduce_label(label, stride)
    return (reduced, *pair_labels(reduced, radius))


def canvas_crop(array: np.ndarray, box: tuple[int, ...] | np.ndarray, size: int, fill: float) -> np.ndarray:
    """Crop (H, W[, C]) ``array`` into a ``size`` x ``size`` canvas of ``fill`` (IRN's
    ``random_crop`` / ``top_left_crop``): canvas[ct:cb, cl:cr] = array[it:ib, il:ir] for
    ``box`` = (ct, cb, cl, cr, it, ib, il, ir), the layout of ``get_random_crop_box``."""
    ct, cb, cl, cr, it, ib, il, ir = (int(v) for v in box)
    out = np.full((size, size) + array.shape[2:], fill, dtype=array.dtype)
    out[ct:cb, cl:cr] = array[it:ib, il:ir]
    return out


def top_left_box(image_hw: tuple[int, int], size: int) -> tuple[int, ...]:
    """The ``canvas_crop`` box of IRN's deterministic top-left crop."""
    ch, cw = min(size, image_hw[0]), min(size, image_hw[1])
    return (0, ch, 0, cw, 0, ch, 0, cw)
