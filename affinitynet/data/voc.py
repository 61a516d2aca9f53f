"""A dataset in PASCAL VOC layout: classes, split lists, image-level labels, ground truth.

Layout under ``root`` (the VOC 2012 names)::

    JPEGImages/<name>.jpg             images (.jpeg / .png also accepted)
    Annotations/<name>.xml            object names -> image-level labels
    SegmentationClass/<name>.png      ground-truth label maps (palette PNG), optional
    SegmentationClassAug/<name>.png   SBD-augmented ground truth, used where the above is absent
    SegmentationObject/<name>.png     instance ids (palette PNG; 0 and 255 = no instance), optional
    ImageSets/Segmentation/<split>.txt
    classes.txt                       optional; one object class per line (default: VOC's 20)
    labels.json | labels.csv          optional image -> class names (instead of the XML)

Label maps: 0 = background, class index + 1 for objects, 255 = ignore. Class vectors have one
entry per object class (no background entry).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from affinitynet import artifacts
from affinitynet.algorithms.resize import resize_label, working_image
from affinitynet.config import DatasetConfig
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.images import exif_orientation, load_label_png, load_rgb, orient_like_image
from affinitynet.data.transforms import AffinityAugment, normalize
from affinitynet.errors import InputError

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

IMAGE_EXTS = (".jpg", ".jpeg", ".JPG", ".JPEG", ".png", ".PNG")
_AUTO_LABEL_FILES = ("labels.json", "labels.csv")
_CSV_HEADER_WORDS = {"image", "name", "filename", "file", "image_id", "id"}


def read_list(path: Path) -> list[str]:
    """Image names of a split list, in file order, duplicates dropped.

    Accepts plain ``name`` lines and PSA's ``/JPEGImages/name.jpg /SegmentationClassAug/name.png``
    lines (the stem of the first token is the name). Blank lines and ``#`` comments are skipped.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: split list does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read split list ({exc})") from None
    names: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token = line.split()[0]
        name = Path(token).stem if ("/" in token or token.endswith(IMAGE_EXTS)) else token
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def read_annotation(path: Path) -> list[str]:
    """Object class names of a VOC annotation XML, in file order (repeats kept).

    Every ``<object>``, including 'difficult' and 'truncated' ones, counts.
    """
    try:
        tree = ET.parse(path)
    except FileNotFoundError:
        raise InputError(f"{path}: annotation does not exist") from None
    except (ET.ParseError, OSError) as exc:
        raise InputError(f"{path}: cannot parse annotation XML ({exc})") from None
    return [(obj.findtext("name") or "").strip() for obj in tree.getroot().iter("object")]


class VOCDataset:
    """Read-only view of a dataset folder in VOC layout.

    Args:
        root: dataset folder.
        labels_file: optional JSON (``{"img": ["cat", "dog"]}``) or CSV (``img,cat dog`` — the
            first field is the image name, every further field is split on whitespace and ``;``,
            so ``img,cat;dog`` and ``img,cat,dog`` work too) mapping images to class names. When
            absent, ``root/labels.json`` or ``root/labels.csv`` is used if present, else
            ``Annotations/<name>.xml``.
        exif_transpose: read images upright by their EXIF orientation and turn their ground
            truth alike (default: the stored pixel grid, as the original and VOC's masks).
    """

    def __init__(self, root: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                 exif_transpose: bool = False) -> None:
        self.root = Path(root)
        self.exif_transpose = exif_transpose
        if not self.root.is_dir():
            raise InputError(f"{self.root}: dataset folder does not exist")
        self.classes: list[str] = self._read_classes()
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        if labels_file:
            self.labels_file: Path | None = Path(labels_file)
            if not self.labels_file.is_file():
                raise InputError(f"{self.labels_file}: labels file does not exist")
        else:
            self.labels_file = next((self.root / f for f in _AUTO_LABEL_FILES if (self.root / f).is_file()), None)
        self._file_labels: dict[str, list[str]] | None = None
        # class indices of the images whose XML was parsed (a tuple, ~100 B an image; the labels
        # file's table is in memory already, so its vectors are rebuilt per call instead of cached:
        # a cache of (C,) vectors grew by ~460 B per image, 56 MB per process at COCO's 122k images)
        self._label_cache: dict[str, tuple[int, ...]] = {}

    # -- classes and splits ------------------------------------------------------------------
    def _read_classes(self) -> list[str]:
        path = self.root / "classes.txt"
        if not path.is_file():
            return list(VOC_CLASSES)
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
        if names and names[0].lower() in ("background", "__background__"):
            names = names[1:]  # background is implicit (label 0), never an object class
        if not names:
            raise InputError(f"{path}: lists no classes")
        if len(set(names)) != len(names):
            raise InputError(f"{path}: a class name is listed twice")
        if len(names) > 254:
            raise InputError(f"{path}: {len(names)} classes do not fit in uint8 label maps (max 254)")
        return names

    @property
    def num_classes(self) -> int:
        """Number of object classes (background not counted)."""
        return len(self.classes)

    def identity(self, splits: Sequence[str] = ()) -> dict[str, Any]:
        """What the dataset's outputs depend on, wherever it lies: its classes, a digest of its
        labels file (or "xml" for Annotations/*.xml) and of each of ``splits``' lists."""
        def digest(path: Path) -> str:
            return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "absent"

        return {"classes": list(self.classes), "labels": digest(self.labels_file) if self.labels_file else "xml",
                "splits": {s: digest(self.split_path(s)) for s in splits}}

    def split_path(self, name: str) -> Path:
        return self.root / "ImageSets" / "Segmentation" / f"{name}.txt"

    def has_split(self, name: str) -> bool:
        return self.split_path(name).is_file()

    def split(self, name: str, check_images: bool = True) -> list[str]:
        """Image names of split ``name`` (``ImageSets/Segmentation/<name>.txt``).

        With ``check_images`` every listed image must have a file in ``JPEGImages``.
        """
        path = self.split_path(name)
        if not path.is_file():
            available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
            hint = f" (available: {', '.join(available)})" if available else ""
            raise InputError(f"{path}: split list '{name}' does not exist{hint}")
        names = read_list(path)
        if check_images:
            for n in names:
                self.image_path(n, where=path)
        return names

    # -- images --------------------------------------------------------------------------------
    def image_path(self, name: str, where: Path | None = None) -> Path:
        """Path of image ``name`` in ``JPEGImages`` (``.jpg`` first); InputError when missing."""
        folder = self.root / "JPEGImages"
        for ext in IMAGE_EXTS:
            p = folder / f"{name}{ext}"
            if p.is_file():
                return p
        listed = f" (listed in {where})" if where else ""
        raise InputError(f"{folder / (name + '.jpg')}: image '{name}' does not exist{listed}")

    def load_image(self, name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB image (stored pixel grid, or upright with ``exif_transpose``)."""
        return load_rgb(self.image_path(name), self.exif_transpose)

    def image_size(self, name: str) -> tuple[int, int]:
        """(H, W) of image ``name`` as ``load_image`` returns it, from its header (no decoding)."""
        path = self.image_path(name)
        try:
            with Image.open(path) as img:
                width, height = img.size
        except OSError as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None
        turned = self.exif_transpose and exif_orientation(path) in (5, 6, 7, 8)  # a quarter turn swaps the sides
        return (width, height) if turned else (height, width)

    def image_long_side(self, name: str) -> int:
        """The longer side of image ``name`` in px, from its header (no decoding); 0 when the
        file cannot be read (the stage that decodes it names the problem)."""
        try:
            with Image.open(self.image_path(name)) as img:
                return max(img.size)
        except (OSError, InputError):
            return 0

    # -- image-level labels ---------------------------------------------------------------------
    def _names_to_vector(self, names: Sequence[str], image: str, source: Path) -> np.ndarray:
        vec = np.zeros(self.num_classes, dtype=np.float32)
        for cname in names:
            idx = self._class_index.get(cname.strip())
            if idx is None:
                raise InputError(f"{source}: image '{image}' has unknown class '{cname}' "
                                 f"(known: {', '.join(self.classes)})")
            vec[idx] = 1.0
        return vec

    def _load_labels_file(self) -> dict[str, list[str]]:
        path = self.labels_file
        assert path is not None
        out: dict[str, list[str]] = {}
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: not a valid JSON labels file ({exc})".splitlines()[0]) from None
            if not isinstance(data, dict):
                raise InputError(f"{path}: expected a JSON object {{image: [class names]}}")
            for img, names in data.items():
                if isinstance(names, str):
                    names = re.split(r"[\s;,]+", names.strip()) if names.strip() else []
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise InputError(f"{path}: image '{img}': expected a list of class names, got {names!r}")
                out[str(img)] = names
        elif path.suffix.lower() == ".csv":
            try:
                with path.open(newline="", encoding="utf-8") as fh:
                    rows = list(csv.reader(fh))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise InputError(f"{path}: cannot read CSV labels file ({exc})") from None
            for k, row in enumerate(rows):
                if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                    continue
                img = row[0].strip()
                if k == 0 and img.lower() in _CSV_HEADER_WORDS:
                    continue  # header row
                names = [n for field in row[1:] for n in re.split(r"[\s;]+", field.strip()) if n]
                out.setdefault(img, []).extend(names)
        else:
            raise InputError(f"{path}: labels file must be .json or .csv")
        return out

    def _xml_names(self, name: str) -> list[str]:
        path = self.root / "Annotations" / f"{name}.xml"
        if not path.is_file():
            raise InputError(f"{path}: annotation of image '{name}' does not exist "
                             "(give a labels file or add Annotations/*.xml)")
        return read_annotation(path)

    def image_labels(self, name: str) -> np.ndarray:
        """(C,) float32 0/1 vector of the object classes present in image ``name``."""
        if self.labels_file is not None:
            if self._file_labels is None:
                self._file_labels = self._load_labels_file()
            if name not in self._file_labels:
                raise InputError(f"{self.labels_file}: has no labels for image '{name}'")
            return self._names_to_vector(self._file_labels[name], name, self.labels_file)
        cached = self._label_cache.get(name)
        if cached is None:
            xml = self.root / "Annotations" / f"{name}.xml"
            cached = tuple(np.flatnonzero(self._names_to_vector(self._xml_names(name), name, xml)).tolist())
            self._label_cache[name] = cached
        vec = np.zeros(self.num_classes, dtype=np.float32)
        vec[list(cached)] = 1.0
        return vec

    def label_names(self, name: str) -> list[str]:
        """Names of the classes present in image ``name`` (dataset order)."""
        vec = self.image_labels(name)
        return [c for c, v in zip(self.classes, vec) if v > 0]

    # -- ground truth --------------------------------------------------------------------------
    def gt_path(self, name: str) -> Path | None:
        """``SegmentationClass/<name>.png``, else ``SegmentationClassAug/<name>.png``, else None."""
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            p = self.root / folder / f"{name}.png"
            if p.is_file():
                return p
        return None

    def has_gt(self, name: str) -> bool:
        return self.gt_path(name) is not None

    def load_gt(self, name: str) -> np.ndarray:
        """(H, W) uint8 ground truth: 0 background, 1..C classes, 255 ignore."""
        path = self.gt_path(name)
        if path is None:
            raise InputError(f"{self.root / 'SegmentationClass' / (name + '.png')}: "
                             f"ground truth of image '{name}' does not exist")
        gt = load_label_png(path)
        if self.exif_transpose:  # drawn on the stored grid: turned as the image is
            gt = orient_like_image(gt, self.image_path(name))
        bad = (gt > self.num_classes) & (gt != IGNORE_INDEX)
        if bad.any():
            raise InputError(f"{path}: label value {int(gt[bad].max())} is not a class "
                             f"(0..{self.num_classes} or {IGNORE_INDEX})")
        return gt

    def objects_path(self, name: str) -> Path:
        return self.root / "SegmentationObject" / f"{name}.png"

    def has_objects(self, name: str) -> bool:
        """Whether image ``name`` has an instance map (and so instance ground truth)."""
        return self.objects_path(name).is_file()

    def load_objects(self, name: str) -> np.ndarray:
        """(H, W) uint8 instance map of ``SegmentationObject``: 0 background, 1..n one id per
        object, 255 no instance (VOC draws it on object borders); the class of each object is
        in the class map (``load_gt``) under it."""
        path = self.objects_path(name)
        if not path.is_file():
            raise InputError(f"{path}: instance ground truth of image '{name}' does not exist")
        objects = load_label_png(path)
        if self.exif_transpose:
            objects = orient_like_image(objects, self.image_path(name))
        return objects


# -----------------------------------------------------------------------------------------------
# The dataset of a run
# -----------------------------------------------------------------------------------------------
def open_dataset(settings: DatasetConfig) -> VOCDataset:
    """The dataset a run's ``dataset`` section names."""
    if not settings.root:
        raise InputError("no dataset given: set dataset.root (or --dataset DIR)")
    return VOCDataset(settings.root, settings.labels or None, settings.exif_transpose)


def inference_names(settings: DatasetConfig, voc: VOCDataset) -> list[str]:
    """Images that get CAMs and labels: the inference splits plus the evaluation split, each once."""
    seen: dict[str, None] = {}
    for split in [*settings.infer_splits, settings.eval_split]:
        for name in voc.split(split):
            seen.setdefault(name, None)
    return list(seen)


PROFILE_SAMPLE = 500  # images whose sizes are read for the profile (evenly spread)


def size_profile(voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """Long sides (px) of the images ``names``: min, 10th percentile, median, 90th percentile,
    max over up to 500 of them, evenly spread, read from the file headers (fast at any size)."""
    step = max(1, len(names) // PROFILE_SAMPLE)
    sides = np.array([s for s in (voc.image_long_side(n) for n in names[::step]) if s > 0] or [0])
    return {"images": len(names), "measured": int(len(names[::step])),
            "long_side": {key: int(np.percentile(sides, q)) for key, q in
                          (("min", 0), ("p10", 10), ("median", 50), ("p90", 90), ("max", 100))}}


# -----------------------------------------------------------------------------------------------
# Torch datasets for the training stages
# -----------------------------------------------------------------------------------------------
def _rescales(transform: object) -> bool:
    """Whether ``transform`` resizes the image itself (a random long side, or to its crop);
    an image it does not resize is used at the working size (``dataset.long_side``)."""
    return transform is None or getattr(transform, "rescales", True)


def _index_and_generator(item: int | tuple[int, int]) -> tuple[int, torch.Generator | None]:
    """Dataset items are an index, or (index, augmentation seed) from the training sampler
    (``training.EpochSampler``); the seed makes the augmentation a function of the item alone."""
    if isinstance(item, tuple):
        idx, seed = item
        return int(idx), torch.Generator().manual_seed(int(seed))
    return int(item), None


class ClassificationDataset(Dataset):
    """(image, image label, name) for training the classifier (paper Sec. 3.1).

    Items: image float32 (3, h, w) from ``transform`` (uint8 HWC -> tensor; default: ImageNet
    normalisation of the whole image), label float32 (C,) 0/1, name. Images without any class
    label carry no training signal for a multi-label classifier and are skipped with a warning.
    A transform that does not rescale gets the image at the working size ``long_side``.
    """

    def __init__(self, voc: VOCDataset, names: Sequence[str],
                 transform: Callable[[np.ndarray], torch.Tensor] | None = None, long_side: int = 0) -> None:
        self.voc = voc
        self.transform = transform
        self.long_side = 0 if _rescales(transform) else long_side
        kept, empty = [], []
        for n in names:
            (kept if voc.image_labels(n).any() else empty).append(n)
        if empty:
            msg = (f"{len(empty)} image(s) without class labels skipped for classification: "
                   f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}")
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
        self.names: list[str] = kept
        self.skipped: list[str] = empty

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        idx, gen = _index_and_generator(item)
        name = self.names[idx]
        image = working_image(self.voc.load_image(name), self.long_side)
        if self.transform is None:
            x = normalize(image, "imagenet")
        else:
            x = self.transform(image) if gen is None else self.transform(image, generator=gen)
        return x, torch.from_numpy(self.voc.image_labels(name)), name


class LabelMapDataset(Dataset):
    """(image, label map, name) for training the segmentation network (stage 5) on a folder of
    label maps (pseudo labels: 0 background, c + 1 class c, 255 unknown).

    Reads ``label_dir/<name>.png``, which must have the image's size. ``joint_transform(image
    uint8 HWC, label uint8 HW) -> (image tensor, label tensor)``; one that does not rescale
    gets both at the working size ``long_side``. Without a transform: the normalised full image
    and the full-resolution label.
    """

    def __init__(self, voc: VOCDataset, names: Sequence[str], label_dir: str | os.PathLike,
                 joint_transform: Callable[[np.ndarray, np.ndarray], tuple] | None = None,
                 long_side: int = 0) -> None:
        self.voc = voc
        self.names = list(names)
        self.label_dir = Path(label_dir)
        if not self.label_dir.is_dir():
            raise InputError(f"{self.label_dir}: label folder does not exist")
        missing = [n for n in self.names if not (self.label_dir / f"{n}.png").is_file()]
        if missing:
            raise InputError(f"{self.label_dir / (missing[0] + '.png')}: label map missing "
                             f"({len(missing)} of {len(self.names)} images have none)")
        self.joint_transform = joint_transform
        self.long_side = 0 if _rescales(joint_transform) else long_side

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        idx, gen = _index_and_generator(item)
        name = self.names[idx]
        image = self.voc.load_image(name)
        path = self.label_dir / f"{name}.png"
        label = load_label_png(path)
        if label.shape != image.shape[:2]:
            raise InputError(f"{path}: label size {label.shape[1]}x{label.shape[0]} differs from "
                             f"the image's {image.shape[1]}x{image.shape[0]}")
        image = working_image(image, self.long_side)
        label = resize_label(label, image.shape[:2])
        if self.joint_transform is None:
            return normalize(image, "imagenet"), torch.from_numpy(label), name
        if gen is None:
            out = self.joint_transform(image, label)
        else:
            out = self.joint_transform(image, label, generator=gen)
        return out[0], out[-1], name


class AffinitySampleDataset(Dataset):
    """(input, stride-8 confident label map, name) for training AffinityNet (paper Sec. 3.3),
    each sample built as the original's ``VOC12AffDataset`` builds it: the image at the working
    size ``long_side`` and the CRF scores of both alphas that make-aff-labels kept for it
    (``scores_file(name)``, ``artifacts.load_crf_scores``) go through ``augment``
    (``transforms.AffinityAugment``: jitter, joint crop, normalise, flip, 8x8 block average,
    the confident-label rule on that grid).

    Items: input float32 (3, crop, crop), label uint8 (crop/8, crop/8), name.
    """

    def __init__(self, voc: VOCDataset, names: Sequence[str], scores_file: Callable[[str], Path],
                 augment: AffinityAugment, long_side: int = 0) -> None:
        self.voc, self.names, self.scores_file = voc, list(names), scores_file
        self.augment, self.long_side = augment, long_side
        missing = [n for n in self.names if not scores_file(n).is_file()]
        if missing:
            raise InputError(f"{scores_file(missing[0])}: CRF scores missing ({len(missing)} of {len(self.names)} "
                             "images have none; run make-aff-labels first)")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 at the working size and its scores: low, high (k+1, H, W)."""
        image = working_image(self.voc.load_image(name), self.long_side)
        _, low, high = artifacts.load_crf_scores(self.scores_file(name), image.shape[:2])
        return image, low, high

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        idx, gen = _index_and_generator(item)
        name = self.names[idx]
        x, label = self.augment(*self.load(name), generator=gen)
        return x, label, name


class GroundTruthDataset(Dataset):
    """(image, ground-truth label map, name) for images with ground truth: the validation loss
    of the segmentation network (stage 5). ``joint_transform(image, label) -> (x, label)``."""

    def __init__(self, voc: VOCDataset, names: Sequence[str],
                 joint_transform: Callable[[np.ndarray, np.ndarray], tuple]) -> None:
        self.voc = voc
        self.names = [n for n in names if voc.has_gt(n)]
        self.joint_transform = joint_transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        name = self.names[idx]
        x, label = self.joint_transform(self.voc.load_image(name), self.voc.load_gt(name))
        return x, label, name
