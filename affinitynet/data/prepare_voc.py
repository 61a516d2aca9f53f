"""Split lists, image labels and SBD mask conversion for PASCAL VOC 2012 + SBD.

Inputs (the official archives, unpacked):
- VOC 2012: ``VOCdevkit/VOC2012`` with ``JPEGImages``, ``Annotations``, ``SegmentationClass``
  and ``ImageSets/Segmentation/{train,val}.txt`` (1,464 / 1,449 images);
- SBD (Hariharan et al. 2011): ``benchmark_RELEASE/dataset`` with ``train.txt``, ``val.txt`` and
  ``cls/<name>.mat`` (a ``GTcls`` struct whose ``Segmentation`` field is the class mask).

Outputs under ``out`` (default: the VOC root itself):
- ``ImageSets/Segmentation/train_aug.txt`` = (SBD train ∪ SBD val ∪ VOC train) − VOC val, sorted
  (10,582 images on the real data, the paper's training set), next to VOC's ``train``/``val``;
- ``classes.txt`` (VOC's 20 classes) and ``labels.json`` (image -> class names of every listed
  image, from its ``Annotations`` XML, so later stages need not parse 12k XML files);
- with ``convert_sbd``: ``SegmentationClassAug/<name>.png`` palette PNGs from the SBD masks,
  VOC's own ``SegmentationClass`` PNGs taking precedence where they exist.
When ``out`` is another folder, ``JPEGImages``, ``Annotations`` and ``SegmentationClass`` are
linked there (symlinks) so ``out`` is a complete dataset root.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import scipy.io

from affinitynet import artifacts
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import VOC_CLASSES, read_annotation, read_list
from affinitynet.errors import InputError

_VOC_MARKERS = ("JPEGImages", "ImageSets")


def resolve_voc_root(path: str | os.PathLike) -> Path:
    """The ``VOC2012`` folder given it or a parent (``VOCdevkit`` or the folder above)."""
    p = Path(path)
    for cand in (p, p / "VOC2012", p / "VOCdevkit" / "VOC2012"):
        if all((cand / m).is_dir() for m in _VOC_MARKERS):
            return cand
    raise InputError(f"{p}: not a VOC 2012 folder (expected JPEGImages/ and ImageSets/ in it, "
                     "in VOC2012/ or in VOCdevkit/VOC2012/)")


def resolve_sbd_root(path: str | os.PathLike) -> Path:
    """SBD's ``dataset`` folder given it, ``benchmark_RELEASE`` or the folder above."""
    p = Path(path)
    for cand in (p, p / "dataset", p / "benchmark_RELEASE" / "dataset"):
        if (cand / "train.txt").is_file() and (cand / "cls").is_dir():
            return cand
    raise InputError(f"{p}: not an SBD folder (expected train.txt and cls/ in it, in dataset/ "
                     "or in benchmark_RELEASE/dataset/)")


def read_sbd_mask(path: str | os.PathLike, num_classes: int = len(VOC_CLASSES)) -> np.ndarray:
    """(H, W) uint8 class mask (0 background, 1..20) from an SBD ``cls/<name>.mat`` file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SBD mask file does not exist")
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a bad file
        raise InputError(f"{path}: cannot read .mat file ({exc})".splitlines()[0]) from None
    gt = mat.get("GTcls")
    seg = getattr(gt, "Segmentation", None) if gt is not None else None
    if seg is None:
        raise InputError(f"{path}: no GTcls.Segmentation field (not an SBD cls/*.mat file?)")
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise InputError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected (H, W)")
    if seg.size and (seg.min() < 0 or ((seg > num_classes) & (seg != 255)).any()):
        raise InputError(f"{path}: mask values outside 0..{num_classes} (max {int(seg.max())})")
    return seg.astype(np.uint8)


def _link_into(out: Path, voc: Path) -> None:
    for folder in ("JPEGImages", "Annotations", "SegmentationClass"):
        src, dst = voc / folder, out / folder
        if src.is_dir() and not dst.exists():
            try:
                dst.symlink_to(src.resolve(), target_is_directory=True)
            except OSError as exc:
                warnings.warn(f"{dst}: could not link to {src} ({exc}); copy it there by hand", stacklevel=2)


def prepare_voc(voc_root: str | os.PathLike, sbd_root: str | os.PathLike | None = None,
                out: str | os.PathLike | None = None, convert_sbd: bool = False) -> dict:
    """Write the train_aug list, classes.txt, labels.json (and SBD PNGs); return counts."""
    voc = resolve_voc_root(voc_root)
    out_root = Path(out) if out else voc
    sets = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_list(sets / "train.txt"), read_list(sets / "val.txt")
    if sbd_root:
        sbd = resolve_sbd_root(sbd_root)
        sbd_train = read_list(sbd / "train.txt")
        sbd_val = read_list(sbd / "val.txt") if (sbd / "val.txt").is_file() else []
    else:
        sbd, sbd_train, sbd_val = None, [], []
        warnings.warn("no SBD folder given: train_aug = VOC train only", stacklevel=2)
    train_aug = sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - set(voc_val))
    labels = _image_labels(voc, sorted(set(train_aug) | set(voc_train) | set(voc_val)))
    out_root.mkdir(parents=True, exist_ok=True)
    out_sets = out_root / "ImageSets" / "Segmentation"
    artifacts.write_lines(out_sets / "train_aug.txt", train_aug)
    if out_root.resolve() != voc.resolve():
        artifacts.write_lines(out_sets / "train.txt", voc_train)
        artifacts.write_lines(out_sets / "val.txt", voc_val)
        _link_into(out_root, voc)
    artifacts.write_lines(out_root / "classes.txt", VOC_CLASSES)
    artifacts.write_bytes(out_root / "labels.json", (json.dumps(labels, indent=0, sort_keys=True) + "\n").encode("utf-8"))
    converted = copied = 0
    if convert_sbd:
        if sbd is None:
            raise InputError("prepare-voc: --convert-sbd needs the SBD folder (--sbd-root)")
        converted, copied = _augmented_masks(voc, sbd, out_root / "SegmentationClassAug", sorted(set(sbd_train) | set(sbd_val)))
    return {"out": str(out_root), "train_aug": len(train_aug), "train": len(voc_train), "val": len(voc_val),
            "sbd_train": len(sbd_train), "sbd_val": len(sbd_val), "labelled_images": len(labels),
            "sbd_converted": converted, "voc_masks_copied": copied}


def _image_labels(voc: Path, listed: list[str]) -> dict[str, list[str]]:
    """Image -> its classes (VOC order) from the XML annotations of ``listed``; every image and
    annotation must exist and name only VOC classes."""
    missing = [n for n in listed if not (voc / "JPEGImages" / f"{n}.jpg").is_file()]
    if missing:
        raise InputError(f"{voc / 'JPEGImages' / (missing[0] + '.jpg')}: {len(missing)} listed "
                         f"image(s) missing from JPEGImages (first: {missing[0]})")
    known = set(VOC_CLASSES)
    labels: dict[str, list[str]] = {}
    for n in listed:
        xml = voc / "Annotations" / f"{n}.xml"
        if not xml.is_file():
            raise InputError(f"{xml}: annotation of image '{n}' does not exist")
        names = read_annotation(xml)
        for c in names:
            if c not in known:
                raise InputError(f"{xml}: image '{n}' has unknown class '{c}'")
        labels[n] = sorted(set(names), key=VOC_CLASSES.index)
    return labels


def _augmented_masks(voc: Path, sbd: Path, aug: Path, sbd_names: list[str]) -> tuple[int, int]:
    """``SegmentationClassAug``: VOC's own masks copied (they win: finer, with 255 borders),
    then the SBD masks of the other images converted; returns (converted, copied)."""
    aug.mkdir(parents=True, exist_ok=True)
    voc_gt = voc / "SegmentationClass"
    voc_pngs = {p.stem: p for p in voc_gt.glob("*.png")} if voc_gt.is_dir() else {}
    for n, src in sorted(voc_pngs.items()):
        shutil.copyfile(src, aug / f"{n}.png")
    converted = 0
    for n in sbd_names:
        if n not in voc_pngs:
            save_label_png(aug / f"{n}.png", read_sbd_mask(sbd / "cls" / f"{n}.mat"))
            converted += 1
    return converted, len(voc_pngs)
