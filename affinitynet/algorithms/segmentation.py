"""Inference of the segmentation network (stage 5): class probabilities over scales and flips.

The network sees the image at each scale (and its horizontal flip); each output is upsampled
to the image size, turned into probabilities (softmax over background + classes) and the
probabilities are averaged, as DeepLab's multi-scale testing. The label is their argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from affinitynet.algorithms.resize import resize_image


def multiscale_probabilities(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    normalize: Callable[[np.ndarray], np.ndarray | torch.Tensor],
    scales: Sequence[float],
    flip: bool,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Mean class probabilities of an image, or of a batch of images of one size, over ``scales``
    (and their flips; an image and its flip go through the network as one batch).

    Args:
        score_fn: network, float (B, 3, h, w) -> scores (B, K + 1, h', w') at any stride.
        image: (H, W, 3) uint8 RGB, or a batch (N, H, W, 3).
        normalize: uint8 (h, w, 3) -> float32 (3, h, w) (the network's input normalisation).
        scales: image scales; flip: also the horizontally flipped image at each scale.
    Returns:
        (K + 1, H, W) float32 probabilities on ``device`` (each pixel sums to 1), background
        first; (N, K + 1, H, W) for a batch.
    """
    batch = np.asarray(image)[None] if np.ndim(image) == 3 else np.asarray(image)
    n, height, width = batch.shape[:3]
    total: torch.Tensor | None = None
    passes = 0
    with torch.inference_mode():
        for scale in scales:
            x = torch.stack([torch.as_tensor(np.asarray(normalize(resize_image(im, scale)), dtype=np.float32))
                             for im in batch])
            x = torch.cat([x, x.flip(-1)]) if flip else x
            scores = score_fn(x.to(device)).float()
            scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
            probs = scores.softmax(dim=1)
            if flip:
                probs = probs[:n] + probs[n:].flip(-1)
            total = probs if total is None else total + probs
            passes += 2 if flip else 1
    if total is None:
        raise ValueError("no scales given")
    return total[0] / passes if np.ndim(image) == 3 else total / passes


def probabilities_to_label(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """(K + 1, H, W) probabilities -> (H, W) uint8 label map (0 background, c + 1 class c)."""
    probs = torch.as_tensor(probs)
    if probs.shape[0] > 255:
        raise ValueError(f"{probs.shape[0]} labels do not fit a uint8 label map")
    return probs.argmax(dim=0).to(torch.uint8).cpu().numpy()
