"""Split lists, image labels, image links and semantic ground truth for MS-COCO 2014.

Input (the official archives, unpacked) under ``coco_root``::

    train2014/COCO_train2014_<id>.jpg         82,783 images
    val2014/COCO_val2014_<id>.jpg             40,504 images
    annotations/instances_train2014.json      instance annotations (polygons, RLE, crowd regions)
    annotations/instances_val2014.json

Output under ``out`` (default: ``coco_root`` itself), a dataset folder in VOC layout
(``affinitynet.data.voc``)::

    classes.txt                               the 80 category names, ordered by category id
                                              (COCO's order); class index = position, label = index + 1
    labels.json                               image -> names of its categories (every image)
    JPEGImages/<name>.jpg                     symlink to train2014/ or val2014/ (hard link, then a
                                              copy, only where the file system has no symlinks)
    SegmentationClass/<name>.png              semantic ground truth, palette PNG (0 background,
                                              1..80 categories, 255 crowd regions)
    SegmentationObject/<name>.png             instance ground truth as VOC's (0 background, 1.. one
                                              id per non-crowd instance, 255 crowd regions), for
                                              instance mAP (``evaluate --instances``, method irn)
    ImageSets/Segmentation/train.txt          train2014 images with at least one annotation (82,081)
    ImageSets/Segmentation/val.txt            val2014 images with at least one annotation (40,137)
    ImageSets/Segmentation/no_objects_{train,val}.txt   the images without any annotation (left out)

``<name>`` is the image file's stem (``COCO_train2014_000000000009``). Image-level labels are the
categories of all the image's annotations, crowd ones included (a crowd of people is people).

Rasterising (``rasterize``), one deterministic rule: every non-crowd instance is rasterised with
pycocotools (polygons and RLE, compressed or not); where instances overlap the one with the
*smaller* area in pixels (of its own rasterised mask) wins, and between equal areas the lower
annotation id wins (the larger instance is usually the one behind: a table under the plates).
Crowd regions are 255 (ignored by the evaluation) wherever no instance covers the pixel. The
instance map follows the same rule, numbering the instances by annotation id.
Polygons with fewer than three points have no area and are skipped.

EXIF: COCO's annotations are drawn on the stored pixel grid, which is what the pipeline reads
(``images.load_rgb`` ignores the EXIF orientation unless ``dataset.exif_transpose`` is set, and
then turns the image and its mask alike), so masks are written on that grid as they are; the
stored size must equal the annotation file's.

The split lists, ``classes.txt`` and ``labels.json`` are written last: a folder that has them is
complete. Masks are written atomically and a mask file that exists is done, so a rerun after an
interruption writes only the missing ones.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from affinitynet import artifacts
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.images import save_label_png
from affinitynet.data.voc import IMAGE_EXTS
from affinitynet.errors import InputError
from affinitynet.parallel import map_in_processes, usable_cores

OBJECT_DIR = "SegmentationObject"
MAX_OBJECTS = 254  # instance ids of a uint8 SegmentationObject PNG (0 background, 255 ignore)

#: (split name in the output, image folder, annotation file) of COCO 2014
SPLITS: tuple[tuple[str, str, str], ...] = (
    ("train", "train2014", "instances_train2014.json"),
    ("val", "val2014", "instances_val2014.json"),
)
_IMAGE_SUFFIXES = tuple(dict.fromkeys(ext.lower() for ext in IMAGE_EXTS))  # what VOCDataset.image_path finds


@dataclass(frozen=True, slots=True)
class Instance:
    """One annotation, reduced to what the mask needs (the rest of the JSON is dropped)."""

    id: int
    label: int  # class index + 1
    crowd: bool
    segmentation: Any  # list of polygons, or an RLE dict {"counts", "size"}


@dataclass
class SplitAnnotations:
    """The parts of one ``instances_*.json`` that the dataset needs."""

    path: Path
    categories: list[tuple[int, str]]  # (category id, name), by id
    images: list[dict[str, Any]]  # {"id", "name", "file", "height", "width"}, by image id
    instances: dict[int, list[Instance]] = field(default_factory=dict)  # image id -> its annotations


# -- reading the annotation file ---------------------------------------------------------------
def resolve_coco_root(path: str | os.PathLike) -> Path:
    """``path`` when it holds COCO 2014 (both image folders and both instance files)."""
    root = Path(path)
    missing = [p for _, folder, ann in SPLITS for p in (root / folder, root / "annotations" / ann)
               if not p.exists()]
    if missing:
        raise InputError(f"{root}: not a COCO 2014 folder ({missing[0].relative_to(root)} is missing; expected "
                         "train2014/, val2014/ and annotations/instances_{train,val}2014.json)")
    return root


def _int(value: Any, what: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise InputError(f"{path}: {what} is {value!r}, expected an integer")
    return int(value)


def read_instances(path: str | os.PathLike) -> SplitAnnotations:
    """Parse and check an ``instances_*.json``; every problem is one InputError naming the file.

    Checked: valid JSON with ``images``, ``annotations`` and ``categories`` lists; integer ids,
    positive image sizes, image file names with an image suffix and no whitespace, every
    annotation's image and category known, segmentations a list of polygons (even length) or an
    RLE dict whose ``size`` is the image's (H, W).
    """
    path = Path(path)
    data = artifacts.read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: no '{key}' list (not a COCO instances file?)")
    try:
        categories = sorted((_int(c["id"], "a category id", path), str(c["name"])) for c in data["categories"])
        images = []
        for im in data["images"]:
            file_name = str(im["file_name"])
            name = Path(file_name).stem
            if Path(file_name).suffix.lower() not in _IMAGE_SUFFIXES or not name or any(ch.isspace() for ch in name):
                raise InputError(f"{path}: image file name {file_name!r} is not usable "
                                 f"(needs a {'/'.join(_IMAGE_SUFFIXES)} suffix and no whitespace)")
            height, width = _int(im["height"], "an image height", path), _int(im["width"], "an image width", path)
            if height < 1 or width < 1:
                raise InputError(f"{path}: image {file_name} has size {width}x{height}")
            images.append({"id": _int(im["id"], "an image id", path), "name": name, "file": file_name,
                           "height": height, "width": width})
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: an image or category entry lacks a field or has a wrong type ({exc!r})") from None
    if len({c for c, _ in categories}) != len(categories) or len({n for _, n in categories}) != len(categories):
        raise InputError(f"{path}: a category id or name is listed twice")
    images.sort(key=lambda im: im["id"])
    by_id = {im["id"]: im for im in images}
    if len(by_id) != len(images):
        raise InputError(f"{path}: an image id is listed twice")
    label_of = {cid: k + 1 for k, (cid, _) in enumerate(categories)}
    instances: dict[int, list[Instance]] = {}
    for ann in data["annotations"]:
        inst = _instance(ann, by_id, label_of, path)
        instances.setdefault(int(ann["image_id"]), []).append(inst)
    return SplitAnnotations(path, categories, images, instances)


def _instance(ann: Any, images: dict[int, dict], label_of: dict[int, int], path: Path) -> Instance:
    """Check one annotation's fields (not every coordinate: pycocotools does that) -> Instance."""
    if not isinstance(ann, dict):
        raise InputError(f"{path}: an annotation is {type(ann).__name__}, expected an object")
    where = f"annotation {ann.get('id')!r}"
    for key in ("id", "image_id", "category_id", "segmentation"):
        if key not in ann:
            raise InputError(f"{path}: {where} has no '{key}'")
    ann_id = _int(ann["id"], f"{where}: id", path)
    image = images.get(_int(ann["image_id"], f"{where}: image_id", path))
    if image is None:
        raise InputError(f"{path}: {where} refers to image {ann['image_id']}, which is not in 'images'")
    label = label_of.get(_int(ann["category_id"], f"{where}: category_id", path))
    if label is None:
        raise InputError(f"{path}: {where} has category {ann['category_id']}, which is not in 'categories'")
    crowd = _int(ann.get("iscrowd", 0), f"{where}: iscrowd", path)
    if crowd not in (0, 1):
        raise InputError(f"{path}: {where}: iscrowd is {crowd}, expected 0 or 1")
    seg = ann["segmentation"]
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not isinstance(seg["counts"], (str, bytes, list)):
            raise InputError(f"{path}: {where}: RLE segmentation without 'counts' (a string or a list)")
        if not isinstance(size, list) or size != [image["height"], image["width"]]:
            raise InputError(f"{path}: {where}: RLE size {size} differs from image {image['file']}'s "
                             f"[{image['height']}, {image['width']}]")
    elif isinstance(seg, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in seg):
            raise InputError(f"{path}: {where}: polygon segmentation must be a list of [x1, y1, x2, y2, ...] lists")
    else:
        raise InputError(f"{path}: {where}: segmentation is {type(seg).__name__}, expected polygons or RLE")
    return Instance(ann_id, label, bool(crowd), seg)


# -- rasterising ---------------------------------------------------------------------------------
def instance_mask(seg: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of one segmentation: polygons (x, y pairs in pixels), uncompressed RLE
    (``counts`` a list, column-major run lengths) or compressed RLE (``counts`` a string)."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):
        # fewer than 3 points: no area (and pycocotools would read a 4-number list as a box)
        polygons = [[float(v) for v in p] for p in seg if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = {"size": [height, width], "counts": seg["counts"]}
    return artifacts.decode_rle(rle)


def rasterize(instances: Iterable[Instance], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 semantic label map of one image's annotations: 0 background, class label
    where an instance is (overlaps: the smaller instance in pixels wins, then the lower
    annotation id), 255 in crowd regions that no instance covers."""
    return rasterize_both(instances, height, width)[0]


def rasterize_both(instances: Iterable[Instance], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(semantic label map as ``rasterize``, instance map) of one image: the instance map
    (VOC's ``SegmentationObject``) numbers the non-crowd instances 1, 2, ... in annotation-id
    order with the same overlap rule, 0 elsewhere and 255 in crowd regions that no instance
    covers; instances beyond the 254th (uint8) are 255 too."""
    label = np.zeros((height, width), dtype=np.uint8)
    objects_map = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    objects = []
    for inst in instances:
        mask = instance_mask(inst.segmentation, height, width)
        if inst.crowd:
            crowd |= mask
        else:
            objects.append((int(mask.sum()), inst.id, inst.label, mask))
    number = {inst_id: i + 1 if i < MAX_OBJECTS else IGNORE_INDEX
              for i, inst_id in enumerate(sorted(o[1] for o in objects))}
    # painted largest first, so the smaller one ends on top; equal areas: higher id first
    for _, inst_id, cls, mask in sorted(objects, key=lambda o: (-o[0], -o[1])):
        label[mask] = cls
        objects_map[mask] = number[inst_id]
    uncovered = crowd & (label == 0)
    label[uncovered] = IGNORE_INDEX
    objects_map[uncovered] = IGNORE_INDEX
    return label, objects_map


# -- one image's mask (run in worker processes) ------------------------------------------------
@dataclass(frozen=True)
class MaskTask:
    """What a worker needs to write one ground-truth PNG."""

    name: str
    image: Path  # the source image (its header is read: its size)
    height: int
    width: int
    instances: tuple[Instance, ...]
    out: Path  # SegmentationClass/<name>.png
    objects_out: Path  # SegmentationObject/<name>.png
    annotations: Path  # the annotation file, for error messages


def stored_size(path: Path) -> tuple[int, int]:
    """(width, height) of the stored pixel grid, from the image's header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise InputError(f"{path}: image does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def write_mask(task: MaskTask) -> str:
    """Rasterise ``task``'s annotations on the image's stored pixel grid and write the palette
    PNGs (instances, then classes) atomically. Returns the image name."""
    size = stored_size(task.image)
    if size != (task.width, task.height):
        raise InputError(f"{task.image}: image is {size[0]}x{size[1]} px, but {task.annotations} "
                         f"says {task.width}x{task.height}")
    try:
        label, objects = rasterize_both(task.instances, task.height, task.width)
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise InputError(f"{task.annotations}: a segmentation of image {task.image.name} cannot be "
                         f"rasterised ({exc})") from None
    save_label_png(task.objects_out, objects)
    save_label_png(task.out, label)  # last: it marks the image done
    return task.name


# -- images: links into JPEGImages/ ------------------------------------------------------------
def _entries(folder: Path) -> set[str]:
    """Names in ``folder`` (one directory listing: no stat per image)."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as it:
        return {e.name for e in it}


def link_images(sources: list[tuple[Path, str]], folder: Path) -> dict[str, int]:
    """Make ``folder/<file name>`` point to each source image: a symlink to its absolute path;
    a hard link, else a copy, where symlinks fail. Existing correct links are kept, wrong ones
    replaced. Returns counts {"symlink", "hardlink", "copy", "kept"}."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = _entries(folder)
    counts = {"symlink": 0, "hardlink": 0, "copy": 0, "kept": 0}
    use_symlinks = True
    for src, file_name in sources:
        dst = folder / file_name
        target = str(src)
        if file_name in existing:
            if dst.is_symlink():
                if os.readlink(dst) == target:
                    counts["kept"] += 1
                    continue
                dst.unlink()  # points elsewhere (the COCO folder moved): relink
            else:
                counts["kept"] += 1  # a hard link or copy from an earlier run
                continue
        if use_symlinks:
            try:
                os.symlink(target, dst)
                counts["symlink"] += 1
                continue
            except OSError as exc:
                use_symlinks = False  # the file system has none: do not try 120,000 times
                warnings.warn(f"{folder}: symlinks are not possible here ({exc}); using hard links or copies",
                              stacklevel=2)
        try:
            os.link(src, dst)
            counts["hardlink"] += 1
        except OSError:
            with artifacts.atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            counts["copy"] += 1
    return counts


# -- the whole preparation -----------------------------------------------------------------------
def _tasks(split: SplitAnnotations, with_objects: list[dict[str, Any]], image_dir: Path, out_root: Path
           ) -> Iterator[MaskTask]:
    """The images whose masks are not written yet: done means both PNGs (so a folder prepared
    before SegmentationObject existed gets its instance maps)."""
    gt_dir, objects_dir = out_root / "SegmentationClass", out_root / OBJECT_DIR
    done = _entries(gt_dir) & _entries(objects_dir)
    for im in with_objects:
        file_name = f"{im['name']}.png"
        if file_name not in done:
            yield MaskTask(im["name"], image_dir / im["file"], im["height"], im["width"],
                           tuple(split.instances[im["id"]]), gt_dir / file_name, objects_dir / file_name, split.path)


def prepare_coco(coco_root: str | os.PathLike, out: str | os.PathLike | None = None, processes: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Write the VOC-layout dataset of COCO 2014 (module docstring) into ``out`` (default:
    ``coco_root``); ``processes`` mask-writing processes (0 = every core). Returns counts."""
    root = resolve_coco_root(coco_root)
    out_root = Path(out) if out else root
    gt_dir, jpeg_dir = out_root / "SegmentationClass", out_root / "JPEGImages"
    for folder in (gt_dir, out_root / OBJECT_DIR):
        folder.mkdir(parents=True, exist_ok=True)
        artifacts.remove_stale_tmp(folder)  # of a killed run
    artifacts.remove_stale_tmp(jpeg_dir)
    categories: list[tuple[int, str]] | None = None
    lists: dict[str, list[str]] = {}
    labels: dict[str, list[str]] = {}
    summary: dict[str, Any] = {"out": str(out_root), "links": {"symlink": 0, "hardlink": 0, "copy": 0, "kept": 0}}
    # one split at a time: only one parsed annotation file is in memory
    for split_name, folder, ann_file in SPLITS:
        split = read_instances(root / "annotations" / ann_file)
        if categories is not None and split.categories != categories:
            raise InputError(f"{split.path}: its categories differ from those of "
                             f"{root / 'annotations' / SPLITS[0][2]}")
        categories = split.categories
        summary.update(_prepare_split(split, split_name, (root / folder).resolve(), out_root, labels, lists,
                                      summary["links"], processes or usable_cores(), progress))
        del split  # the parsed file, before the next one is read
    assert categories is not None
    # written last: a folder with split lists is complete
    artifacts.write_lines(out_root / "classes.txt", (name for _, name in categories))
    artifacts.write_bytes(out_root / "labels.json", (json.dumps(labels, indent=0) + "\n").encode("utf-8"))
    for split_name, names in lists.items():
        artifacts.write_lines(out_root / "ImageSets" / "Segmentation" / f"{split_name}.txt", names)
    summary["classes"] = len(categories)
    return summary


def _prepare_split(split: SplitAnnotations, split_name: str, image_dir: Path, out_root: Path,
                   labels: dict[str, list[str]], lists: dict[str, list[str]], links: dict[str, int], processes: int,
                   progress: bool) -> dict[str, int]:
    """One split: its images' labels (into ``labels``), links and masks; its lists (into
    ``lists``, written by the caller) and link counts (added to ``links``). Returns its counts."""
    present = _entries(image_dir)
    with_objects, without = [], []
    for im in split.images:
        if im["name"] in labels:
            raise InputError(f"{split.path}: image name {im['name']} is used twice (also in another split)")
        instances = split.instances.get(im["id"], [])
        labels[im["name"]] = [split.categories[k - 1][1] for k in sorted({i.label for i in instances})]
        (with_objects if instances else without).append(im)
    missing = [im["file"] for im in with_objects if im["file"] not in present]
    if missing:
        raise InputError(f"{image_dir / missing[0]}: image listed in {split.path} does not exist "
                         f"({len(missing)} of {len(with_objects)} images missing)")
    counts = link_images([(image_dir / im["file"], Path(im["file"]).name) for im in with_objects],
                         out_root / "JPEGImages")
    for key, value in counts.items():
        links[key] += value
    tasks = list(_tasks(split, with_objects, image_dir, out_root))
    map_in_processes(write_mask, tasks, processes, f"prepare-coco {split_name} masks", progress, chunksize=16)
    lists[split_name] = [im["name"] for im in with_objects]
    lists[f"no_objects_{split_name}"] = [im["name"] for im in without]
    return {split_name: len(with_objects), f"no_objects_{split_name}": len(without),
            f"masks_written_{split_name}": len(tasks),
            f"instances_{split_name}": sum(len(v) for v in split.instances.values())}
