"""The PASCAL VOC colour palette used for every label PNG (ground truth, CAM and pseudo labels).

Index i gets the colour of VOC's ``bitget`` colormap: the bits of i are dealt round-robin to the
R, G, B channels from the most significant bit down. Index 0 (background) is black and 255
(ignore) is (224, 224, 192), as in the VOC devkit.
"""

from __future__ import annotations

import numpy as np


def voc_colormap(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 RGB colours of indices 0..n-1 (VOC devkit's ``labelcolormap``)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP: np.ndarray = voc_colormap(256)
VOC_COLORMAP.setflags(write=False)

# Flat [r0, g0, b0, r1, ...] list, the form ``PIL.Image.putpalette`` takes.
VOC_PALETTE: list[int] = VOC_COLORMAP.reshape(-1).tolist()


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) uint8 label map -> (H, W, 3) uint8 RGB picture in the VOC palette."""
    return VOC_COLORMAP[np.asarray(label, dtype=np.uint8)]
