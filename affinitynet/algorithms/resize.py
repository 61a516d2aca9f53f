"""Resizing images, score maps and label maps between an image's native size and the size a
stage works at (``dataset.long_side``, the "working size") or a CAM scale. Sizes are
(round(W*s), round(H*s)) with Python's round, as PSA's multi-scale inference."""

from __future__ import annotations

from functools import cached_property

import numpy as np
from PIL import Image


def scaled_size(image_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of an image of ``image_hw`` resized by ``scale``, each side at least 1 px."""
    height, width = image_hw
    return max(1, round(height * scale)), max(1, round(width * scale))


def working_scale(long_side: int, image_hw: tuple[int, int]) -> float:
    """Factor from an image's native size to the working size: ``long_side`` / its long side,
    or 1 for ``long_side`` 0 (native sizes, the paper)."""
    return long_side / max(image_hw) if long_side else 1.0


def working_image(image: np.ndarray, long_side: int) -> np.ndarray:
    """An (H, W, 3) uint8 image at the working size (``working_scale``); itself when native."""
    factor = working_scale(long_side, image.shape[:2])
    return resize_image(image, factor) if factor != 1 else image


class WorkImage:
    """One image at its native size and at the working size ``long_side``: what every per-image
    step of a stage works on. The working-size image is made once, when first asked for."""

    def __init__(self, native: np.ndarray, long_side: int) -> None:
        self.native, self.long_side = native, long_side
        self.factor = working_scale(long_side, native.shape[:2])

    @property
    def native_size(self) -> tuple[int, int]:
        return self.native.shape[0], self.native.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) at the working size."""
        return scaled_size(self.native_size, self.factor)

    @cached_property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 at the working size (the native image itself when they agree)."""
        return resize_image(self.native, self.factor) if self.factor != 1 else self.native

    def maps(self, maps: np.ndarray) -> np.ndarray:
        """(K, H, W) score maps of the native image at the working size."""
        return resize_maps(maps, self.size)

    def label_to_native(self, label: np.ndarray) -> np.ndarray:
        """A label map made at the working size, back at the native size."""
        return resize_label(label, self.native_size)

    def masks_to_native(self, masks: np.ndarray) -> np.ndarray:
        """(N, h, w) bool masks made at the working size -> (N, H, W) bool at the native size."""
        native = [resize_label(m.astype(np.uint8), self.native_size) for m in masks]
        return np.stack(native).astype(bool) if native else np.zeros((0, *self.native_size), bool)


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """An (H, W, 3) uint8 RGB image resized by ``scale`` with Pillow bicubic (PSA's filter)."""
    height, width = scaled_size(image.shape[:2], scale)
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), resample=Image.BICUBIC))


def resize_maps(maps: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(K, H, W) float score maps resized bilinearly to ``size_hw`` (Pillow, no torch: the CRF
    calls this in forked worker processes, where torch's thread pool must not be touched)."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[1:] == tuple(size_hw):
        return maps
    height, width = size_hw
    return np.stack([np.asarray(Image.fromarray(m, mode="F").resize((width, height), resample=Image.BILINEAR))
                     for m in maps]) if len(maps) else np.zeros((0, height, width), np.float32)


def resize_label(label: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """An (H, W) uint8 label map resized to ``size_hw`` by nearest neighbour (labels stay labels)."""
    if label.shape == tuple(size_hw):
        return label
    height, width = size_hw
    return np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize((width, height), resample=Image.NEAREST))
