"""What the per-image stages share: the dataset of a run, the images to infer, and resume."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from affinitynet import artifacts, distributed
from affinitynet.config import RunConfig
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError


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
