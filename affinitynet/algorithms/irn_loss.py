"""IRN's training losses (Ahn, Cho & Kwak, CVPR 2019: the class boundary loss through the
affinities, and the displacement field losses), as IRN's ``AffinityDisplacementLoss`` and
``train_irn.py`` compute them, as pure tensor functions.

Pairs are IRN's: for a radius R the D directions (dy, dx) of its path index, in its order, and
the source cells rows 0..h-R, columns R-1..w-R of the h x w stride-4 grid (n_src of them),
flattened row-major. The pair affinities ``aff`` (B, D, n_src) come from the boundary map
(1 - its maximum over each pair's path, see ``algorithms/boundary.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from affinitynet.algorithms.boundary import edge_to_affinity
from affinitynet.algorithms.path_index import directions

#: added inside the logarithms of the affinity losses and to the label counts (IRN's constant)
LOSS_EPS = 1e-5


def affinity_losses(aff: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair affinity losses: aff (B, D, n_src) in [0, 1] ->
    (pos_aff_loss = -log(a + 1e-5), neg_aff_loss = -log(1 + 1e-5 - a)), each (B, D, n_src) >= ~0."""
    return -torch.log(aff + LOSS_EPS), -torch.log(1.0 + LOSS_EPS - aff)


def pair_displacement(dp: torch.Tensor, search_dst: np.ndarray | torch.Tensor, radius: int) -> torch.Tensor:
    """Displacement differences of the pairs, D(source) - D(destination).

    dp (B, 2, h, w) displacement field; search_dst (D, 2) the directions (dy, dx) in IRN's order;
    ``radius`` R of the path index (IRN: 10). Returns (B, 2, D, n_src): the source block
    dp[:, :, 0:h-R+1, R-1:w-R+1] minus the same block shifted by each direction, flattened row-major.
    """
    floor = radius - 1
    height, width = dp.shape[2:]
    ch, cw = height - floor, width - 2 * floor
    if ch < 1 or cw < 1:
        raise ValueError(f"a {height}x{width} grid has no source cells for radius {radius}")
    src = dp[:, :, :ch, floor:floor + cw]
    dst = torch.stack([dp[:, :, dy:dy + ch, floor + dx:floor + dx + cw] for dy, dx in np.asarray(search_dst).tolist()],
                      dim=2)
    pair = src[:, :, None] - dst
    return pair.reshape(pair.shape[0], pair.shape[1], pair.shape[2], -1)


def displacement_losses(pair: torch.Tensor, search_dst: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair displacement losses from :func:`pair_displacement`'s (B, 2, D, n_src).

    dp_fg_loss = |pair - (dy, dx)| (a pair in one instance: its displacements must differ by the
    pair's offset; channel 0 against dy, channel 1 against dx); dp_bg_loss = |pair| (background
    pairs: no displacement difference). Each (B, 2, D, n_src) >= 0.
    """
    target = torch.as_tensor(np.asarray(search_dst), device=pair.device).to(pair.dtype).t()[None, :, :, None]
    return (pair - target).abs(), pair.abs()


def pair_losses(edge_logits: torch.Tensor, dp: torch.Tensor,
                radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four per-pair losses of a training batch (IRN ``AffinityDisplacementLoss`` with
    ``return_loss=True``), from the network's training-mode outputs.

    edge_logits (B, 1, h, w) boundary logits, dp (B, 2, h, w) displacements, ``radius`` of the
    pairs (IRN: 10). Returns pos_aff_loss, neg_aff_loss (B, D, n_src) from the affinities of
    sigmoid(edge_logits), and dp_fg_loss, dp_bg_loss (B, 2, D, n_src).
    """
    aff = edge_to_affinity(torch.sigmoid(edge_logits), radius)
    search_dst = directions(radius)
    return (*affinity_losses(aff), *displacement_losses(pair_displacement(dp, search_dst, radius), search_dst))


def irn_loss(pos_aff_loss: torch.Tensor, neg_aff_loss: torch.Tensor, dp_fg_loss: torch.Tensor,
             dp_bg_loss: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
             neg: torch.Tensor) -> dict[str, torch.Tensor]:
    """IRN train_irn.py's reduction of the per-pair losses under the affinity labels.

    Labels bg_pos, fg_pos, neg (B, D, n_src) 0/1 (float). Each term is the label-weighted mean
    (sum / (count + 1e-5)); the positive affinity term averages its background and foreground
    halves; the displacement terms average over both channels (hence 2·count); dp_fg is taken
    on foreground-positive pairs, dp_bg on background-positive ones.
    Returns scalars {"pos_aff", "neg_aff", "dp_fg", "dp_bg", "total"} with
    total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2.
    """
    def mean_under(loss: torch.Tensor, label: torch.Tensor, channels: int = 1) -> torch.Tensor:
        return (loss * label).sum() / (channels * label.sum() + LOSS_EPS)

    bg_pos_aff = mean_under(pos_aff_loss, bg_pos)
    fg_pos_aff = mean_under(pos_aff_loss, fg_pos)
    pos_aff = bg_pos_aff / 2 + fg_pos_aff / 2
    neg_aff = mean_under(neg_aff_loss, neg)
    dp_fg = mean_under(dp_fg_loss, fg_pos[:, None], channels=2)
    dp_bg = mean_under(dp_bg_loss, bg_pos[:, None], channels=2)
    total = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    return {"pos_aff": pos_aff, "neg_aff": neg_aff, "dp_fg": dp_fg, "dp_bg": dp_bg, "total": total}


__all__ = ["LOSS_EPS", "affinity_losses", "pair_displacement", "displacement_losses", "pair_losses", "irn_loss"]
