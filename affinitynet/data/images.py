"""Robust image and label-map I/O: every bad file becomes one ``InputError`` naming it.

``load_rgb`` returns (H, W, 3) uint8 RGB for any common input: grayscale, palette, CMYK, RGBA
(the alpha channel is *dropped*, keeping the stored colours, as the original PSA's
``PIL.Image.open(...).convert("RGB")`` does) and 16-bit PNGs (scaled to 8 bits). An EXIF
orientation tag is ignored by default, as the original does: the pixels come in their stored
order, the grid VOC's and COCO's masks are drawn on. ``exif_transpose=True`` turns the image
upright instead; ``orient_like_image`` then turns a mask the same way. Label maps are palette PNGs in the VOC palette whose
pixel *indices* are the labels (0 = background, class index + 1, 255 = ignore).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from affinitynet.artifacts import atomic_path
from affinitynet.data.palette import VOC_COLORMAP, VOC_PALETTE
from affinitynet.errors import InputError

PathLike = str | os.PathLike


def _open_decoded(path: PathLike) -> Image.Image:
    """Open ``path`` and decode it fully (so truncated files fail here), or raise InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file does not exist")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an image file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: empty file (0 bytes)")
    try:
        img = Image.open(p)
    except UnidentifiedImageError:
        raise InputError(f"{p}: not an image file (Pillow cannot identify its format)") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"{p}: image too large ({exc})") from None
    except OSError as exc:
        raise InputError(f"{p}: cannot open image ({exc})") from None
    try:
        # Decoding everything now turns a truncated or corrupt stream into an error here rather
        # than a silently grey bottom half (LOAD_TRUNCATED_IMAGES stays off on purpose).
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{p}: truncated or corrupt image ({exc})") from None
    return img


def _to_uint8_rgb(img: Image.Image, path: PathLike) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale PNG (Pillow gives "I;16" or the 32-bit "I"): map 0..65535 to 0..255.
        arr = np.asarray(img).astype(np.float64)
        if mode == "I" and arr.size and arr.max() <= 255 and arr.min() >= 0:
            gray = arr  # an 8-bit image stored in a 32-bit container
        else:
            gray = np.clip(arr, 0, 65535) / 257.0
        gray = np.rint(gray).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0
        gray = np.rint(np.clip(np.nan_to_num(arr) * scale, 0, 255)).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode != "RGB":
        try:
            # RGBA / LA / PA and palettes with transparency: convert("RGB") drops alpha.
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: unsupported image mode {mode} ({exc})") from None
    return np.array(img, dtype=np.uint8)


def load_rgb(path: PathLike, exif_transpose: bool = False) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB: its stored pixel grid, or with
    ``exif_transpose`` upright according to its EXIF orientation.

    Raises ``InputError("<path>: <reason>")`` for a missing, empty, truncated or non-image file.
    """
    img = _open_decoded(path)
    if exif_transpose:
        img = _upright(img)
    return _to_uint8_rgb(img, path)


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a malformed EXIF block should not make the pixels unusable
        return img


# EXIF orientation (1..8) -> the transpose that makes the image upright (as ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def exif_orientation(path: PathLike) -> int:
    """The EXIF orientation (1..8) of an image file, from its header; 1 when it has none or the
    block is unreadable."""
    try:
        with Image.open(path) as img:
            return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - as load_rgb: an unreadable EXIF block means "as stored"
        return 1


def orient_like_image(label: np.ndarray, image_path: PathLike) -> np.ndarray:
    """An (H, W) mask drawn on the stored pixel grid of ``image_path``, turned as
    ``load_rgb(image_path, exif_transpose=True)`` turns the image."""
    method = _UPRIGHT.get(exif_orientation(image_path))
    return label if method is None else np.asarray(Image.fromarray(label).transpose(method))


def to_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    """An image in memory -> (H, W, 3) uint8 RGB: a PIL image of any mode, or a numpy array
    (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped), uint8 or float in [0, 1]."""
    if isinstance(image, Image.Image):
        return _to_uint8_rgb(image, "image")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        arr = np.rint(np.clip(np.nan_to_num(arr.astype(np.float64)) * scale, 0, 255)).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def save_label_png(path: PathLike, label: np.ndarray, palette: bool = True) -> None:
    """Write an (H, W) uint8 label map as a palette PNG in the VOC palette (255 -> (224,224,192)),
    or with ``palette=False`` as a plain 8-bit grey PNG of the same indices (what PSA and IRN
    write, and what readers that turn palette PNGs into RGB need)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {label.shape}")
    if label.dtype != np.uint8:
        if label.size and (label.min() < 0 or label.max() > 255):
            raise ValueError("label values must lie in 0..255")
        label = label.astype(np.uint8)
    height, width = label.shape
    # The bytes are the palette indices themselves; only the colour table is added.
    out = Image.frombytes("P" if palette else "L", (width, height), np.ascontiguousarray(label).tobytes())
    if palette:
        out.putpalette(VOC_PALETTE)
    # atomic (temporary file + rename): an interrupted stage never leaves a half-written PNG that a
    # rerun would take for a finished image
    with atomic_path(path) as tmp:
        out.save(tmp, format="PNG")


_COLOR_TO_INDEX: dict[int, int] = {}
for _i in range(255, -1, -1):  # lowest index wins if two indices shared a colour
    _r, _g, _b = (int(v) for v in VOC_COLORMAP[_i])
    _COLOR_TO_INDEX[(_r << 16) | (_g << 8) | _b] = _i


def load_label_png(path: PathLike) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 label values.

    Palette ("P") and grayscale ("L") PNGs give their stored indices/values directly. An RGB
    picture drawn in the VOC palette is mapped back to indices (colours outside the palette are an
    error). Errors name the file.
    """
    img = _open_decoded(path)
    mode = img.mode
    if mode in ("P", "L"):
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return np.array(img, dtype=np.uint8)
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise InputError(f"{path}: label values outside 0..255 (max {int(arr.max())})")
        return np.ascontiguousarray(arr.astype(np.uint8))
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint32)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        uniq, inverse = np.unique(codes, return_inverse=True)
        lut = np.empty(len(uniq), dtype=np.uint8)
        for k, code in enumerate(uniq.tolist()):
            if code not in _COLOR_TO_INDEX:
                rgb_t = ((code >> 16) & 255, (code >> 8) & 255, code & 255)
                raise InputError(f"{path}: colour {rgb_t} is not in the VOC palette; "
                                 "expected a palette (indexed) or grayscale label PNG")
            lut[k] = _COLOR_TO_INDEX[code]
        return np.ascontiguousarray(lut[inverse.reshape(codes.shape)])
    raise InputError(f"{path}: unsupported label image mode {mode}; expected a palette PNG")
