"""Pixel pairs within a radius on the stride-8 grid (Ahn & Kwak, CVPR 2018, Sec. 3.1).

AffinityNet predicts an affinity for every pair of grid cells closer than ``radius`` (paper:
gamma = 5). Each unordered pair is listed once, as a "from" cell plus one of the forward
offsets (dy, dx); the original code takes the "from" cells only where every offset stays inside
the grid: rows 0..h-radius and columns radius-1..w-radius. Those cells' neighbours (the "to"
cells) cover the whole grid.
"""

from __future__ import annotations

import numpy as np

from affinitynet.conventions import STRIDE


def pair_offsets(radius: int) -> list[tuple[int, int]]:
    """Forward offsets (dy, dx) with dx² + dy² < radius², in the original order.

    First (0, 1) .. (0, radius-1), then for dy = 1..radius-1 every dx = -(radius-1)..radius-1
    inside the circle. 34 offsets for radius 5.
    """
    if radius < 2:
        raise ValueError(f"pair radius must be >= 2, got {radius}")
    offsets = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                offsets.append((dy, dx))
    return offsets


def min_grid_size(radius: int) -> tuple[int, int]:
    """(rows, cols) of the smallest grid that holds one pair of every offset: radius x
    (2 radius - 1) cells, the "from" block being one cell."""
    return radius, 2 * radius - 1


def min_image_size(radius: int, stride: int = STRIDE) -> tuple[int, int]:
    """(H, W) in px of the smallest image whose grid (padded up to multiples of ``stride``)
    holds one pair of every offset: 33 x 65 px for radius 5 at stride 8. A square crop (a
    multiple of the stride) needs max(H, W) rounded up to the stride: 72 px."""
    rows, cols = min_grid_size(radius)
    return stride * (rows - 1) + 1, stride * (cols - 1) + 1


def from_region(height: int, width: int, radius: int) -> tuple[int, int]:
    """(rows, cols) of the block of "from" cells, whose top-left is (0, radius-1).

    Raises ValueError when the grid is too small to hold one pair of every offset.
    """
    rows = height - radius + 1
    cols = width - 2 * (radius - 1)
    if rows < 1 or cols < 1:
        min_rows, min_cols = min_grid_size(radius)
        min_h, min_w = min_image_size(radius)
        raise ValueError(
            f"grid {height}x{width} is too small for radius-{radius} pairs: need at least {min_rows}x{min_cols} "
            f"cells (an image of at least {min_w}x{min_h} px at stride {STRIDE})")
    return rows, cols


def pair_indices(height: int, width: int, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid indices (row-major, y*width + x) of all pairs.

    Returns ``ind_from`` (int64, n_from) and ``ind_to`` (int64, n_offsets * n_from): for each
    offset in ``pair_offsets`` order, the neighbour of every from-cell, concatenated offset by
    offset.
    """
    rows, cols = from_region(height, width, radius)
    grid = np.arange(height * width, dtype=np.int64).reshape(height, width)
    x0 = radius - 1
    ind_from = grid[:rows, x0:x0 + cols].reshape(-1)
    ind_to = np.concatenate([grid[dy:dy + rows, x0 + dx:x0 + dx + cols].reshape(-1)
                             for dy, dx in pair_offsets(radius)])
    return ind_from, ind_to
