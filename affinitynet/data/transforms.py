"""Input normalisation and the training augmentations of the original PSA recipe.

Normalisation (``normalize``):
- ``"imagenet"`` (ResNet-38, ResNet-50, ...): RGB, ``(x / 255 - mean) / std`` with mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
- ``"caffe_bgr"`` (the Caffe VGG-16): channels in BGR order minus (104.008, 116.669, 122.675),
  no scaling.

Augmentation (paper Sec. 4.1 / PSA ``train_cls.py`` and ``train_aff.py``), in PSA's order:
random resize of the long side to an integer in [lo, hi] (bicubic), horizontal flip with p = 0.5,
colour jitter (brightness, contrast, saturation, hue) on the uint8 image, normalisation, then a
random crop to crop x crop where a side shorter than the crop is zero-padded (after
normalisation, so padding is the mean colour) at a random offset. The geometric ops are
torchvision.transforms.v2 functionals on ``tv_tensors.Image`` / ``tv_tensors.Mask`` (so masks are
resized with nearest neighbour); the random parameters are drawn from an optional
``torch.Generator``: the training stages pass each image its own, seeded from (seed, epoch,
image) by ``training.EpochSampler``, so the result does not depend on the loader workers. (A
generator stored on the transform would be copied into every worker with the same state.)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from affinitynet.conventions import IGNORE_INDEX, STRIDE

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_BGR_MEAN = (104.008, 116.669, 122.675)  # B, G, R means of the Caffe VGG-16
NORMALIZATIONS = ("imagenet", "caffe_bgr")


def normalize_chw(image: torch.Tensor, kind: str = "imagenet") -> torch.Tensor:
    """uint8 (or 0..255 float) RGB tensor (3, H, W) -> normalised float32 (3, H, W)."""
    x = image.to(torch.float32)
    if kind == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
        return (x / 255.0 - mean) / std
    if kind == "caffe_bgr":
        mean = torch.tensor(CAFFE_BGR_MEAN, dtype=torch.float32).view(3, 1, 1)
        return x.flip(0) - mean
    raise ValueError(f"unknown normalization {kind!r} (expected one of {', '.join(NORMALIZATIONS)})")


def normalize(image: np.ndarray, kind: str = "imagenet") -> torch.Tensor:
    """(H, W, 3) uint8 RGB array -> float32 tensor (3, H, W), normalised for ``kind``."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    return normalize_chw(torch.from_numpy(_writable(arr)).permute(2, 0, 1), kind)


def _writable(arr: np.ndarray) -> np.ndarray:
    """Contiguous, writable view or copy (torch warns on read-only arrays such as Pillow's)."""
    arr = np.ascontiguousarray(arr)
    return arr if arr.flags.writeable else arr.copy()


# -----------------------------------------------------------------------------------------------
# Random parameters (all drawn from one optional generator, in a fixed order)
# -----------------------------------------------------------------------------------------------
def _randint(lo: int, hi: int, gen: torch.Generator | None) -> int:
    """Uniform integer in [lo, hi] inclusive."""
    return int(torch.randint(lo, hi + 1, (1,), generator=gen).item())


def _uniform(lo: float, hi: float, gen: torch.Generator | None) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen).item())


def long_side_size(height: int, width: int, target_long: int) -> tuple[int, int]:
    """(h, w) with the longer side ``target_long`` and the aspect ratio kept (PSA's rounding)."""
    if width >= height:
        return max(1, int(round(height * target_long / width))), target_long
    return target_long, max(1, int(round(width * target_long / height)))


def _color_jitter(img: torch.Tensor, jitter: tuple[float, float, float, float],
                  gen: torch.Generator | None) -> torch.Tensor:
    """torchvision ColorJitter semantics (factors and a random order), drawn from ``gen``."""
    b, c, s, h = jitter
    ops = []
    if b > 0:
        f = _uniform(max(0.0, 1 - b), 1 + b, gen)
        ops.append(lambda t, f=f: TF.adjust_brightness(t, f))
    if c > 0:
        f = _uniform(max(0.0, 1 - c), 1 + c, gen)
        ops.append(lambda t, f=f: TF.adjust_contrast(t, f))
    if s > 0:
        f = _uniform(max(0.0, 1 - s), 1 + s, gen)
        ops.append(lambda t, f=f: TF.adjust_saturation(t, f))
    if h > 0:
        f = _uniform(-h, h, gen)
        ops.append(lambda t, f=f: TF.adjust_hue(t, f))
    order = torch.randperm(len(ops), generator=gen).tolist() if ops else []
    for k in order:
        img = ops[k](img)
    return img


def _crop_window(size: int, crop: int, gen: torch.Generator | None) -> tuple[int, int, int]:
    """PSA's RandomCrop along one axis: (canvas offset, source offset, length)."""
    length = min(crop, size)
    space = size - crop
    if space > 0:
        return 0, _randint(0, space, gen), length
    return _randint(0, -space, gen), 0, length


class _Augment:
    def __init__(self, crop: int, resize_long: tuple[int, int],
                 color_jitter: tuple[float, float, float, float], normalization: str,
                 generator: torch.Generator | None) -> None:
        if crop <= 0:
            raise ValueError(f"crop must be positive, got {crop}")
        lo, hi = resize_long
        if not 1 <= lo <= hi:
            raise ValueError(f"resize_long must satisfy 1 <= low <= high, got {resize_long}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}")
        self.crop = int(crop)
        self.resize_long = (int(lo), int(hi))
        self.color_jitter = tuple(float(v) for v in color_jitter)
        self.normalization = normalization
        self.generator = generator

    def _geometric_and_color(self, image: np.ndarray, label: np.ndarray | None,
                             gen: torch.Generator | None):
        img = tv_tensors.Image(torch.from_numpy(_writable(image)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(_writable(label))[None]) if label is not None else None
        height, width = image.shape[:2]
        size = list(long_side_size(height, width, _randint(*self.resize_long, gen)))
        # Bicubic as PSA's RandomResizeLong; v2 resizes a Mask with nearest whatever we pass.
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        if mask is not None:
            mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)
        if float(torch.rand((), generator=gen).item()) < 0.5:
            img = TF.horizontal_flip(img)
            if mask is not None:
                mask = TF.horizontal_flip(mask)
        img = _color_jitter(img, self.color_jitter, gen)
        return normalize_chw(img.as_subclass(torch.Tensor), self.normalization), mask

    def _crop(self, x: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator | None):
        _, height, width = x.shape
        ct, st, lh = _crop_window(height, self.crop, gen)
        cl, sl, lw = _crop_window(width, self.crop, gen)
        out = torch.zeros((x.shape[0], self.crop, self.crop), dtype=x.dtype)
        out[:, ct:ct + lh, cl:cl + lw] = x[:, st:st + lh, sl:sl + lw]
        if mask is None:
            return out, None
        lab = torch.full((self.crop, self.crop), IGNORE_INDEX, dtype=torch.uint8)
        lab[ct:ct + lh, cl:cl + lw] = mask.as_subclass(torch.Tensor)[0, st:st + lh, sl:sl + lw]
        return out, lab


class ClassificationTransform(_Augment):
    """uint8 (H, W, 3) RGB -> float32 (3, crop, crop) augmented, normalised image (PSA train_cls)."""

    def __init__(self, crop: int, resize_long: tuple[int, int],
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(crop, resize_long, color_jitter, normalization, generator)

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        x, _ = self._geometric_and_color(image, None, gen)
        return self._crop(x, None, gen)[0]


def downsample_label(label: torch.Tensor, stride: int = STRIDE) -> torch.Tensor:
    """(H, W) label map -> (ceil(H/stride), ceil(W/stride)) by nearest sampling at cell centres.

    Cell (i, j) of the stride-8 grid takes the label of pixel (8i + 4, 8j + 4), i.e.
    ``label[4::8, 4::8]`` (clamped to the last row/column for a partial cell). The centre is the
    middle of the pixels the feature cell summarises (8i..8i+7), so an object boundary is not
    biased towards the top-left as ``label[::8, ::8]`` would be, and it is where
    ``align_corners=False`` interpolation places the cell.
    """
    height, width = label.shape[-2:]
    ys = torch.clamp(torch.arange(math.ceil(height / stride)) * stride + stride // 2, max=height - 1)
    xs = torch.clamp(torch.arange(math.ceil(width / stride)) * stride + stride // 2, max=width - 1)
    return label[..., ys[:, None], xs[None, :]]


class AffinityTransform(_Augment):
    """Joint augmentation of image + confident label map for AffinityNet (PSA train_aff).

    ``(image uint8 (H, W, 3), label uint8 (H, W)) -> (image float32 (3, crop, crop),
    label uint8 (crop, crop), label_stride8 uint8 (crop/8, crop/8))``. The label follows every
    geometric step with nearest-neighbour resizing; padding is 255 (ignore). ``crop`` must be a
    multiple of 8. (PSA train_aff: crop 448, long side 448..768).
    """

    def __init__(self, crop: int, resize_long: tuple[int, int],
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None, stride: int = STRIDE) -> None:
        super().__init__(crop, resize_long, color_jitter, normalization, generator)
        if crop % stride:
            raise ValueError(f"crop {crop} must be a multiple of the stride {stride}")
        self.stride = stride

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if label.shape[:2] != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
        gen = generator if generator is not None else self.generator
        x, mask = self._geometric_and_color(image, np.asarray(label, dtype=np.uint8), gen)
        x, lab = self._crop(x, mask, gen)
        return x, lab, downsample_label(lab, self.stride).contiguous()


class SegmentationTransform(_Augment):
    """Joint augmentation of image + label map for the segmentation network (stage 5).

    ``(image uint8 (H, W, 3), label uint8 (H, W)) -> (image float32 (3, crop, crop), label
    uint8 (crop, crop))``: the same steps as ``AffinityTransform`` (resize of the long side,
    flip, colour jitter, crop with 255 padding of the label), without the stride-8 label.
    """

    def __init__(self, crop: int, resize_long: tuple[int, int],
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None) -> None:
        super().__init__(crop, resize_long, color_jitter, normalization, generator)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if label.shape[:2] != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
        gen = generator if generator is not None else self.generator
        x, mask = self._geometric_and_color(image, np.asarray(label, dtype=np.uint8), gen)
        return self._crop(x, mask, gen)


class ResizePadTransform:
    """Deterministic evaluation transform: uint8 (H, W, 3) -> float32 (3, crop, crop), the long
    side resized to ``crop`` (bicubic), normalised, zero-padded at bottom/right."""

    def __init__(self, crop: int, normalization: str = "imagenet") -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}")
        self.crop, self.normalization = int(crop), normalization

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        img = torch.from_numpy(_writable(image)).permute(2, 0, 1)
        size = list(long_side_size(image.shape[0], image.shape[1], self.crop))
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = normalize_chw(img, self.normalization)
        out = torch.zeros((3, self.crop, self.crop), dtype=x.dtype)
        out[:, : x.shape[1], : x.shape[2]] = x[:, : self.crop, : self.crop]
        return out


class ResizePadJointTransform(ResizePadTransform):
    """``ResizePadTransform`` for an image and its label map (validation of stage 5):
    ``(image uint8 (H, W, 3), label uint8 (H, W)) -> (float32 (3, crop, crop), uint8 (crop,
    crop))``; the label is resized with nearest neighbour and padded with 255 (ignored)."""

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if label.shape[:2] != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
        x = super().__call__(image)
        size = list(long_side_size(image.shape[0], image.shape[1], self.crop))
        mask = torch.from_numpy(_writable(np.asarray(label, dtype=np.uint8)))[None]
        mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)[0]
        out = torch.full((self.crop, self.crop), IGNORE_INDEX, dtype=torch.uint8)
        out[: mask.shape[0], : mask.shape[1]] = mask[: self.crop, : self.crop]
        return x, out

