"""The per-image runner of make-cam, random-walk and segment: this rank's share of the images
whose outputs are not written yet, decoded in worker processes, checked, and handed to the
stage's function for one image."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.conventions import STRIDE
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import AffinityNetError, InputError


def todo(names: list[str], output: Callable[[str], Path], out_dirs: list[Path]) -> list[str]:
    """This rank's share of ``names`` whose outputs are not written yet (finished images are
    skipped on a rerun). Temporary files of a killed run are removed first."""
    main = distributed.current().is_main
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
        if main:  # another rank could be writing its first output already
            artifacts.remove_stale_tmp(d)
    distributed.barrier()  # cleaned before anyone writes
    mine = distributed.shard(names)
    return [n for n in mine if not output(n).exists()]


def check_image_size(voc: VOCDataset, name: str, size: tuple[int, int], min_size: tuple[int, int],
                     why: str, hint: str = "") -> None:
    """InputError naming the image file when its (H, W) ``size`` is below ``min_size`` (H, W)."""
    height, width = int(size[0]), int(size[1])
    if height < min_size[0] or width < min_size[1]:
        raise InputError(f"{voc.image_path(name)}: image is {width}x{height} px, too small for {why} "
                         f"(needs at least {min_size[1]}x{min_size[0]} px){'; ' + hint if hint else ''}")


class Decoded(torch.utils.data.Dataset):
    """(index, ``load(item)``) per item, decoded in DataLoader workers so that loading overlaps
    the network. A bad item comes back as its error instead of the loaded value."""

    def __init__(self, items: Sequence[Any], load: Callable[[Any], Any]) -> None:
        self.items, self.load = items, load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.load(self.items[i])
        except AffinityNetError as exc:
            # returned, and raised by the main process: raised in a worker it would arrive
            # wrapped in the worker's traceback, and the workers of the failed loader would take
            # seconds to stop
            return i, exc


def _image_and_label(voc: VOCDataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    return voc.load_image(name), voc.image_labels(name)


def for_each_image(voc: VOCDataset, names: list[str], output: Callable[[str], Path], out_dirs: list[Path],
                   process: Callable[[str, np.ndarray, np.ndarray], None], *, num_workers: int,
                   desc: str) -> dict[str, Any]:
    """Run ``process(name, image (H, W, 3) uint8, image label (C,))`` on this rank's share of
    ``names`` whose ``output(name)`` does not exist yet, with ``num_workers`` decoding processes
    and a progress bar; ``process`` writes the outputs, ``output(name)`` last (it marks the image
    done). A bad image stops the run with its one-line error; the images before it keep their
    outputs. Ends at a barrier (every rank finished). Returns {"images", "seconds"} of this rank."""
    pending = todo(names, output, out_dirs)
    t0 = time.time()
    loader = torch.utils.data.DataLoader(Decoded(pending, functools.partial(_image_and_label, voc)), batch_size=None,
                                         num_workers=num_workers if pending else 0)
    for i, loaded in tqdm(loader, desc=desc, total=len(pending), dynamic_ncols=True,
                          disable=not distributed.current().is_main):
        if isinstance(loaded, AffinityNetError):
            raise loaded
        name, (image, label) = pending[i], loaded
        image = np.asarray(image)  # the loader hands arrays over as tensors
        check_image_size(voc, name, image.shape[:2], (STRIDE, STRIDE), "the stride-8 grid")
        process(name, image, np.asarray(label))
    distributed.barrier()
    return {"images": len(pending), "seconds": time.time() - t0}
