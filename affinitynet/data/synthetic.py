"""The built-in synthetic datasets in VOC layout: ``generate`` writes one of the families
(``families``: "shapes", ``synthetic_shapes``; "clutter", ``synthetic_clutter``), with image-level
labels (VOC XML), ground truth (palette PNGs of classes and of instances), split lists and the class list.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from affinitynet import artifacts
from affinitynet.data.images import save_label_png
from affinitynet.data.synthetic_clutter import clutter_class_names, make_clutter_sample
from affinitynet.data.synthetic_shapes import SyntheticSample, class_names, make_sample

__all__ = ["generate", "families", "make_sample", "class_names", "make_clutter_sample", "clutter_class_names"]


def _annotation_xml(name: str, sample: SyntheticSample, classes: list[str]) -> str:
    height, width = sample.label.shape
    objs = "".join(
        f"\t<object>\n\t\t<name>{classes[c]}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
        f"\t\t\t<xmin>{x0 + 1}</xmin>\n\t\t\t<ymin>{y0 + 1}</ymin>\n"
        f"\t\t\t<xmax>{x1 + 1}</xmax>\n\t\t\t<ymax>{y1 + 1}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        for c, (x0, y0, x1, y1) in zip(sample.object_classes, sample.boxes))
    return (f"<annotation>\n\t<folder>synthetic</folder>\n\t<filename>{name}.jpg</filename>\n"
            f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n"
            f"\t\t<depth>3</depth>\n\t</size>\n\t<segmented>1</segmented>\n{objs}</annotation>\n")


def _rescaled(s: SyntheticSample, scale: float) -> SyntheticSample:
    """``s`` with its image, label map, object masks and boxes resized by ``scale`` (the cue
    masks and distractors are dropped)."""
    if scale == 1.0:
        return s
    height, width = s.label.shape
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    boxes = [tuple(int(v * scale) for v in box) for box in s.boxes]
    masks = [np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for m in s.object_masks]
    return SyntheticSample(image=np.asarray(Image.fromarray(s.image).resize(size, Image.BICUBIC)),
                           label=np.asarray(Image.fromarray(s.label).resize(size, Image.NEAREST)),
                           object_classes=s.object_classes, object_masks=masks, boxes=boxes)


def object_map(sample: SyntheticSample) -> np.ndarray:
    """(H, W) uint8 instance map in VOC's ``SegmentationObject`` convention: 0 background,
    object i (in drawing order) -> i + 1. The objects never overlap, and the class map holds
    each one's class under it."""
    objects = np.zeros(sample.label.shape, np.uint8)
    for i, mask in enumerate(sample.object_masks):
        objects[mask & (sample.label > 0)] = i + 1
    return objects


def families() -> dict[str, tuple[Callable[..., SyntheticSample], Callable[[int], list[str]], int]]:
    """Family name -> (sample function, class names function, default class count)."""
    return {"shapes": (make_sample, class_names, 5), "clutter": (make_clutter_sample, clutter_class_names, 6)}


def generate(out: str | os.PathLike, n_train: int, n_val: int, seed: int = 0, family: str = "shapes",
             num_classes: int | None = None, scale: float = 1.0, **sample_kw) -> dict:
    """Write a synthetic dataset of ``family`` ("shapes": ``synthetic_shapes``; "clutter":
    ``synthetic_clutter``) in VOC layout under ``out``; return a summary dict. ``scale`` resizes
    every rendered image (bicubic) and its ground truth (nearest), e.g. 0.55 for images of
    110-176 px; ``sample_kw`` go to the family's sample function (e.g. ``max_objects``).

    Writes ``JPEGImages/*.jpg`` (quality 95), ``Annotations/*.xml``, ``SegmentationClass/*.png``
    (VOC palette), ``SegmentationObject/*.png`` (instance ids, ``object_map``),
    ``ImageSets/Segmentation/{train,val,train_aug}.txt`` (``train_aug`` = ``train`` so the
    pipeline's VOC defaults apply) and ``classes.txt``. Image names: ``train_00000``,
    ``val_00000``, ...
    """
    make, names_of, num_classes = _family(family, num_classes, sample_kw)
    start = time.perf_counter()
    root = Path(out)
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject",
              "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    classes = names_of(num_classes)
    artifacts.write_lines(root / "classes.txt", classes)
    kept: list[tuple[tuple[int, int], list[int]]] = []  # (size, object classes) of every image
    lists: dict[str, list[str]] = {}
    for split, count in (("train", n_train), ("val", n_val)):
        lists[split] = [f"{split}_{i:05d}" for i in range(int(count))]
        for i, name in enumerate(lists[split]):
            sample = _rescaled(make(seed, split, i, num_classes, **sample_kw), scale)
            _write_sample(root, name, sample, classes)
            kept.append((sample.label.shape, sample.object_classes))
    lists["train_aug"] = lists["train"]
    for split, names in lists.items():
        artifacts.write_lines(root / "ImageSets" / "Segmentation" / f"{split}.txt", names)
    sizes = [size for size, _ in kept]
    return {
        "root": str(root),
        "family": family,
        "classes": classes,
        "train": len(lists["train"]),
        "val": len(lists["val"]),
        "seed": int(seed),
        "objects": sum(len(objects) for _, objects in kept),
        "images_per_class": {c: sum(k in objects for _, objects in kept) for k, c in enumerate(classes)},
        "min_side": int(min((min(s) for s in sizes), default=0)),
        "max_side": int(max((max(s) for s in sizes), default=0)),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _family(family: str, num_classes: int | None, sample_kw: dict) -> tuple[Callable, Callable, int]:
    """(sample function, class names function, class count) of ``family``; ValueError for
    settings it cannot draw."""
    if family not in families():
        raise ValueError(f"unknown synthetic family {family!r}; choose one of {', '.join(families())}")
    make, names_of, default_classes = families()[family]
    num_classes = default_classes if num_classes is None else num_classes
    if num_classes < 1 or num_classes > 254:
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
    if sample_kw.get("max_objects", 1) < 1:
        raise ValueError(f"max_objects must be >= 1, got {sample_kw['max_objects']}")
    return make, names_of, num_classes


def _write_sample(root: Path, name: str, sample: SyntheticSample, classes: list[str]) -> None:
    """The image (JPEG, quality 95), its ground truth (classes and instances) and its annotation."""
    Image.fromarray(sample.image).save(root / "JPEGImages" / f"{name}.jpg", format="JPEG", quality=95)
    save_label_png(root / "SegmentationClass" / f"{name}.png", sample.label)
    save_label_png(root / "SegmentationObject" / f"{name}.png", object_map(sample))
    (root / "Annotations" / f"{name}.xml").write_text(_annotation_xml(name, sample, classes), encoding="utf-8")


def blurred_truth_cams(voc: Any, name: str, blur: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """CAMs of another quality than ours, for trying ``import-cams``: each labelled class's
    ground-truth mask blurred (Gaussian, sigma = ``blur`` x the long side) and divided by its
    maximum; (keys (k,), maps (k, H, W) float32 in [0, 1]). Like many CAMs they spill over the
    object's edges and fade at thin parts."""
    from scipy.ndimage import gaussian_filter

    keys = np.flatnonzero(voc.image_labels(name))
    gt = voc.load_gt(name)
    sigma = blur * max(gt.shape)
    maps = np.stack([gaussian_filter((gt == k + 1).astype(np.float32), sigma) for k in keys])
    return keys, maps / (maps.max(axis=(1, 2), keepdims=True) + 1e-5)
