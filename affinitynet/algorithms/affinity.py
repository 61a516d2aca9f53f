"""Semantic affinities between nearby grid cells (Ahn & Kwak, CVPR 2018, Sec. 3.2-3.3).

All pair arrays here are laid out as ``(..., n_offsets, n_from)``: the offset order of
``pairs.pair_offsets`` and the from-cells of ``pairs.pair_indices`` (row-major inside the from
block). Computing them with shifted views of the grid gives exactly the original's
index_select layout without building index tensors.
"""

from __future__ import annotations

import numpy as np
import torch

from affinitynet.algorithms.pairs import from_region, pair_indices, pair_offsets
from affinitynet.conventions import IGNORE_INDEX



def _pair_views(grid: torch.Tensor, radius: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Views of ``grid`` (..., h, w): the from block and, for each offset, the to block."""
    rows, cols = from_region(grid.shape[-2], grid.shape[-1], radius)
    x0 = radius - 1
    src = grid[..., :rows, x0:x0 + cols]
    dst = [grid[..., dy:dy + rows, x0 + dx:x0 + dx + cols] for dy, dx in pair_offsets(radius)]
    return src, dst


def affinity_labels(label: np.ndarray | torch.Tensor, radius: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity labels of every pair from a stride-8 label map (paper Eq. 2-3).

    ``label`` (..., h, w) integer, 0 = background, other values = objects (only equality
    matters), 255 = ignore. Returns float32 tensors ``bg_pos``, ``fg_pos``, ``neg``, each
    (..., n_offsets, n_from) with 0/1 entries: both cells background; both the same object;
    different labels. Pairs touching 255 are in no set.
    """
    label = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label)
    label = label.long()
    src, dst = _pair_views(label, radius)
    src = src.flatten(-2).unsqueeze(-2)                      # (..., 1, n_from)
    dst = torch.stack([d.flatten(-2) for d in dst], dim=-2)  # (..., n_offsets, n_from)
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    same = src == dst
    bg_pos = same & (src == 0)
    fg_pos = same & (src != 0) & valid
    neg = ~same & valid
    return bg_pos.float(), fg_pos.float(), neg.float()


def affinity_from_features(features: torch.Tensor, radius: int) -> torch.Tensor:
    """Affinity of every pair from affinity features (paper Eq. 1).

    ``features`` (B, C, h, w) -> (B, n_offsets, n_from) in (0, 1]:
    exp(-mean over channels of |f_from - f_to|) (the original uses the L1 mean, not the norm).
    """
    src, dst = _pair_views(features, radius)
    aff = [torch.exp(-torch.mean(torch.abs(d - src), dim=1)).flatten(1) for d in dst]
    return torch.stack(aff, dim=1)


def dense_affinity(aff: torch.Tensor, height: int, width: int, radius: int) -> torch.Tensor:
    """The symmetric (hw, hw) affinity matrix of a grid (for the dense random walk).

    ``aff`` (n_offsets, n_from) (a leading batch of 1 is accepted) is placed at (from, to) and
    (to, from); the diagonal is 1 and cells farther apart than the radius get 0.
    """
    if aff.dim() == 3:
        if aff.shape[0] != 1:
            raise ValueError(f"dense_affinity takes one image, got a batch of {aff.shape[0]}")
        aff = aff[0]
    ind_from, ind_to = pair_indices(height, width, radius)
    n_offsets = len(pair_offsets(radius))
    if aff.shape != (n_offsets, ind_from.size):
        raise ValueError(f"affinity shape {tuple(aff.shape)} does not match a {height}x{width} "
                         f"grid at radius {radius} ({n_offsets}, {ind_from.size})")
    n = height * width
    rows = torch.from_numpy(np.tile(ind_from, n_offsets)).to(aff.device)
    cols = torch.from_numpy(ind_to).to(aff.device)
    values = aff.reshape(-1)
    dense = torch.zeros(n, n, dtype=aff.dtype, device=aff.device)
    dense[rows, cols] = values
    dense[cols, rows] = values
    dense.fill_diagonal_(1.0)
    return dense


def affinity_loss(aff: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
                  neg: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, float]]:
    """AffinityNet's class-balanced cross-entropy (paper Eq. 4-7, as the original weighs it).

    ``aff`` (B, n_offsets, n_from) in (0, 1]; labels of the same shape (or broadcastable), 0/1.
    Each of the three sets is averaged over its own pair count, then
    loss = bg/4 + fg/4 + neg/2 (the positive term split evenly between background and objects).
    Returns the loss and a dict of floats: ``bg``, ``fg``, ``neg`` (the three terms) and
    ``bg_count``, ``fg_count``, ``neg_count``.
    """
    bg_count = bg_pos.sum()
    fg_count = fg_pos.sum()
    neg_count = neg.sum()
    bg = torch.sum(-bg_pos * torch.log(aff + eps)) / (bg_count + eps)
    fg = torch.sum(-fg_pos * torch.log(aff + eps)) / (fg_count + eps)
    neg_term = torch.sum(-neg * torch.log(1.0 + eps - aff)) / (neg_count + eps)
    loss = bg / 4 + fg / 4 + neg_term / 2
    parts = {"bg": float(bg.detach()), "fg": float(fg.detach()), "neg": float(neg_term.detach()),
             "bg_count": float(bg_count), "fg_count": float(fg_count),
             "neg_count": float(neg_count)}
    return loss, parts
