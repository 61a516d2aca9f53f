"""IRN's pixel pairs within a radius and the straight paths between them (Ahn, Cho & Kwak,
CVPR 2019, Sec. 3.3 / the original ``misc/indexing.py``).

IRN derives the affinity of two cells of the stride-4 grid from the boundary map along the line
between them, so every pair direction (dy, dx) comes with its *path*: the grid points near the
segment from (0, 0) to (dy, dx). The directions are PSA's forward offsets (``pairs.pair_offsets``)
regrouped by path length; this grouped order ("IRN's direction order", D directions) is the
layout of every pair array of IRN: (..., D, n_src), with the source cells row-major over the
block rows 0..h-radius, columns radius-1..w-radius (the block whose every partner lies in the
grid, as PSA's "from" block).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from affinitynet.algorithms.pairs import pair_offsets


def direction_path(dy: int, dx: int) -> np.ndarray:
    """(L, 2) int64 path of direction (dy, dx): the integer points of the box spanned by (0, 0)
    and (dy, dx) closer than 1 to the line through both ((dy*x - dx*y)^2 < dy^2 + dx^2),
    ordered by decreasing |y| + |x| (stable over the box's row-major order): the first point is
    (dy, dx) itself, the last (0, 0)."""
    length_sq = dy * dy + dx * dx
    points = [(y, x)
              for y in range(min(0, dy), max(0, dy) + 1)
              for x in range(min(0, dx), max(0, dx) + 1)
              if (dy * x - dx * y) ** 2 < length_sq]
    points.sort(key=lambda p: -(abs(p[0]) + abs(p[1])))  # list.sort is stable, as IRN's
    return np.asarray(points, dtype=np.int64).reshape(-1, 2)


def path_groups(radius: int) -> list[np.ndarray]:
    """The paths of every direction within ``radius`` grouped by length: one (n_g, L_g, 2) int64
    array per length, lengths ascending, directions inside a group in ``pair_offsets`` order.
    (Radius 5: 9 groups, 34 directions; radius 10: 20 groups, 152 directions.)"""
    by_length: dict[int, list[np.ndarray]] = {}
    for dy, dx in pair_offsets(radius):
        path = direction_path(dy, dx)
        by_length.setdefault(len(path), []).append(path)
    return [np.stack(by_length[n]) for n in sorted(by_length)]


def directions(radius: int) -> np.ndarray:
    """(D, 2) int64 directions (dy, dx) in IRN's order (the original's ``search_dst``)."""
    return np.concatenate([g[:, 0] for g in path_groups(radius)])


def source_block(height: int, width: int, radius: int) -> tuple[int, int]:
    """(rows, cols) of the source block (top-left (0, radius-1)) on an h x w grid; ValueError
    when the grid holds no source cell."""
    rows, cols = height - radius + 1, width - 2 * (radius - 1)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid {height}x{width} is too small for radius-{radius} paths: need height "
                         f">= {radius} and width >= {2 * radius - 1} cells")
    return rows, cols


@dataclass(frozen=True)
class PathIndex:
    """IRN's pairs of an h x w grid at one radius (the original ``PathIndex``).

    ``paths``: per length group (n_g, L_g, 2) path points; ``directions``: (D, 2), each path's
    first point; ``src_indices`` (n_src,) grid indices (y*w + x) of the source cells;
    ``dst_indices`` (D, n_src) their partners; ``path_indices`` (computed on first use, as it is
    large: D * L * n_src entries): per group (n_g, L_g, n_src) the grid index of each path point
    placed at each source. All int64.
    """

    radius: int
    height: int
    width: int
    paths: list[np.ndarray] = field(repr=False)

    @property
    def directions(self) -> np.ndarray:
        return np.concatenate([g[:, 0] for g in self.paths])

    @property
    def block(self) -> tuple[int, int]:
        """(rows, cols) of the source block."""
        return source_block(self.height, self.width, self.radius)

    def _shifted(self, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
        """Grid indices of the source block moved by each (dy, dx): (*dy.shape, n_src)."""
        rows, cols = self.block
        y = np.arange(rows)[:, None] + dy[..., None, None]
        x = np.arange(cols)[None, :] + (self.radius - 1) + dx[..., None, None]
        return (y * self.width + x).reshape(*dy.shape, rows * cols).astype(np.int64)

    @property
    def src_indices(self) -> np.ndarray:
        return self._shifted(np.zeros((), np.int64), np.zeros((), np.int64))

    @property
    def dst_indices(self) -> np.ndarray:
        d = self.directions
        return self._shifted(d[:, 0], d[:, 1])

    @cached_property
    def path_indices(self) -> list[np.ndarray]:
        return [self._shifted(g[..., 0], g[..., 1]) for g in self.paths]


def path_index(radius: int, height: int, width: int) -> PathIndex:
    """The ``PathIndex`` of an h x w grid (IRN: radius 10 on the training crop / 4 for the
    affinity loss, radius 5 for the random walk)."""
    source_block(height, width, radius)
    return PathIndex(radius, height, width, path_groups(radius))
