"""What the per-image stages share: the dataset of a run, the images to infer, resume, and an
image loader that decodes in worker processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from affinitynet import artifacts, distributed
from affinitynet.config import RunConfig
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import AffinityNetError, InputError


def open_dataset(cfg: RunConfig) -> VOCDataset:
    if not cfg.dataset.root:
        raise InputError("no dataset given: set dataset.root (or --dataset DIR)")
    return VOCDataset(cfg.dataset.root, cfg.dataset.labels or None)


def infer_names(cfg: RunConfig, voc: VOCDataset) -> list[str]:
    """Images that get CAMs and labels: the inference splits plus the evaluation split, each once."""
    seen: dict[str, None] = {}
    for split in [*cfg.dataset.infer_splits, cfg.dataset.eval_split]:
        for name in voc.split(split):
            seen.setdefault(name, None)
    return list(seen)


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


MIN_SIDE = 8  # one cell of the stride-8 grid


def check_image_size(voc: VOCDataset, name: str, size: tuple[int, int], min_height: int = MIN_SIDE,
                     min_width: int = MIN_SIDE, why: str = "the stride-8 grid") -> None:
    """InputError naming the image file when its (H, W) ``size`` is below the minimum."""
    height, width = int(size[0]), int(size[1])
    if height < min_height or width < min_width:
        raise InputError(f"{voc.image_path(name)}: image is {width}x{height} px, too small for {why} "
                         f"(needs at least {min_width}x{min_height} px)")


def load_trained(net: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Load a stage's final weights strictly; a checkpoint for another network is named."""
    from affinitynet.models import load_state_dict_strict

    if not path.exists():
        raise InputError(f"{path}: {what} weights do not exist (run the training stage first)")
    state = artifacts.load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (name -> tensor) of {what} weights")
    try:
        load_state_dict_strict(net, state)
    except InputError as exc:  # name the file: "checkpoint does not fit ..." alone does not
        raise InputError(f"{path}: {exc} (trained with another backbone or dataset?)") from None
    return net


class ImageSource(torch.utils.data.Dataset):
    """(name, image, image label) per image; decoded in DataLoader workers so that loading
    overlaps the network. A bad image comes back as its error instead of the image."""

    def __init__(self, voc: VOCDataset, names: list[str]) -> None:
        self.voc, self.names = voc, names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray | AffinityNetError, np.ndarray | None]:
        name = self.names[i]
        try:
            return name, self.voc.load_image(name), self.voc.image_labels(name)
        except AffinityNetError as exc:
            # returned, and raised by the main process (``checked_image``): raised in a worker it
            # would arrive wrapped in the worker's traceback, and the workers of the failed loader
            # would take seconds to stop
            return name, exc, None


def image_loader(voc: VOCDataset, names: list[str], num_workers: int) -> torch.utils.data.DataLoader:
    """Iterates (name, image, image label) over ``names`` with ``num_workers`` decoding processes."""
    return torch.utils.data.DataLoader(ImageSource(voc, names), batch_size=None,
                                       num_workers=num_workers if names else 0)


def checked_image(image: Any) -> np.ndarray:
    """The (H, W, 3) uint8 image an ``image_loader`` gave (it hands arrays over as tensors);
    raises the error it returned for a bad image, in the main process."""
    if isinstance(image, AffinityNetError):
        raise image
    return np.asarray(image)

