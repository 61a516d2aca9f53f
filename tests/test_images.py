"""Robust image loading and palette label PNGs (affinitynet.data.images)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from affinitynet.data.images import load_label_png, load_rgb, save_label_png
from affinitynet.data.palette import VOC_COLORMAP, colorize
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError


def _rgb(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path):
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, img)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_rgb(tmp_path / "g.png")
    assert out.shape == (24, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.concatenate([_rgb(), np.full((24, 32, 1), 0, np.uint8)], axis=2)
    rgba[:, :16, 3] = 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_rgb(tmp_path / "a.png")
    # alpha dropped: the stored colours survive even where fully transparent (not black)
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_palette_png_gives_palette_colours(tmp_path):
    idx = (np.arange(24 * 32).reshape(24, 32) % 21).astype(np.uint8)
    save_label_png(tmp_path / "p.png", idx)
    out = load_rgb(tmp_path / "p.png")
    np.testing.assert_array_equal(out, VOC_COLORMAP[idx])


def test_16bit_png_scaled_to_8bit(tmp_path):
    values = np.array([[0, 257, 65535, 32896], [514, 1000, 60000, 12345]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_rgb(tmp_path / "d.png")
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def _tagged_image_and_mask(root):
    """A VOC-layout folder with one wide JPEG tagged EXIF orientation 6 ("rotate 90 degrees
    clockwise to display") and its mask, drawn on the stored grid: a bright block at the top
    left, labelled 1."""
    img = np.zeros((40, 80, 3), np.uint8)
    img[:20, :40] = 255
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    pil.save(root / "JPEGImages" / "r.jpg", quality=95, exif=exif.tobytes())
    mask = np.zeros((40, 80), np.uint8)
    mask[:20, :40] = 1
    save_label_png(root / "SegmentationClass" / "r.png", mask)
    return mask


def test_exif_orientation_is_ignored_by_default_and_applied_on_request(tmp_path):
    _tagged_image_and_mask(tmp_path)
    stored = load_rgb(tmp_path / "JPEGImages" / "r.jpg")
    assert stored.shape == (40, 80, 3)  # the stored grid, as the original reads it
    assert stored[5:15, 5:15].mean() > 200
    out = load_rgb(tmp_path / "JPEGImages" / "r.jpg", exif_transpose=True)
    assert out.shape == (80, 40, 3)  # upright: now tall
    # clockwise rotation moves the top-left block to the top-right
    assert out[5:15, 25:35].mean() > 200 and out[5:15, 5:15].mean() < 50


@pytest.mark.parametrize("exif_transpose", [False, True])
def test_a_tagged_image_and_its_mask_stay_aligned(tmp_path, exif_transpose):
    """Whether the dataset turns images upright or not, the mask follows: the bright pixels
    are exactly the labelled ones."""
    _tagged_image_and_mask(tmp_path)
    voc = VOCDataset(tmp_path, exif_transpose=exif_transpose)
    image, gt = voc.load_image("r"), voc.load_gt("r")
    assert image.shape[:2] == gt.shape == ((80, 40) if exif_transpose else (40, 80))
    bright = image.mean(axis=2) > 128
    assert gt.sum() == 800 and np.array_equal(bright, gt == 1)


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red
    out = load_rgb(tmp_path / "c.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "directory"])
def test_bad_files_raise_input_error_naming_file(tmp_path, kind):
    path = tmp_path / f"bad_{kind}.jpg"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_rgb(200, 200)).save(buf, format="JPEG", quality=95)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif kind == "garbage":
        path.write_bytes(b"this is not an image at all" * 10)
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(InputError) as err:
        load_rgb(path)
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg
    with pytest.raises(InputError):
        load_label_png(path)


def test_label_png_roundtrip_and_palette(tmp_path):
    label = np.zeros((10, 12), np.uint8)
    label[2:5, 3:9] = 15
    label[7:, :] = 255
    save_label_png(tmp_path / "l.png", label)
    pil = Image.open(tmp_path / "l.png")
    assert pil.mode == "P"
    assert tuple(pil.getpalette()[255 * 3: 255 * 3 + 3]) == (224, 224, 192)
    assert tuple(pil.getpalette()[15 * 3: 15 * 3 + 3]) == (192, 128, 128)  # VOC 'person'
    np.testing.assert_array_equal(load_label_png(tmp_path / "l.png"), label)


def test_label_png_from_rgb_picture_and_grayscale(tmp_path):
    label = (np.arange(30).reshape(5, 6) % 21).astype(np.uint8)
    label[0, 0] = 255
    Image.fromarray(colorize(label)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgb.png"), label)
    Image.fromarray(label, mode="L").save(tmp_path / "l.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "l.png"), label)
    bad = colorize(label)
    bad[1, 1] = (1, 2, 3)
    Image.fromarray(bad).save(tmp_path / "bad.png")
    with pytest.raises(InputError, match="bad.png"):
        load_label_png(tmp_path / "bad.png")
