"""Dense CRF refinement of CAMs and the confident-label rule for AffinityNet training.

Paper (Ahn & Kwak, CVPR 2018, Sec. 3.2): the background score is (1 - max_c M_c)^alpha; a small
alpha (4) enlarges the background, a large alpha (32) shrinks it. Both score sets are refined by
a dense CRF; pixels whose low-alpha label is an object are confident foreground, pixels whose
high-alpha label is background are confident background, everything else is ignored (255).
"""

from __future__ import annotations

import numpy as np

from affinitynet.algorithms.cam import background_score
from affinitynet.conventions import IGNORE_INDEX

# Probabilities are clipped to this before -log (pydensecrf's unary_from_softmax default, as PSA).
UNARY_CLIP = 1e-5


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bi_sxy: float = 80,
    bi_srgb: float = 13,
    bi_compat: float = 10,
) -> np.ndarray:
    """Fully connected CRF (Kraehenbuehl & Koltun) over per-pixel scores. The kernel settings
    are those of PSA's crf_inference (Gaussian sxy 3 compat 3, bilateral sxy 80 srgb 13 compat 10).

    Args:
        image: (H, W, 3) uint8 RGB, the bilateral kernel's colour.
        probs: (K, H, W) scores in [0, 1] (need not sum to 1); unary = -log(max(p, 1e-5)).
    Returns:
        (K, H, W) float32 marginals after ``iterations`` mean-field steps.
    """
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = image.shape[:2]
    n_labels = probs.shape[0]
    if probs.shape[1:] != (height, width):
        raise ValueError(f"probs {probs.shape} do not match image {image.shape}")
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs, clip=UNARY_CLIP)))
    crf.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    # pydensecrf needs a writable C-contiguous buffer (np.asarray of a PIL image is read-only).
    rgb = np.array(image, dtype=np.uint8, order="C", copy=True)
    crf.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=rgb, compat=bi_compat)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def crf_with_background(image: np.ndarray, maps: np.ndarray, alpha: float, iterations: int) -> np.ndarray:
    """Dense CRF over [background_score(maps, alpha)] + maps (not renormalised), ``iterations``
    mean-field steps.

    image (H, W, 3) uint8; maps (k, H, W) normalised CAMs of the present classes.
    Returns (k+1, H, W) float32 marginals: background first, then the maps' order.
    """
    maps = np.asarray(maps)
    if maps.shape[0] == 0:
        # No object class: every pixel is background with certainty.
        return np.ones((1,) + tuple(image.shape[:2]), np.float32)
    background = background_score(np.asarray(maps), alpha)[None]
    scores = np.concatenate([background, maps], axis=0)
    return dense_crf(image, scores, iterations)


def canvas(maps: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Place (K, H, W) score maps at the top-left of a zero (K, size, size) canvas.

    Zero scores mark "outside the image", which the confident-label rule turns into 255
    (as PSA's crop container). Maps larger than the canvas are cropped to it.
    """
    ch, cw = (size, size) if isinstance(size, (int, np.integer)) else size
    out = np.zeros((maps.shape[0], ch, cw), dtype=maps.dtype)
    h, w = min(ch, maps.shape[1]), min(cw, maps.shape[2])
    out[:, :h, :w] = maps[:, :h, :w]
    return out


def _block_mean(maps: np.ndarray, stride: int) -> np.ndarray:
    """Average (K, H, W) maps over stride x stride blocks, zero-padding bottom/right first."""
    k, h, w = maps.shape
    ph, pw = -h % stride, -w % stride
    if ph or pw:
        maps = np.pad(maps, ((0, 0), (0, ph), (0, pw)))
    hs, ws = maps.shape[1] // stride, maps.shape[2] // stride
    return maps.reshape(k, hs, stride, ws, stride).mean(axis=(2, 4))


def confident_labels(
    crf_low: np.ndarray,
    crf_high: np.ndarray,
    keys: np.ndarray | None = None,
    stride: int = 1,
    eps: float = 1e-5,
) -> np.ndarray:
    """Confident label map from low- and high-alpha CRF scores (paper Sec. 3.2; PSA train_aff).

    Args:
        crf_low, crf_high: (k+1, H, W) CRF scores, background first, same key order.
        keys: optional (k,) class indices of the object maps. None: labels are positions in the
            key list (1..k); given: position i > 0 becomes class index keys[i-1] + 1.
        stride: average the scores over stride x stride blocks first (8 for the stride-8 grid);
            H and W are zero-padded to multiples of ``stride``.
        eps: pixels where every score of both alphas is below eps (outside the image) are 255.
    Returns:
        (ceil(H/stride), ceil(W/stride)) uint8: 0 = confident background, object label,
        255 = not confident.
    """
    if crf_low.shape != crf_high.shape:
        raise ValueError(f"low-alpha {crf_low.shape} and high-alpha {crf_high.shape} scores differ in shape")
    if stride > 1:
        crf_low, crf_high = _block_mean(crf_low, stride), _block_mean(crf_high, stride)
    no_score = np.maximum(crf_low.max(0), crf_high.max(0)) < eps
    low = np.argmax(crf_low, axis=0)
    high = np.argmax(crf_high, axis=0)
    label = low.copy()
    label[low == 0] = IGNORE_INDEX
    label[high == 0] = 0
    label[no_score] = IGNORE_INDEX
    if keys is not None:
        lookup = np.full(IGNORE_INDEX + 1, IGNORE_INDEX, np.int64)
        lookup[0] = 0
        lookup[1:len(keys) + 1] = np.asarray(keys, np.int64) + 1
        label = lookup[label]
    return label.astype(np.uint8)
