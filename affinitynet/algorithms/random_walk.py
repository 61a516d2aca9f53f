"""Random walk with semantic affinities: CAMs -> pseudo labels (Ahn & Kwak, CVPR 2018, Sec. 3.4).

The transition matrix of the paper is T = D^-1 A^beta with A the (hw, hw) affinity matrix; the
original code divides A^beta by its *column* sums and multiplies row vectors on the left,
scores <- scores @ T^(2^logt), i.e. each step every target cell j receives
sum_i s_i A_ij^beta / sum_k A_kj^beta (A symmetric, so column sums = degrees).

``random_walk_dense`` builds that n x n matrix and squares it logt times, as the original does
(O(n^3) time, O(n^2) memory; kept for checking). ``random_walk`` runs the same 2^logt steps on
the radius-5 stencil without forming the matrix: A has at most 1 + 2 * 34 non-zeros per row, so
each step is a sparse (CSR) product costing O(69 n K) for K score channels.

IRN (Ahn, Cho & Kwak, CVPR 2019) walks the same way (column-normalised A^beta, s @ T^(2^t)) on
the stride-4 grid, with affinities from a boundary map for every pair inside the grid rather
than from AffinityNet on PSA's "from" block. Both reach the one sparse transition,
``grid_transition`` (per-offset weights on the full grid plus the list of offsets), and the one
walk, ``random_walk_steps``; ``grid_affinity_dense`` is the matching dense matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.algorithms.affinity import dense_affinity
from affinitynet.algorithms.cam import background_score
from affinitynet.algorithms.pairs import from_region, pair_offsets
from affinitynet.conventions import STRIDE


def random_walk_dense(cams: torch.Tensor, aff_dense: torch.Tensor, beta: float,
                      logt: int) -> torch.Tensor:
    """The original dense random walk (reference only: O(n^2) memory, O(n^3 logt) time).

    ``cams`` (K, n) scores on the flattened grid, ``aff_dense`` (n, n) symmetric affinities in
    [0, 1] with unit diagonal -> (K, n): cams @ T^(2^logt), T = A^beta / column sums.
    """
    trans = aff_dense ** beta
    trans = trans / trans.sum(dim=0, keepdim=True)
    for _ in range(logt):
        trans = trans @ trans
    return cams.to(trans.dtype) @ trans


def _full_grid_affinity(aff: torch.Tensor, height: int, width: int, radius: int) -> torch.Tensor:
    """(n_offsets, n_from) -> (n_offsets, h, w): the values at the from-cells, 0 elsewhere."""
    rows, cols = from_region(height, width, radius)
    full = aff.new_zeros(aff.shape[0], height, width)
    full[:, :rows, radius - 1:radius - 1 + cols] = aff.reshape(aff.shape[0], rows, cols)
    return full


def _check_offsets(weights: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    offsets = [(int(dy), int(dx)) for dy, dx in offsets]
    if weights.dim() != 3 or weights.shape[0] != len(offsets):
        raise ValueError(f"weights {tuple(weights.shape)} do not match {len(offsets)} offsets "
                         "(expected (n_offsets, h, w))")
    if len(set(offsets)) != len(offsets) or any(dy < 0 or (dy == 0 and dx <= 0) for dy, dx in offsets):
        # each unordered pair must be listed once, by its forward offset
        raise ValueError("offsets must be distinct forward offsets (dy > 0, or dy == 0 and dx > 0)")
    return offsets


def zero_off_grid(weights: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Set weights[k, y, x] = 0 (in place) wherever (y + dy_k, x + dx_k) is off the grid;
    returns ``weights`` (n_offsets, h, w)."""
    height, width = weights.shape[-2:]
    for k, (dy, dx) in enumerate(offsets):
        weights[k, max(height - dy, 0):] = 0
        if dx > 0:
            weights[k, :, max(width - dx, 0):] = 0
        elif dx < 0:
            weights[k, :, :-dx] = 0
    return weights


def grid_transition(weights: torch.Tensor, offsets: Sequence[tuple[int, int]], beta: float) -> torch.Tensor:
    """Sparse transposed transition T^T = D^-1 A^beta as a CSR (n, n) tensor, rows = targets.

    The one transition of both walks. ``weights`` (n_offsets, h, w): weights[k, y, x] is the
    affinity in [0, 1] of cell (y, x) and its partner (y + dy_k, x + dx_k), 0 where there is no
    such pair (partner off the grid, or a cell the caller has no affinity for); ``offsets`` the
    forward offsets (dy, dx), each unordered pair listed once. A is symmetric with A_jj = 1, and
    row j holds A_ij^beta / d_j for the i in j's stencil, so (T^T @ s^T)^T = s @ T.
    """
    offsets = _check_offsets(weights, offsets)
    height, width = weights.shape[-2:]
    device = weights.device
    # a pair whose partner is off the grid does not exist, whatever the caller put there (this
    # also keeps the columns of every surviving entry in order, below)
    weight = zero_off_grid(weights ** beta, offsets)
    n = height * width
    py = max([dy for dy, _ in offsets], default=0)
    px = max([abs(dx) for _, dx in offsets], default=0)
    weight_pad = F.pad(weight, (px, px, py, py))
    # Row j = (y, x) has one entry per stencil offset (dy, dx): the pair (j, j+o) weighs
    # W_o[j]; the pair (j-o, j) weighs W_o[j-o]. Listing the offsets sorted by (dy, dx), i.e. by
    # the column shift dy*w + dx (|dx| < w for every entry that survives), gives sorted columns
    # without a sort. Entries of weight 0 (off the grid, no pair) are dropped.
    stencil = {(0, 0): weight.new_ones(height, width)}
    for k, (dy, dx) in enumerate(offsets):
        stencil[(dy, dx)] = weight[k]
        stencil[(-dy, -dx)] = weight_pad[k, py - dy:py - dy + height, px - dx:px - dx + width]
    order = sorted(stencil)
    vals = torch.stack([stencil[o] for o in order], dim=-1).reshape(n, len(order))
    vals = vals / vals.sum(dim=1, keepdim=True)        # divide by the degree d_j
    keep = vals > 0
    shift = torch.tensor([dy * width + dx for dy, dx in order], device=device)
    # int32 indices: ~20 % faster products than int64 on CPU; n * 69 stays far below 2^31
    crow = torch.zeros(n + 1, dtype=torch.int32, device=device)
    crow[1:] = torch.cumsum(keep.sum(dim=1, dtype=torch.int32), 0, dtype=torch.int32)
    cols = (torch.arange(n, dtype=torch.int32, device=device)[:, None] + shift.int())[keep]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, vals[keep], size=(n, n),
                                       check_invariants=False)


def grid_affinity_dense(weights: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """The symmetric (n, n) affinity matrix of per-offset grid ``weights`` (as ``grid_transition``
    reads them), ones on the diagonal: the dense reference of the same walk."""
    offsets = _check_offsets(weights, offsets)
    height, width = weights.shape[-2:]
    n = height * width
    grid = torch.arange(n, device=weights.device).reshape(height, width)
    dense = torch.zeros(n, n, dtype=weights.dtype, device=weights.device)
    for k, (dy, dx) in enumerate(offsets):
        # cells whose partner is on the grid: rows 0..h-1-dy, columns max(0,-dx)..w-1-max(0,dx)
        x0, x1 = max(0, -dx), width - max(0, dx)
        if dy >= height or x0 >= x1:
            continue
        src = grid[:height - dy, x0:x1].reshape(-1)
        dst = grid[dy:, x0 + dx:x1 + dx].reshape(-1)
        vals = weights[k, :height - dy, x0:x1].reshape(-1)
        dense[src, dst] = vals
        dense[dst, src] = vals
    dense.fill_diagonal_(1.0)
    return dense


def transition_csr(aff: torch.Tensor, height: int, width: int, beta: float, radius: int) -> torch.Tensor:
    """PSA's transition: ``grid_transition`` of the pair affinities ``aff`` (n_offsets, n_from)
    of an h x w grid (``pairs.pair_offsets`` order, values on the from block, no pair elsewhere).
    """
    offsets = pair_offsets(radius)
    if aff.shape[0] != len(offsets):
        raise ValueError(f"affinity has {aff.shape[0]} offsets, radius {radius} has {len(offsets)}")
    return grid_transition(_full_grid_affinity(aff, height, width, radius), offsets, beta)


def random_walk(cams: torch.Tensor, aff: torch.Tensor, height: int, width: int,
                beta: float, logt: int, radius: int) -> torch.Tensor:
    """Fast random walk on the stride-8 grid, the same result as ``random_walk_dense``.

    ``cams`` (K, h, w) scores (present classes and background), ``aff`` (n_offsets, n_from)
    pair affinities in [0, 1] on the h x w grid (a leading batch of 1 is accepted) -> (K, h, w)
    scores after 2^logt steps (paper: beta 8, logt 8). Runs in the dtype and on the device of
    ``aff`` (pass float64 for checks); never forms the n x n matrix.

    Each step is a short parallel region on the CPU, and 256 of them stall badly when another
    process shares the cores (measured 100x slower on 2 busy cores): callers that walk many
    images run it with one torch thread and parallelise over images instead.
    """
    if aff.dim() == 3:
        aff = aff[0]
    if cams.shape[-2:] != (height, width):
        raise ValueError(f"cams grid {tuple(cams.shape[-2:])} != affinity grid ({height}, {width})")
    trans_t = transition_csr(aff, height, width, beta, radius)
    return random_walk_steps(cams, trans_t, (logt,))[logt]


def random_walk_steps(cams: torch.Tensor, transition: torch.Tensor,
                      logts: Sequence[int]) -> dict[int, torch.Tensor]:
    """The walk itself, for any transition (PSA's ``transition_csr``, IRN's boundary
    affinities through ``grid_transition``): 2^max(logts) sparse steps from ``cams`` (K, h, w),
    keeping the scores after 2^logt steps for each logt -> {logt: (K, h, w)}. Runs in the
    dtype and on the device of ``transition``. The walk is linear, so every channel (e.g.
    several background powers) walks independently of the others."""
    height, width = cams.shape[-2:]
    if transition.shape[0] != height * width:
        raise ValueError(f"cams grid ({height}, {width}) does not match a transition of "
                         f"{transition.shape[0]} cells")
    scores = cams.reshape(cams.shape[0], -1).to(device=transition.device, dtype=transition.dtype)
    scores = scores.T.contiguous()  # (n, K): T^T @ s^T is (s @ T)^T
    kept = {}
    for step in range(1, 2 ** max(logts) + 1):
        scores = transition @ scores
        if step & (step - 1) == 0 and step.bit_length() - 1 in logts:  # step = 2^logt
            kept[step.bit_length() - 1] = scores
    return {logt: kept[logt].T.reshape(cams.shape[0], height, width) for logt in logts}


def cam_grid(maps: torch.Tensor) -> torch.Tensor:
    """(K, H, W) score maps at image size -> (K, h, w) on the stride-8 grid: zero-padded to
    multiples of 8 at the bottom/right, averaged over 8x8 blocks (as the original)."""
    height, width = maps.shape[-2:]
    maps = F.pad(maps, (0, -width % STRIDE, 0, -height % STRIDE))
    return F.avg_pool2d(maps[None], STRIDE, STRIDE)[0]


def label_from_scores(scores: torch.Tensor, keys: torch.Tensor, image_hw: tuple[int, int]) -> np.ndarray:
    """Walked scores (K+1, h, w) of [background, the classes ``keys`` ascending] -> (H, W) uint8
    label: upsampled bilinearly to the padded size, argmax, cropped to the image, looked up."""
    height, width = image_hw
    h, w = scores.shape[-2:]
    up = F.interpolate(scores[None], size=(h * STRIDE, w * STRIDE), mode="bilinear", align_corners=False)[0]
    # argmax over [bg, present keys ascending] picks the same as over all 21 channels: absent
    # channels are exactly 0 and scores are >= 0, so ties resolve to the lower index either way
    pick = up.argmax(dim=0)[:height, :width].cpu()
    lookup = torch.cat([torch.zeros(1, dtype=torch.int64), keys.cpu() + 1])
    return lookup[pick].numpy().astype(np.uint8)


def propagate_cams(cam_keys: np.ndarray | list[int], cam_maps: np.ndarray | torch.Tensor,
                   aff: np.ndarray | torch.Tensor, image_hw: tuple[int, int],
                   alpha: float, beta: float, logt: int, radius: int, method: str = "sparse"
                   ) -> tuple[np.ndarray, torch.Tensor]:
    """CAMs of one image -> random-walk pseudo label (the original infer_aff procedure).

    ``cam_keys`` (K,) class indices of the present classes, ``cam_maps`` (K, H, W) their
    normalised CAMs in [0, 1] at image size, ``aff`` (n_offsets, n_from) (or (1, ...)) on the
    stride-8 grid of the image padded to multiples of 8, ``image_hw`` = (H, W). Computes in
    the dtype and on the device of ``aff`` (``method="dense"`` is the original algorithm).
    Background (1 - max)^alpha joins the class maps; all are zero-padded to multiples of 8,
    averaged over 8x8 blocks, walked (absent classes are all-zero and stay zero, so only the
    K + 1 present channels are walked), upsampled bilinearly to the padded size and argmaxed.
    Returns the label (H, W) uint8 (0 = background, class index + 1) and the walked stride-8
    scores (K + 1, h, w) float32 of [background, the keys in ascending order].
    """
    height, width = image_hw
    aff = torch.as_tensor(aff)
    keys = torch.as_tensor(np.asarray(cam_keys), dtype=torch.int64).reshape(-1)
    maps = torch.as_tensor(cam_maps).to(device=aff.device, dtype=aff.dtype)
    maps = maps.reshape(-1, height, width)
    if maps.shape[0] != keys.numel():
        raise ValueError(f"{keys.numel()} cam keys for {maps.shape[0]} cam maps")
    # ascending keys keep argmax ties resolving to the lower class index, as over 21 channels
    keys, order = torch.sort(keys)
    maps = maps[order.to(maps.device)]
    grid = cam_grid(torch.cat([background_score(maps, alpha)[None], maps], dim=0))  # (K+1, h, w)
    h, w = grid.shape[-2:]
    if method == "sparse":
        scores = random_walk(grid, aff, h, w, beta, logt, radius)
    elif method == "dense":
        dense = dense_affinity(aff, h, w, radius)
        scores = random_walk_dense(grid.reshape(grid.shape[0], -1), dense, beta, logt)
        scores = scores.reshape(-1, h, w)
    else:
        raise ValueError(f"unknown random walk method {method!r} (sparse or dense)")
    return label_from_scores(scores, keys, image_hw), scores.float()


def propagate_cams_settings(cam_keys: np.ndarray, cam_maps: np.ndarray, aff: torch.Tensor, alphas: list[float],
                            beta: float, logts: list[int], radius: int) -> dict[tuple[float, int], np.ndarray]:
    """``propagate_cams`` (sparse) of one image for every background power in ``alphas`` and
    every ``logt``, from one walk: the walk is linear, so each background power is a channel
    of its own, and the scores are kept after 2^logt steps for each logt.

    ``cam_keys`` (K,) ascending, ``cam_maps`` (K, H, W) in [0, 1], ``aff`` as in
    ``propagate_cams``. Returns {(alpha, logt): (H, W) uint8 label}.
    """
    keys = torch.as_tensor(np.asarray(cam_keys), dtype=torch.int64).reshape(-1)
    maps = torch.as_tensor(cam_maps).to(device=aff.device, dtype=aff.dtype)
    backgrounds = torch.stack([background_score(maps, a) for a in alphas])
    grid = cam_grid(torch.cat([backgrounds, maps]))  # (len(alphas) + K, h, w)
    h, w = grid.shape[-2:]
    if aff.dim() == 3:
        aff = aff[0]
    walked = random_walk_steps(grid, transition_csr(aff, h, w, beta, radius), tuple(logts))
    return {(alpha, logt): label_from_scores(torch.cat([s[i:i + 1], s[len(alphas):]]), keys, maps.shape[1:])
            for logt, s in walked.items() for i, alpha in enumerate(alphas)}
