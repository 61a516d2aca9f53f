"""Normalisation parity with PSA and the training augmentations (affinitynet.data.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affinitynet.data.transforms import AffinityAugment, ClassificationTransform, normalize
from conftest import golden_cases


@pytest.mark.parametrize("case", golden_cases("normalize_*.npz"))
def test_normalize_matches_psa(case):
    data = np.load(case)
    image = data["image"]
    for kind, key in (("imagenet", "resnet38"), ("caffe_bgr", "vgg16")):
        out = normalize(image, kind)
        assert out.dtype == torch.float32 and out.shape == (3, *image.shape[:2])
        np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), data[key], rtol=0, atol=1e-5)


def test_normalize_formulas_and_errors():
    image = np.zeros((2, 3, 3), np.uint8)
    image[..., 0] = 255
    x = normalize(image, "imagenet")
    assert torch.allclose(x[0], torch.full((2, 3), (1 - 0.485) / 0.229))
    assert torch.allclose(x[2], torch.full((2, 3), -0.406 / 0.225))
    y = normalize(image, "caffe_bgr")  # channel 0 is blue, red lands in channel 2
    assert torch.allclose(y[0], torch.full((2, 3), -104.008))
    assert torch.allclose(y[2], torch.full((2, 3), 255 - 122.675))
    with pytest.raises(ValueError):
        normalize(image, "nope")


def _image(h: int = 60, w: int = 90) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_classification_transform_shape_and_determinism():
    t = ClassificationTransform(crop=64, resize_long=(40, 120), color_jitter=(0.3, 0.3, 0.3, 0.1))
    img = _image()
    a = t(img, generator=torch.Generator().manual_seed(3))
    b = t(img, generator=torch.Generator().manual_seed(3))
    c = t(img, generator=torch.Generator().manual_seed(4))
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_classification_transform_pads_with_zeros_and_keeps_pixels():
    img = _image(30, 50)
    t = ClassificationTransform(crop=64, resize_long=(50, 50), color_jitter=(0, 0, 0, 0))
    ref = normalize(img)
    seen_flip = seen_plain = False
    for seed in range(8):
        out = t(img, generator=torch.Generator().manual_seed(seed))
        nz = (out != 0).any(0).nonzero()
        y0, x0 = nz.min(0).values.tolist()
        patch = out[:, y0:y0 + 30, x0:x0 + 50]
        assert (out != 0).any(0).sum() <= 30 * 50  # zero padding outside the image
        if torch.allclose(patch, ref, atol=1e-5):
            seen_plain = True
        elif torch.allclose(patch, ref.flip(-1), atol=1e-5):
            seen_flip = True
        else:
            raise AssertionError("cropped image is neither the image nor its mirror")
    assert seen_flip and seen_plain


def _two_region_case():
    """A red left half (class 1) and a blue right half (class 2), unsure at the top; as CRF
    scores of both alphas (background first), which the confident-label rule turns back into
    that label map."""
    img = np.zeros((70, 100, 3), np.uint8)
    img[:, :50] = (230, 20, 20)
    img[:, 50:] = (20, 20, 230)
    low = np.zeros((3, 70, 100), np.float32)
    low[1, :, :50] = low[2, :, 50:] = 0.9
    low[0] = 0.05
    high = low.copy()
    low[0, :10] = 1.0  # the top: background for the low alpha, an object for the high one
    return img, low, high


def test_affinity_augment_moves_scores_with_image():
    img, low, high = _two_region_case()
    t = AffinityAugment(crop=96, resize_long=None, flip=True, color_jitter=(0.3, 0.3, 0.3, 0.0))
    flips = set()
    for seed in range(8):
        x, lab8 = t(img, low, high, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 96, 96) and lab8.shape == (12, 12) and lab8.dtype == torch.uint8
        assert set(lab8.unique().tolist()) <= {1, 2, 255}  # no background anywhere in this case
        # the label follows the image: red (channel 0 high) where the cell says 1; a cell on the
        # border (of the halves, or of image and padding) is decided by its block's averaged
        # scores, i.e. by the majority of its image pixels (padding has zero scores)
        black = (x == normalize(np.zeros((1, 1, 3), np.uint8))).all(0)
        red = ((x[0] > x[2]) & ~black).float().reshape(12, 8, 12, 8).sum((1, 3))
        image_pixels = (~black).float().reshape(12, 8, 12, 8).sum((1, 3))
        assert (2 * red[lab8 == 1] > image_pixels[lab8 == 1]).all()
        assert (2 * red[lab8 == 2] < image_pixels[lab8 == 2]).all()
        assert (lab8[image_pixels == 0] == 255).all()  # all padding: zero scores, unsure
        red_cols, blue_cols = (lab8 == 1).nonzero()[:, 1].float(), (lab8 == 2).nonzero()[:, 1].float()
        if red_cols.numel() and blue_cols.numel():
            flips.add(bool(red_cols.mean() > blue_cols.mean()))
        again = t(img, low, high, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(x, again[0]) and torch.equal(lab8, again[1])
    assert flips == {True, False}  # both orientations occur


def test_affinity_augment_settings_flip_and_rescale():
    img, low, high = _two_region_case()
    plain = AffinityAugment(crop=96, resize_long=None, flip=False, color_jitter=(0, 0, 0, 0))
    for seed in range(6):  # never flipped: red (class 1) stays on the left
        _, lab8 = plain(img, low, high, generator=torch.Generator().manual_seed(seed))
        cols = (lab8 == 1).nonzero()[:, 1].float()
        assert cols.numel() and cols.max() < (lab8 == 2).nonzero()[:, 1].float().min()
    rescaled = AffinityAugment(crop=96, resize_long=(200, 200), flip=False, color_jitter=(0, 0, 0, 0))
    _, lab8 = rescaled(img, low, high, generator=torch.Generator().manual_seed(0))
    assert (lab8 != 255).float().mean() > 0.8  # 200x140 px: the crop is filled with image cells


def test_affinity_augment_rejects_bad_crop_and_shapes():
    with pytest.raises(ValueError):
        AffinityAugment(crop=100, resize_long=None, flip=True, color_jitter=(0, 0, 0, 0))
    img, low, high = _two_region_case()
    with pytest.raises(ValueError):
        AffinityAugment(crop=64, resize_long=None, flip=True, color_jitter=(0, 0, 0, 0))(img, low[:, :-1], high)


def test_irn_augment_rescales_crops_and_reduces_the_label():
    from affinitynet.data.transforms import IRNAugment

    image = np.zeros((60, 100, 3), np.uint8)
    image[:, 50:] = 255
    label = np.zeros((60, 100), np.uint8)
    label[:, 50:] = 3
    label[:10] = 255
    aug = IRNAugment(crop=64, rescale=(0.5, 1.5), flip=True)
    sizes = set()
    for seed in range(12):
        x, reduced = aug(image, label, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 64, 64) and reduced.shape == (16, 16) and reduced.dtype == torch.uint8
        values = set(np.unique(reduced.numpy()).tolist())
        assert values <= {0, 3, 255}
        # the label follows the image (flip, scale, crop): class 3 cells are on the white half
        not_black = (x.mean(0) > -0.5)[2::4, 2::4].numpy()
        cells = reduced.numpy() == 3
        assert not (cells & ~not_black).any()
        sizes.add(float((x.abs().sum(0) > 0).sum()))
    assert len(sizes) > 3  # random scales (and crops) differ
    # no rescale: the image keeps its size inside the canvas, padded with 0 / 255: of the 32 x 32
    # cells, the 15 x 25 of the image minus its ~3 unsure rows are labelled
    x, reduced = IRNAugment(crop=128, rescale=None, flip=False)(image, label)
    assert reduced.shape == (32, 32) and 12 * 25 <= int((reduced != 255).sum()) <= 13 * 25
    assert int((x.abs().sum(0) > 0).sum()) == 60 * 100  # normalised pixels are non-zero, padding is 0
