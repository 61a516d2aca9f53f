"""Input normalisation and the training augmentations of the original PSA recipes.

Normalisation (``normalize``):
- ``"imagenet"`` (ResNet-38, ResNet-50, ...): RGB, ``(x / 255 - mean) / std`` with mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
- ``"caffe_bgr"`` (the Caffe VGG-16): channels in BGR order minus (104.008, 116.669, 122.675),
  no scaling.

Augmentations. Each one is a setting of its training stage (``TrainingConfig``); a disabled one
draws nothing:

- the classifier and the segmentation network (PSA ``train_cls.py``), in PSA's order: random
  resize of the long side to an integer in [lo, hi] (bicubic; none when ``resize_long`` is
  None), horizontal flip with p = 0.5, colour jitter (brightness, contrast, saturation, hue) on
  the uint8 image, normalisation, then a random crop to crop x crop where a side shorter than
  the crop is zero-padded (after normalisation, so padding is the mean colour) at a random
  offset;
- AffinityNet (PSA ``train_aff.py`` / ``VOC12AffDataset``): ``AffinityAugment`` and
  ``affinity_sample`` below: colour jitter, then the image *and the CRF scores of both alphas*
  cropped together (before normalisation: black padding, zero scores), normalised, flipped,
  and the confident-label rule applied on the crop's 8x8 block averages. The original never
  rescales here; ``resize_long`` is an option.

The geometric ops are torchvision.transforms.v2 functionals on ``tv_tensors.Image`` /
``tv_tensors.Mask`` (so masks are resized with nearest neighbour); the random parameters are
drawn from an optional ``torch.Generator``: the training stages pass each image its own, seeded
from (seed, epoch, image) by ``training.EpochSampler``, so the result does not depend on the
loader workers. (A generator stored on the transform would be copied into every worker with
the same state.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from affinitynet.algorithms.boundary import reduce_label
from affinitynet.algorithms.crf import confident_labels
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


@dataclass(frozen=True)
class CropBox:
    """Where a random crop puts the image (PSA's ``RandomCrop``): the crop x crop canvas gets
    ``image[image_top:image_top+h, image_left:image_left+w]`` at (canvas_top, canvas_left), with
    h = min(crop, H) and w = min(crop, W). A side longer than the crop is cut at a random
    offset; a shorter one is placed at a random offset on the canvas, whose rest is padding."""

    canvas_top: int
    canvas_left: int
    image_top: int
    image_left: int


def _crop_window(size: int, crop: int, gen: torch.Generator | None) -> tuple[int, int]:
    """PSA's RandomCrop along one axis: (canvas offset, image offset)."""
    space = size - crop
    if space > 0:
        return 0, _randint(0, space, gen)
    return _randint(0, -space, gen), 0


def random_crop_box(height: int, width: int, crop: int, gen: torch.Generator | None) -> CropBox:
    """A random ``CropBox`` for an image of (height, width); vertical offset drawn first."""
    canvas_top, image_top = _crop_window(height, crop, gen)
    canvas_left, image_left = _crop_window(width, crop, gen)
    return CropBox(canvas_top, canvas_left, image_top, image_left)


def crop_to_canvas(x: torch.Tensor, box: CropBox, crop: int, fill: float) -> torch.Tensor:
    """(C, H, W) -> (C, crop, crop): ``x`` placed on a canvas of ``fill`` as ``box`` says."""
    height, width = min(crop, x.shape[1]), min(crop, x.shape[2])
    out = torch.full((x.shape[0], crop, crop), fill, dtype=x.dtype)
    out[:, box.canvas_top:box.canvas_top + height, box.canvas_left:box.canvas_left + width] = \
        x[:, box.image_top:box.image_top + height, box.image_left:box.image_left + width]
    return out


def _resize(x: torch.Tensor, size: list[int], interpolation: InterpolationMode) -> torch.Tensor:
    return TF.resize(x, size, interpolation=interpolation, antialias=True)


class _Augment:
    """The augmentation settings every training stage has (``TrainingConfig``)."""

    def __init__(self, crop: int, resize_long: tuple[int, int] | None, flip: bool,
                 color_jitter: tuple[float, float, float, float], normalization: str,
                 generator: torch.Generator | None) -> None:
        if crop <= 0:
            raise ValueError(f"crop must be positive, got {crop}")
        if resize_long is not None and not 1 <= resize_long[0] <= resize_long[1]:
            raise ValueError(f"resize_long must satisfy 1 <= low <= high, got {resize_long}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}")
        self.crop = int(crop)
        self.resize_long = None if resize_long is None else (int(resize_long[0]), int(resize_long[1]))
        self.flip = bool(flip)
        self.color_jitter = tuple(float(v) for v in color_jitter)
        self.normalization = normalization
        self.generator = generator

    @property
    def rescales(self) -> bool:
        """Whether the image is resized to a random long side (else used at its working size)."""
        return self.resize_long is not None

    def _random_size(self, height: int, width: int, gen: torch.Generator | None) -> list[int] | None:
        """The (h, w) of the random long side, or None without rescaling."""
        if self.resize_long is None:
            return None
        return list(long_side_size(height, width, _randint(*self.resize_long, gen)))

    def _flips(self, gen: torch.Generator | None) -> bool:
        return self.flip and float(torch.rand((), generator=gen).item()) < 0.5

    def _geometric_and_color(self, image: np.ndarray, label: np.ndarray | None,
                             gen: torch.Generator | None):
        img = tv_tensors.Image(torch.from_numpy(_writable(image)).permute(2, 0, 1))
        mask = tv_tensors.Mask(torch.from_numpy(_writable(label))[None]) if label is not None else None
        size = self._random_size(*image.shape[:2], gen)
        if size is not None:
            # Bicubic as PSA's RandomResizeLong; v2 resizes a Mask with nearest whatever we pass.
            img = _resize(img, size, InterpolationMode.BICUBIC)
            if mask is not None:
                mask = TF.resize(mask, size, interpolation=InterpolationMode.NEAREST)
        if self._flips(gen):
            img = TF.horizontal_flip(img)
            if mask is not None:
                mask = TF.horizontal_flip(mask)
        img = _color_jitter(img, self.color_jitter, gen)
        return normalize_chw(img.as_subclass(torch.Tensor), self.normalization), mask

    def _crop(self, x: torch.Tensor, mask: torch.Tensor | None, gen: torch.Generator | None):
        box = random_crop_box(x.shape[1], x.shape[2], self.crop, gen)
        out = crop_to_canvas(x, box, self.crop, 0.0)
        if mask is None:
            return out, None
        return out, crop_to_canvas(mask.as_subclass(torch.Tensor), box, self.crop, IGNORE_INDEX)[0]


class ClassificationTransform(_Augment):
    """uint8 (H, W, 3) RGB -> float32 (3, crop, crop) augmented, normalised image (PSA train_cls)."""

    def __init__(self, crop: int, resize_long: tuple[int, int] | None,
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None, flip: bool = True) -> None:
        super().__init__(crop, resize_long, flip, color_jitter, normalization, generator)

    def __call__(self, image: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        gen = generator if generator is not None else self.generator
        x, _ = self._geometric_and_color(image, None, gen)
        return self._crop(x, None, gen)[0]


def affinity_sample(image: torch.Tensor, low: torch.Tensor, high: torch.Tensor, crop: int, box: CropBox,
                    flip: bool, normalization: str, stride: int = STRIDE) -> tuple[torch.Tensor, torch.Tensor]:
    """One AffinityNet training sample from a given crop box and flip, as the original's
    ``VOC12AffDataset`` builds it (PSA ``train_aff.py``).

    ``image`` (3, H, W) uint8 (or 0..255 float) RGB; ``low`` / ``high`` (k+1, H, W) the dense-CRF
    scores of the low and the high background alpha, background first. The image and the scores
    are cropped together onto a crop x crop canvas (padding: black image, zero scores), the image
    is normalised, both are flipped left-right with ``flip``, the scores are averaged over
    stride x stride blocks and the confident-label rule (``crf.confident_labels``) is applied on
    that grid, so a cell's label is decided from its whole block. ``crop`` a multiple of
    ``stride``.

    Returns the input (3, crop, crop) float32 and the label (crop/stride, crop/stride) uint8:
    0 confident background, i the i-th class of the score stack, 255 unsure (only equality
    matters to the affinity labels).
    """
    x = normalize_chw(crop_to_canvas(image.to(torch.float32), box, crop, 0.0), normalization)
    scores = crop_to_canvas(torch.cat([low, high]).to(torch.float32), box, crop, 0.0)
    if flip:
        x, scores = x.flip(-1), scores.flip(-1)
    low_c, high_c = scores[:len(low)].numpy(), scores[len(low):].numpy()
    label = confident_labels(low_c, high_c, stride=stride)
    return x.contiguous(), torch.from_numpy(label)


class AffinityAugment(_Augment):
    """The AffinityNet training sample of one image with random augmentation (PSA
    ``train_aff.py``): optional rescale of image and scores (off in the original), colour jitter
    of the uint8 image, a random crop box and flip, then ``affinity_sample``.

    ``(image uint8 (H, W, 3), low, high float32 (k+1, H, W)) -> (input float32 (3, crop,
    crop), label uint8 (crop/8, crop/8))``. ``box`` / ``flip`` given to the call replace the
    random ones (to rebuild a recorded sample).
    """

    def __init__(self, crop: int, resize_long: tuple[int, int] | None, flip: bool,
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None, stride: int = STRIDE) -> None:
        super().__init__(crop, resize_long, flip, color_jitter, normalization, generator)
        if crop % stride:
            raise ValueError(f"crop {crop} must be a multiple of the stride {stride}")
        self.stride = stride

    def __call__(self, image: np.ndarray, low: np.ndarray, high: np.ndarray, generator: torch.Generator | None = None,
                 box: CropBox | None = None, flip: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if low.shape[1:] != image.shape[:2] or high.shape != low.shape:
            raise ValueError(f"scores {low.shape} / {high.shape} do not match the image {image.shape[:2]}")
        gen = generator if generator is not None else self.generator
        img = torch.from_numpy(_writable(image)).permute(2, 0, 1)
        scores = torch.from_numpy(_writable(np.concatenate([low, high]).astype(np.float32, copy=False)))
        size = self._random_size(*image.shape[:2], gen)
        if size is not None:
            img = _resize(img, size, InterpolationMode.BICUBIC)
            scores = _resize(scores, size, InterpolationMode.BILINEAR)
        img = _color_jitter(tv_tensors.Image(img), self.color_jitter, gen).as_subclass(torch.Tensor)
        if box is None:
            box = random_crop_box(img.shape[1], img.shape[2], self.crop, gen)
        if flip is None:
            flip = self._flips(gen)
        return affinity_sample(img, scores[:len(low)], scores[len(low):], self.crop, box, flip, self.normalization,
                               self.stride)


class SegmentationTransform(_Augment):
    """Joint augmentation of image + label map for the segmentation network (stage 5).

    ``(image uint8 (H, W, 3), label uint8 (H, W)) -> (image float32 (3, crop, crop), label
    uint8 (crop, crop))``: the classifier's steps (resize of the long side, flip, colour jitter,
    normalisation, crop), the label following every geometric one (nearest neighbour, 255
    padding).
    """

    def __init__(self, crop: int, resize_long: tuple[int, int] | None,
                 color_jitter: tuple[float, float, float, float], normalization: str = "imagenet",
                 generator: torch.Generator | None = None, flip: bool = True) -> None:
        super().__init__(crop, resize_long, flip, color_jitter, normalization, generator)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if label.shape[:2] != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
        gen = generator if generator is not None else self.generator
        x, mask = self._geometric_and_color(image, np.asarray(label, dtype=np.uint8), gen)
        return self._crop(x, mask, gen)


class IRNAugment(SegmentationTransform):
    """IRN's training sample of one image (IRN ``VOC12AffinityDataset``): the image and its
    confident label map rescaled by a random factor in ``rescale`` (bicubic / nearest), flipped,
    normalised and cropped together at a random place (padding: 0 / 255), then the label
    reduced to the stride-4 grid as IRN does (``boundary.reduce_label``).

    ``(image uint8 (H, W, 3), label uint8 (H, W)) -> (image float32 (3, crop, crop), label uint8
    (crop/4, crop/4))``: 0 background, class index + 1, 255 unsure.
    """

    def __init__(self, crop: int, rescale: tuple[float, float] | None, flip: bool, normalization: str = "imagenet",
                 generator: torch.Generator | None = None, stride: int = 4) -> None:
        super().__init__(crop, None, (0.0, 0.0, 0.0, 0.0), normalization, generator, flip)
        self.rescale, self.stride = rescale, stride

    @property
    def rescales(self) -> bool:
        return self.rescale is not None

    def _random_size(self, height: int, width: int, gen: torch.Generator | None) -> list[int] | None:
        if self.rescale is None:
            return None
        scale = _uniform(*self.rescale, gen)
        return [max(1, round(height * scale)), max(1, round(width * scale))]  # IRN's pil_rescale

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x, mask = super().__call__(image, label, generator)
        return x, torch.from_numpy(np.array(reduce_label(mask.numpy(), self.stride)))


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

