"""The second synthetic family, "clutter": different in kind from the first ("shapes").

Where the first family has images of one size (200-320 px), a plain dark background and 1-3
large blobs, this one has:

- images of any size from 96 to 640 px on the long side (log-uniform, so small ones are
  common), non-square (short side 55-100 % of the long one), portrait or landscape;
- a cluttered background: a mid-tone base with rectangles, ellipses and stripes of muted
  colours and textures, and *distractors* that resemble class cues (a class's colour without
  its texture, or its texture in grey), which the ground truth marks background;
- 1-3 objects, several of the same class possible, of varied size (25-65 % of the long side)
  and shape: ellipses, rounded boxes, blobs and thin bars (3-6 times longer than wide);
- class evidence on part of each object only: its cue (the class's colour and texture) covers
  35-60 % of the object, cut by a straight line; the rest is a body of a random colour, so it
  tells the classes apart not at all.

Everything is drawn from ``numpy.random.default_rng([seed, split, index, 2])`` (2 = this
family), so re-runs are byte-identical and an image does not depend on the others.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from affinitynet.data.synthetic_shapes import SyntheticSample, paste_object, pattern_names, split_id

CLUTTER_PATTERNS: tuple[str, ...] = ("zigzag", "grid", "spots", "hatch", "bands", "triangles")
# cue colours (RGB): saturated, 60 degrees apart in hue
_CUE_COLORS: tuple[tuple[int, int, int], ...] = (
    (235, 40, 40), (50, 70, 245), (235, 225, 40), (40, 210, 60), (225, 50, 225), (40, 215, 225),
)
LONG_SIDE = (96, 640)  # px, log-uniform
SHORT_RATIO = (0.55, 1.0)
OBJECT_EXTENT = (0.25, 0.65)  # long axis, as a fraction of the image's long side
CUE_FRACTION = (0.35, 0.60)
MAX_OBJECTS = 3
_FAMILY_ID = 2


def clutter_class_names(num_classes: int = 6) -> list[str]:
    return pattern_names(CLUTTER_PATTERNS, num_classes)


def clutter_cue_color(c: int) -> np.ndarray:
    """(3,) float32 RGB cue colour of class ``c``."""
    if c < len(_CUE_COLORS):
        return np.array(_CUE_COLORS[c], np.float32)
    return np.array(colorsys.hsv_to_rgb((c * 0.381966) % 1.0, 0.85, 0.92), np.float32) * 255


def _texture(c: int, u: np.ndarray, v: np.ndarray, period: float, rng: np.random.Generator) -> np.ndarray:
    """Class ``c``'s binary texture at coordinates (u, v) with the given period."""
    rot = rng.uniform(0, np.pi)
    x = u * np.cos(rot) + v * np.sin(rot) + rng.uniform(0, period)
    y = -u * np.sin(rot) + v * np.cos(rot) + rng.uniform(0, period)
    kind = CLUTTER_PATTERNS[c % len(CLUTTER_PATTERNS)]
    fx, fy = np.mod(x, period) / period, np.mod(y, period) / period
    if kind == "zigzag":
        return np.mod(y + period * np.abs(fx - 0.5), period) < period * 0.45
    if kind == "grid":
        return (fx < 0.25) | (fy < 0.25)
    if kind == "spots":
        return (fx - 0.5) ** 2 + (fy - 0.5) ** 2 < 0.09
    if kind == "hatch":
        return (np.mod(x + y, period) < period * 0.3) | (np.mod(x - y, period) < period * 0.3)
    if kind == "bands":
        return np.mod(x, period) < period * 0.7 * (0.5 + 0.5 * (np.floor(x / period) % 2))
    return fy < fx  # triangles


def _shape(rng: np.random.Generator, extent: float):
    """(inside(u, v) -> bool mask around the origin, half size of its bounding square)."""
    kind = int(rng.integers(0, 5)) % 4  # 0-2: compact shapes (ellipses twice as often), 3: a thin bar
    theta = rng.uniform(0, np.pi)
    a = extent / 2
    b = a * (rng.uniform(0.16, 0.33) if kind == 3 else rng.uniform(0.5, 1.0))  # 3: a thin bar
    p = rng.uniform(2.5, 6.0)
    harmonics = [(k, rng.uniform(0, 0.12), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)]

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = (u * np.cos(theta) + v * np.sin(theta)) / a
        y = (-u * np.sin(theta) + v * np.cos(theta)) / b
        if kind == 0:
            return x * x + y * y <= 1
        if kind in (1, 3):
            return np.abs(x) ** p + np.abs(y) ** p <= 1
        r = 1 + sum(amp * np.cos(k * np.arctan2(y, x) + ph) for k, amp, ph in harmonics)
        return np.sqrt(x * x + y * y) <= r

    return inside, int(np.ceil(a * 1.3)) + 1


def _smooth(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) low-frequency noise in about [-1, 1]."""
    grid = rng.uniform(-1, 1, size=(max(2, cells * height // 200), max(2, cells * width // 200)))
    return np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))


def _muted(rng: np.random.Generator, lo: float = 60, hi: float = 170) -> np.ndarray:
    """A low-saturation colour of mid lightness."""
    grey = rng.uniform(lo, hi)
    return np.clip(grey + rng.uniform(-22, 22, size=3), 0, 255).astype(np.float32)


def _background(rng: np.random.Generator, height: int, width: int, num_classes: int
                ) -> tuple[np.ndarray, list[tuple[int, str, np.ndarray]]]:
    """Cluttered mid-tone background with distractors that resemble class cues; returns the
    image and the distractors (class, kind, mask)."""
    distractors = []
    img = np.broadcast_to(_muted(rng), (height, width, 3)).astype(np.float32).copy()
    img += 14 * _smooth(rng, height, width, int(rng.integers(2, 8)))[..., None]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    long_side = max(height, width)
    for _ in range(int(rng.integers(3, 9))):
        h = int(rng.uniform(0.05, 0.4) * long_side) + 2
        w = int(rng.uniform(0.05, 0.4) * long_side) + 2
        y0, x0 = int(rng.integers(-h // 2, height)), int(rng.integers(-w // 2, width))
        region = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        if rng.random() < 0.4:  # an ellipse instead of a box
            cy, cx = y0 + h / 2, x0 + w / 2
            region = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        color = _muted(rng)
        if rng.random() < 0.5:  # a muted texture of its own
            period, angle = rng.uniform(4, 14), rng.uniform(0, np.pi)
            stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
            color_map = np.where(stripes[..., None], color, color * 0.8)
            img[region] = color_map[region]
        else:
            img[region] = color
    for _ in range(int(rng.integers(0, 3))):  # distractors: half a class cue, never an object
        c = int(rng.integers(0, num_classes))
        r = rng.uniform(0.03, 0.07) * long_side + 3
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        region = ((yy - cy) / r) ** 2 + ((xx - cx) / (r * rng.uniform(0.6, 1.6))) ** 2 <= 1
        if rng.random() < 0.5:  # the class's hue, paler and plain
            img[region] = 0.55 * clutter_cue_color(c) + 0.45 * _muted(rng)
            distractors.append((c, "color", region))
        else:  # the class's texture, in grey
            tex = _texture(c, xx - cx, yy - cy, rng.uniform(6, 12), rng)
            grey = np.where(tex[..., None], rng.uniform(130, 170), rng.uniform(80, 110)).astype(np.float32)
            img[region] = np.broadcast_to(grey, img.shape)[region]
            distractors.append((c, "texture", region))
    img += rng.normal(0, rng.uniform(4, 10), size=img.shape)
    return img, distractors


def make_clutter_sample(seed: int, split: str, index: int, num_classes: int = 6,
                        max_objects: int = MAX_OBJECTS, cue_fraction: tuple[float, float] = CUE_FRACTION
                        ) -> SyntheticSample:
    """Render image ``index`` of ``split`` (a pure function of its arguments)."""
    rng = np.random.default_rng([int(seed), split_id(split), int(index), _FAMILY_ID])
    long_side = int(round(np.exp(rng.uniform(np.log(LONG_SIDE[0]), np.log(LONG_SIDE[1])))))
    short = max(LONG_SIDE[0] // 2, int(round(long_side * rng.uniform(*SHORT_RATIO))))
    height, width = (long_side, short) if rng.random() < 0.35 else (short, long_side)
    img, distractors = _background(rng, height, width, num_classes)
    label = np.zeros((height, width), np.uint8)
    occupied = np.zeros((height, width), bool)
    sample = SyntheticSample(image=np.empty(0), label=label, distractors=distractors)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(30):
            extent = rng.uniform(*OBJECT_EXTENT) * long_side * (0.97 ** _attempt)
            inside, half = _shape(rng, extent)
            grid = np.arange(-half, half + 1, dtype=np.float32)
            u, v = np.meshgrid(grid, grid)
            local = inside(u, v)
            rows, cols = np.nonzero(local.any(1))[0], np.nonzero(local.any(0))[0]
            if len(rows) == 0:
                continue
            tight = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            local, u, v = local[tight], u[tight], v[tight]
            h, w = local.shape
            if h >= height or w >= width:
                continue
            y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            if not (local & occupied[y0:y0 + h, x0:x0 + w]).any():
                break
        else:
            continue
        c = int(rng.integers(0, num_classes))
        proj = u * np.cos(phi := rng.uniform(0, 2 * np.pi)) + v * np.sin(phi)
        cue = local & (proj <= np.quantile(proj[local], rng.uniform(*cue_fraction)))
        hue, sat, val = rng.uniform(0, 1), rng.uniform(0.1, 0.4), rng.uniform(0.55, 0.95)
        body_color = np.array(colorsys.hsv_to_rgb(hue, sat, val), np.float32) * 255
        body = body_color + 8 * _smooth(rng, h, w, 2)[..., None]
        period = max(4.0, rng.uniform(0.05, 0.09) * long_side)
        tex = _texture(c, u, v, period, rng)[..., None]
        color = clutter_cue_color(c) * rng.uniform(0.9, 1.05)
        cue_pix = np.where(tex, color, 0.5 * color)
        patch = np.where(cue[..., None], cue_pix, body) + rng.normal(0, 3, size=(h, w, 3))
        paste_object(sample, img, occupied, c, y0, x0, local, cue, patch, gap=2)
    sample.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return sample
