"""Dense CRF refinement of CAMs and the confident-label rule for AffinityNet training.

Paper (Ahn & Kwak, CVPR 2018, Sec. 3.2): the background score is (1 - max_c M_c)^alpha; a small
alpha (4) enlarges the background, a large alpha (32) shrinks it. Both score sets are refined by
a dense CRF; pixels whose low-alpha label is an object are confident foreground, pixels whose
high-alpha label is background are confident background, everything else is ignored (255).

IRN (Ahn, Cho & Kwak, CVPR 2019, Sec. 3.2) refines two thresholded CAM label maps instead, with
a CRF whose unary comes from hard labels; both CRFs share ``crf_marginals`` and differ only in
the unary and the kernels passed in (``PSA_KERNELS``, ``IRN_LABEL_KERNELS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from affinitynet.algorithms.cam import background_score
from affinitynet.conventions import IGNORE_INDEX

# Probabilities are clipped to this before -log (pydensecrf's unary_from_softmax default, as PSA).
UNARY_CLIP = 1e-5


@dataclass(frozen=True)
class CrfKernels:
    """The two pairwise kernels of a dense CRF: Gaussian (sxy, compat) and bilateral (sxy,
    srgb, compat) on the uint8 RGB image, pydensecrf's default kernel type and normalisation."""

    gauss_sxy: float
    gauss_compat: float
    bi_sxy: float
    bi_srgb: float
    bi_compat: float


# PSA's crf_inference (the score CRF of Sec. 3.2)
PSA_KERNELS = CrfKernels(gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10)
# IRN's crf_inference_label (misc/imutils.py), which IRN's cam_to_ir_label runs
IRN_LABEL_KERNELS = CrfKernels(gauss_sxy=3, gauss_compat=3, bi_sxy=50, bi_srgb=5, bi_compat=10)


def crf_marginals(image: np.ndarray, unary: np.ndarray, iterations: int, kernels: CrfKernels) -> np.ndarray:
    """The dense CRF (Kraehenbuehl & Koltun, pydensecrf) both papers run.

    Args:
        image: (H, W, 3) uint8 RGB, the bilateral kernel's colour.
        unary: (K, H*W) energies (-log probabilities), any float dtype.
    Returns:
        (K, H, W) float32 marginals after ``iterations`` mean-field steps.
    """
    import pydensecrf.densecrf as dcrf

    height, width = image.shape[:2]
    n_labels = unary.shape[0]
    if unary.shape[1:] != (height * width,):
        raise ValueError(f"unary {unary.shape} does not match image {image.shape}")
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=kernels.gauss_sxy, compat=kernels.gauss_compat)
    # pydensecrf needs a writable C-contiguous buffer (np.asarray of a PIL image is read-only).
    rgb = np.array(image, dtype=np.uint8, order="C", copy=True)
    crf.addPairwiseBilateral(sxy=kernels.bi_sxy, srgb=kernels.bi_srgb, rgbim=rgb, compat=kernels.bi_compat)
    q = crf.inference(iterations)
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    iterations: int,
    gauss_sxy: float = PSA_KERNELS.gauss_sxy,
    gauss_compat: float = PSA_KERNELS.gauss_compat,
    bi_sxy: float = PSA_KERNELS.bi_sxy,
    bi_srgb: float = PSA_KERNELS.bi_srgb,
    bi_compat: float = PSA_KERNELS.bi_compat,
) -> np.ndarray:
    """Fully connected CRF over per-pixel scores (PSA's crf_inference; its kernels by default).

    Args:
        image: (H, W, 3) uint8 RGB, the bilateral kernel's colour.
        probs: (K, H, W) scores in [0, 1] (need not sum to 1); unary = -log(max(p, 1e-5)).
    Returns:
        (K, H, W) float32 marginals after ``iterations`` mean-field steps.
    """
    from pydensecrf.utils import unary_from_softmax

    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs {probs.shape} do not match image {image.shape}")
    kernels = CrfKernels(gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat)
    return crf_marginals(image, unary_from_softmax(probs, clip=UNARY_CLIP), iterations, kernels)


def label_crf(image: np.ndarray, labels: np.ndarray, n_labels: int, iterations: int, gt_prob: float,
              kernels: CrfKernels) -> np.ndarray:
    """Dense CRF over a hard label map (IRN's crf_inference_label; IRN: gt_prob 0.7, 10 steps,
    ``IRN_LABEL_KERNELS``).

    ``labels`` (H, W) integers in 0..n_labels-1, every value a real label (pydensecrf's
    ``unary_from_labels(zero_unsure=False)``: -log(gt_prob) for a pixel's own label,
    -log((1 - gt_prob) / (n_labels - 1)) for the others). Returns the (H, W) int64 argmax of the
    marginals (ties to the lower label).
    """
    from pydensecrf.utils import unary_from_labels

    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match image {image.shape}")
    if n_labels < 2:
        return np.zeros(labels.shape, np.int64)  # one label: nothing to decide (and no "other" label)
    unary = unary_from_labels(labels.astype(np.int64), n_labels, gt_prob=gt_prob, zero_unsure=False)
    return np.argmax(crf_marginals(image, unary, iterations, kernels), axis=0)


def argmax_with_background(maps: np.ndarray, threshold: float) -> np.ndarray:
    """(K, H, W) scores -> (H, W) int64 positions 0..K: argmax over [a plane of ``threshold``] +
    maps (the plane in the maps' dtype, as IRN pads it; ties go to the lower position, so the
    background wins a tie)."""
    maps = np.asarray(maps)
    plane = np.full((1,) + maps.shape[1:], threshold, dtype=maps.dtype)
    return np.argmax(np.concatenate([plane, maps]), axis=0)


def ir_label(image: np.ndarray, keys: np.ndarray, cams: np.ndarray, fg_threshold: float, bg_threshold: float,
             iterations: int, gt_prob: float, kernels: CrfKernels) -> np.ndarray:
    """IRN's confident inter-pixel-relation label of one image (IRN Sec. 3.2 / cam_to_ir_label;
    IRN: thresholds 0.30 / 0.05, the label CRF with gt_prob 0.7, 10 steps, IRN_LABEL_KERNELS).

    ``image`` (H, W, 3) uint8, ``keys`` (K,) class indices of ``cams`` (K, H, W) in [0, 1].
    The foreground label is the CRF of argmax([fg_threshold] + cams), the background label the
    CRF of argmax([bg_threshold] + cams). Returns (H, W) uint8: the foreground class (index + 1)
    where the foreground CRF finds one, 0 where both CRFs say background, 255 elsewhere.
    """
    fg = ir_label_parts(image, keys, cams, fg_threshold, iterations, gt_prob, kernels)[1]
    bg = ir_label_parts(image, keys, cams, bg_threshold, iterations, gt_prob, kernels)[1]
    return combine_ir_labels(fg, bg)


def ir_label_parts(image: np.ndarray, keys: np.ndarray, cams: np.ndarray, threshold: float, iterations: int,
                   gt_prob: float, kernels: CrfKernels) -> tuple[np.ndarray, np.ndarray]:
    """One threshold of ``ir_label``: (the CAM argmax positions 0..K (H, W) int64, the CRF's
    label map (H, W) int64 with 0 = background and class index + 1)."""
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    cams = np.asarray(cams).reshape(-1, *image.shape[:2])
    if cams.shape[0] != keys.size:
        raise ValueError(f"{keys.size} keys for {cams.shape[0]} CAM maps")
    positions = argmax_with_background(cams, threshold)
    refined = label_crf(image, positions, keys.size + 1, iterations, gt_prob, kernels)
    return positions, np.concatenate([[0], keys + 1])[refined]


def combine_ir_labels(fg_label: np.ndarray, bg_label: np.ndarray) -> np.ndarray:
    """IRN's rule: the foreground label where it is an object, 0 where both labels are
    background, 255 (not confident) elsewhere -> (H, W) uint8."""
    out = np.asarray(fg_label).astype(np.int64)
    fg_background = out == 0
    out[fg_background] = IGNORE_INDEX
    out[fg_background & (np.asarray(bg_label) == 0)] = 0
    return out.astype(np.uint8)


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
