"""``affinitynet predict``: the trained segmentation network on any images.

Inputs are image files, folders of images and text files listing image paths (one per line,
relative to the list's folder). Each image becomes ``<out>/<name>.png``, a palette PNG in the
VOC palette (0 background, c + 1 class c, as segment writes them), and with ``overlay`` a
picture of the labels blended over the image with a class legend, ``<out>/overlay/<name>.jpg``.
Images of one size go through the network together, ``batch_size`` at a time. A bad image is
one error line naming it; the others still get their outputs, and the command then ends with
exit status 2. The network's file says which network it is and its classes, so no config is
needed: ``weights`` is a work folder or a ``final.pth`` of train-seg.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.config import PredictConfig
from affinitynet.data.images import load_rgb, save_label_png
from affinitynet.data.palette import colorize, VOC_COLORMAP
from affinitynet.errors import AffinityNetError, InputError
from affinitynet.inference import load_segmenter
from affinitynet.per_image import Decoded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_paths(inputs: list[str]) -> list[Path]:
    """The image files named by ``inputs``: files, folders (their images, sorted) and ``.txt``
    lists of paths; InputError for an input that does not exist."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.suffix.lower() == ".txt" and p.is_file():
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
            paths += [(p.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                      for ln in lines if ln and not ln.startswith("#")]
        elif p.exists():
            paths.append(p)
        else:
            raise InputError(f"{p}: no such image, folder or list")
    return list(dict.fromkeys(paths))


def output_names(paths: list[Path]) -> list[str]:
    """One output name per image: its file stem, numbered when two images share it."""
    seen: dict[str, int] = defaultdict(int)
    names = []
    for p in paths:
        seen[p.stem] += 1
        names.append(p.stem if seen[p.stem] == 1 else f"{p.stem}_{seen[p.stem] - 1}")
    return names


def overlay(image: np.ndarray, label: np.ndarray, classes: list[str], opacity: float = 0.5) -> Image.Image:
    """The label map's colours blended over the image, with a legend of the classes present."""
    blend = (1 - opacity) * image.astype(np.float32) + opacity * colorize(label).astype(np.float32)
    blend[label == 0] = image[label == 0]  # background stays the photo
    picture = Image.fromarray(np.clip(blend, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    present = [int(v) for v in np.unique(label) if 0 < v <= len(classes)]
    for row, value in enumerate(present):
        y = 4 + 14 * row
        draw.rectangle([4, y, 14, y + 10], fill=tuple(int(c) for c in VOC_COLORMAP[value]), outline=(255, 255, 255))
        draw.text((18, y - 1), classes[value - 1], fill=(255, 255, 255))
    return picture


def run(cfg: PredictConfig) -> dict[str, Any]:
    if not cfg.weights:
        raise InputError("predict: no network given (--weights WORKDIR_OR_PTH)")
    if not cfg.out:
        raise InputError("predict: no output folder given (--out DIR)")
    paths = image_paths(cfg.inputs)
    if not paths:
        raise InputError(f"predict: no image found in {', '.join(cfg.inputs) or 'the inputs'}")
    _, device = distributed.setup(cfg.device)
    segmenter = load_segmenter(cfg.weights, device, cfg.segment, None if cfg.long_side < 0 else cfg.long_side)
    out, names = Path(cfg.out), output_names(paths)
    out.mkdir(parents=True, exist_ok=True)
    artifacts.write_lines(out / "classes.txt", segmenter.classes)
    load = functools.partial(load_rgb, exif_transpose=cfg.exif_transpose)
    loader = torch.utils.data.DataLoader(Decoded(paths, load), batch_size=None, num_workers=cfg.segment.num_workers)
    t0, failed, batches = time.time(), [], defaultdict(list)

    def flush(size: tuple[int, int]) -> None:
        items = batches.pop(size)
        for (i, image), label in zip(items, segmenter([im for _, im in items])):
            save_label_png(out / f"{names[i]}.png", label)
            if cfg.overlay:
                with artifacts.atomic_path(out / "overlay" / f"{names[i]}.jpg") as tmp:
                    overlay(image, label, segmenter.classes).save(tmp, format="JPEG", quality=90)

    for i, image in tqdm(loader, total=len(paths), desc="predict", dynamic_ncols=True):
        if isinstance(image, AffinityNetError):
            failed.append(str(paths[i]))
            print(f"affinitynet: error: {image}", file=sys.stderr)
            continue
        image = np.asarray(image)
        batches[image.shape[:2]].append((i, image))
        if len(batches[image.shape[:2]]) >= cfg.batch_size:
            flush(image.shape[:2])
    for size in list(batches):
        flush(size)
    result = {"images": len(paths) - len(failed), "failed": failed, "out": str(out), "classes": segmenter.classes,
              "seconds": time.time() - t0}
    print(f"predict: {result['images']} of {len(paths)} images segmented into {out} ({result['seconds']:.1f} s)")
    if failed:
        raise InputError(f"predict: {len(failed)} of {len(paths)} images could not be read (named above); "
                         "the others were segmented")
    return result
