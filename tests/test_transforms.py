"""Normalisation parity with PSA and the training augmentations (affinitynet.data.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from affinitynet.data.transforms import (
    AffinityTransform,
    ClassificationTransform,
    downsample_label,
    normalize,
)
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
    img = np.zeros((70, 100, 3), np.uint8)
    label = np.zeros((70, 100), np.uint8)
    img[:, :50] = (230, 20, 20)
    label[:, :50] = 1
    img[:, 50:] = (20, 20, 230)
    label[:, 50:] = 2
    label[:10] = 255
    return img, label


def test_affinity_transform_moves_label_with_image():
    img, label = _two_region_case()
    t = AffinityTransform(crop=96, resize_long=(60, 140), color_jitter=(0.3, 0.3, 0.3, 0.0))
    for seed in range(6):
        x, lab, lab8 = t(img, label, generator=torch.Generator().manual_seed(seed))
        assert x.shape == (3, 96, 96) and lab.shape == (96, 96) and lab8.shape == (12, 12)
        assert lab.dtype == torch.uint8 and lab8.dtype == torch.uint8
        assert set(lab.unique().tolist()) <= {1, 2, 255}  # nearest: no blended labels
        # label follows the image: red (channel 0 high) exactly where the label says 1
        red = x[0] > x[2]
        ones, twos = lab == 1, lab == 2
        if ones.sum() > 50 and twos.sum() > 50:
            assert red[ones].float().mean() > 0.95 and (~red[twos]).float().mean() > 0.95
        padded = (x == 0).all(0)
        assert (lab[padded] == 255).all()  # padding is ignore
        assert torch.equal(lab8, lab[4::8, 4::8])
        again = t(img, label, generator=torch.Generator().manual_seed(seed))
        assert all(torch.equal(p, q) for p, q in zip((x, lab, lab8), again))


def test_downsample_label_centre_sampling_and_partial_cells():
    label = torch.arange(20 * 13, dtype=torch.int64).reshape(20, 13)
    out = downsample_label(label)
    assert out.shape == (3, 2)
    assert out[0, 0] == label[4, 4] and out[1, 1] == label[12, 12]
    assert out[2, 0] == label[19, 4]  # partial last cell clamps to the last row


def test_affinity_transform_rejects_bad_crop_and_shapes():
    with pytest.raises(ValueError):
        AffinityTransform(crop=100, resize_long=(448, 768), color_jitter=(0, 0, 0, 0))
    img, label = _two_region_case()
    with pytest.raises(ValueError):
        AffinityTransform(crop=64, resize_long=(448, 768), color_jitter=(0, 0, 0, 0))(img, label[:-1])
