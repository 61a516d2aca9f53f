"""The first built-in synthetic family, "shapes": a small, fast, weakly supervised segmentation
problem; and the pieces of an image both families draw with (``SyntheticSample``,
``paste_object``, ``pattern_names``, ``split_id``). ``affinitynet.data.synthetic`` writes the
datasets.

Each image shows 1-3 non-overlapping objects on a textured, noisy, dark background. An object is
a large blob (80-160 px across, 10-20 cells of the stride-8 grid) made of two parts:

- the **cue** (its class): a contiguous part covering 40-55 % of the object (the object cut by
  a straight line at a random angle), drawn in the class colour with a class-specific texture
  (stripes, dots, checker, rings, waves) mixed with the body colour;
- the **body**: the rest, a light, nearly uniform, class-agnostic colour (the same distribution
  for every class), so it tells the classes apart not at all but differs strongly from the
  background.

The ground-truth mask is the whole object. A classifier can only tell the classes apart by their
cues, so its CAMs come out partial (the body carries no class evidence), while the strong object
edges and uniform bodies give the dense CRF and AffinityNet what they need to spread the label
over the whole object. The cue share follows the measurements in the project's notes: a cue of
~12 % of the object leaves the random walk nothing to work with (the body's background mass wins),
~40-55 % lets it recover the object (CAM ~56 -> ~83 mIoU with ground-truth affinities).

Images are 200-320 px per side and never a multiple of 8 (to exercise the padding code paths).
Everything is drawn from ``numpy.random.default_rng([seed, split, index])``, so re-runs are
byte-identical and an image does not depend on how many others are generated.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage


PATTERNS: tuple[str, ...] = ("stripes", "dots", "checker", "rings", "waves")
# Saturated, well separated cue colours (RGB); more classes get evenly spread extra hues.
_BASE_COLORS: tuple[tuple[int, int, int], ...] = (
    (225, 40, 40), (40, 190, 60), (45, 85, 235), (235, 205, 30), (200, 50, 210),
    (30, 200, 210), (245, 130, 20), (120, 60, 200), (150, 230, 40), (240, 100, 160),
)
_SPLIT_IDS = {"train": 0, "val": 1}
IMAGE_SIZE = (200, 320)  # per side, inclusive; multiples of 8 are skipped
OBJECT_SIZE = (80, 160)  # object extent along its long axis, px
CUE_FRACTION = (0.40, 0.55)  # share of the object's pixels that show the class cue
MAX_OBJECTS = 3
_GAP = 6  # px kept free between objects so every object has its own boundary


def pattern_names(patterns: tuple[str, ...], num_classes: int) -> list[str]:
    """Distinct class names: the cue pattern's name, with a number once the patterns repeat."""
    return [patterns[c % len(patterns)] + (str(c // len(patterns) + 1) if c >= len(patterns) else "")
            for c in range(num_classes)]


def class_names(num_classes: int = 5) -> list[str]:
    return pattern_names(PATTERNS, num_classes)


def class_color(c: int) -> np.ndarray:
    """(3,) float32 RGB cue colour of class ``c``."""
    if c < len(_BASE_COLORS):
        return np.array(_BASE_COLORS[c], dtype=np.float32)
    hue = (c * 0.618033988749895) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.9), dtype=np.float32) * 255.0


@dataclass
class SyntheticSample:
    """One generated image with its ground truth and the debug masks the tests check."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    label: np.ndarray  # (H, W) uint8: 0 background, class index + 1 inside objects
    object_classes: list[int] = field(default_factory=list)  # class index per object
    object_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool per object
    cue_masks: list[np.ndarray] = field(default_factory=list)  # (H, W) bool per object, within it
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # x0, y0, x1, y1 inclusive
    # background patches that resemble class c's cue: (c, "color" | "texture", (H, W) bool)
    distractors: list[tuple[int, str, np.ndarray]] = field(default_factory=list)


def _side(rng: np.random.Generator) -> int:
    lo, hi = IMAGE_SIZE
    while True:
        s = int(rng.integers(lo, hi + 1))
        if s % 8:
            return s


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int, channels: int) -> np.ndarray:
    """(H, W, channels) float32 low-frequency noise in about [-1, 1] (bicubic-upsampled grid)."""
    gh, gw = max(2, cells * height // 256), max(2, cells * width // 256)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw, channels)).astype(np.float32)
    out = np.empty((height, width, channels), dtype=np.float32)
    for ch in range(channels):
        out[..., ch] = np.asarray(Image.fromarray(grid[..., ch], mode="F").resize((width, height), Image.BICUBIC))
    return out


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 dark, muted, textured background, different in every image."""
    base = rng.uniform(25, 95) + rng.uniform(-18, 18, size=3)
    img = np.broadcast_to(base.astype(np.float32), (height, width, 3)).copy()
    img += rng.uniform(10, 25) * _smooth_field(rng, height, width, int(rng.integers(3, 9)), 3)
    kind = int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == 1:  # faint oriented grain
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(5, 20)
        img += rng.uniform(6, 14) * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period)[..., None]
    elif kind == 2:  # muted clutter rectangles
        for _ in range(int(rng.integers(3, 9))):
            h, w = int(rng.integers(8, 60)), int(rng.integers(8, 60))
            y, x = int(rng.integers(0, height - 4)), int(rng.integers(0, width - 4))
            img[y:y + h, x:x + w] += rng.uniform(-25, 25, size=3).astype(np.float32)
    img += rng.normal(0.0, rng.uniform(5, 13), size=(height, width, 3)).astype(np.float32)
    return img


def _object_shape(rng: np.random.Generator, extent: float):
    """Random shape: returns (half-size of its bounding square, inside(u, v) -> bool mask)."""
    a = extent / 2.0
    b = a * rng.uniform(0.62, 1.0)
    theta = rng.uniform(0, np.pi)
    kind = int(rng.integers(0, 3))
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    p = rng.uniform(2.8, 5.0)
    harmonics = [(k, rng.uniform(0.0, 0.1), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)]

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = (u * cos_t + v * sin_t) / a
        y = (-u * sin_t + v * cos_t) / b
        if kind == 0:  # ellipse
            return x * x + y * y <= 1.0
        if kind == 1:  # rounded rectangle (superellipse)
            return np.abs(x) ** p + np.abs(y) ** p <= 1.0
        ang = np.arctan2(y, x)  # smooth blob: radius modulated by a few harmonics
        r = 1.0 + sum(amp * np.cos(k * ang + ph) for k, amp, ph in harmonics)
        return np.sqrt(x * x + y * y) <= r

    return int(np.ceil(a * 1.35)) + 1, inside


def _pattern(c: int, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class ``c``'s binary cue texture at object coordinates (u, v), randomly rotated/shifted."""
    rot = rng.uniform(0, np.pi)
    x = u * np.cos(rot) + v * np.sin(rot) + rng.uniform(0, 40)
    y = -u * np.sin(rot) + v * np.cos(rot) + rng.uniform(0, 40)
    period = 11.0 + 3.0 * (c // len(PATTERNS))
    kind = PATTERNS[c % len(PATTERNS)]
    if kind == "stripes":
        return np.mod(x, period) < period / 2
    if kind == "dots":
        dx, dy = np.mod(x, period) - period / 2, np.mod(y, period) - period / 2
        return dx * dx + dy * dy < (0.36 * period) ** 2
    if kind == "checker":
        return (np.floor(x / period) + np.floor(y / period)) % 2 == 0
    if kind == "rings":
        return np.mod(np.sqrt(u * u + v * v), period) < period / 2
    return np.sin(2 * np.pi * x / period + 2.5 * np.sin(2 * np.pi * y / (3 * period))) > 0  # waves


def split_id(split: str) -> int:
    """The number of a split in the generators' seeds (train 0, val 1, others from the name)."""
    return _SPLIT_IDS.get(split, 2 + sum(split.encode()))


def make_sample(seed: int, split: str, index: int, num_classes: int = 5,
                max_objects: int = MAX_OBJECTS, cue_fraction: tuple[float, float] = CUE_FRACTION) -> SyntheticSample:
    """Render image ``index`` of ``split`` for ``seed`` (pure function of its arguments)."""
    rng = np.random.default_rng([int(seed), split_id(split), int(index)])
    height, width = _side(rng), _side(rng)
    img = _background(rng, height, width)
    label = np.zeros((height, width), dtype=np.uint8)
    occupied = np.zeros((height, width), dtype=bool)  # objects grown by the gap
    sample = SyntheticSample(image=np.empty(0), label=label)
    n_objects = int(rng.integers(1, max_objects + 1))
    for _ in range(n_objects):
        placed = _place_object(rng, occupied)
        if placed is None:
            continue
        local, u, v, y0, x0 = placed
        y1, x1 = y0 + local.shape[0], x0 + local.shape[1]
        c = int(rng.integers(0, num_classes))
        # Cue: the object's pixels on one side of a line at a random angle, cut at the quantile
        # that gives the drawn share of the object.
        frac = rng.uniform(*cue_fraction)
        phi = rng.uniform(0, 2 * np.pi)
        proj = u * np.cos(phi) + v * np.sin(phi)
        cut = np.quantile(proj[local], frac)
        cue = local & (proj <= cut)
        body_color = rng.uniform(180, 225) + rng.uniform(-12, 12, size=3)
        shade = 6.0 * _smooth_field(rng, y1 - y0, x1 - x0, 2, 1)
        body = np.broadcast_to(body_color.astype(np.float32), local.shape + (3,)) + shade
        color = class_color(c) * rng.uniform(0.92, 1.05)
        tex = _pattern(c, u, v, rng)[..., None]
        cue_pix = np.where(tex, color, 0.5 * color + 0.5 * body)
        patch = np.where(cue[..., None], cue_pix, body)
        patch = patch + rng.normal(0.0, 4.0, size=patch.shape)
        paste_object(sample, img, occupied, c, y0, x0, local, cue, patch, _GAP)
    sample.image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return sample


def _place_object(rng: np.random.Generator, occupied: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """A random object shape placed where it fits entirely inside the image and clear of the
    ``occupied`` (H, W) pixels: its (h, w) mask, its centred coordinates u (x), v (y), and its
    top-left (y0, x0); None when 40 tries found no place (smaller shapes after every 10)."""
    height, width = occupied.shape
    hi = float(OBJECT_SIZE[1])
    for attempt in range(40):
        if attempt and attempt % 10 == 0:
            hi = max(float(OBJECT_SIZE[0]), hi * 0.85)  # crowded image: try smaller objects
        extent = rng.uniform(OBJECT_SIZE[0], hi)
        half, inside = _object_shape(rng, extent)
        grid = np.arange(-half, half + 1, dtype=np.float32)
        u, v = np.meshgrid(grid, grid)  # u: columns (x), v: rows (y), shape centre at 0
        local = inside(u, v)
        rows, cols = np.nonzero(local.any(axis=1))[0], np.nonzero(local.any(axis=0))[0]
        tight = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        local, u, v = local[tight], u[tight], v[tight]
        h, w = local.shape
        if h > height or w > width:
            continue
        # Entirely inside the image (no truncated objects) and clear of the others.
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if not (local & occupied[y0:y0 + h, x0:x0 + w]).any():
            return local, u, v, y0, x0
    return None


def paste_object(sample: SyntheticSample, img: np.ndarray, occupied: np.ndarray, c: int, y0: int, x0: int,
                 local: np.ndarray, cue: np.ndarray, patch: np.ndarray, gap: int) -> None:
    """Paint object ``c`` into ``img`` (H, W, 3) float and ``sample.label``: its (h, w) mask
    ``local`` placed at (y0, x0), with the colours ``patch`` (h, w, 3) and the cue pixels
    ``cue``; record its masks, box and class in ``sample`` and mark it, grown by ``gap`` px,
    in ``occupied`` (H, W) bool."""
    h, w = local.shape
    img[y0:y0 + h, x0:x0 + w][local] = patch[local]
    sample.label[y0:y0 + h, x0:x0 + w][local] = c + 1
    full_mask = np.zeros(sample.label.shape, dtype=bool)
    full_mask[y0:y0 + h, x0:x0 + w] = local
    full_cue = np.zeros(sample.label.shape, dtype=bool)
    full_cue[y0:y0 + h, x0:x0 + w] = cue
    occupied |= _grow(full_mask, gap)
    ys, xs = np.nonzero(local)
    sample.boxes.append((x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()), y0 + int(ys.max())))
    sample.object_classes.append(c)
    sample.object_masks.append(full_mask)
    sample.cue_masks.append(full_cue)


def _grow(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a (2r+1) x (2r+1) square."""
    return ndimage.maximum_filter(mask, size=2 * r + 1)


