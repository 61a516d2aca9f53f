"""What the stages share, so that no stage imports another: the dataset of a run and its image
lists, which backbone each network has, loading weights, and the per-image runner of make-cam,
random-walk and segment (shard over ranks, skip finished images, decode in worker processes,
check, process)."""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.algorithms.resize import working_image, working_scale  # noqa: F401 - shared with the stages
from affinitynet.config import RunConfig, TrainingConfig
from affinitynet.conventions import STRIDE
from affinitynet.data.transforms import normalize
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import AffinityNetError, InputError


# -- the dataset of a run ----------------------------------------------------------------------
def open_dataset(cfg: RunConfig) -> VOCDataset:
    if not cfg.dataset.root:
        raise InputError("no dataset given: set dataset.root (or --dataset DIR)")
    return VOCDataset(cfg.dataset.root, cfg.dataset.labels or None, cfg.dataset.exif_transpose)


def infer_names(cfg: RunConfig, voc: VOCDataset) -> list[str]:
    """Images that get CAMs and labels: the inference splits plus the evaluation split, each once."""
    seen: dict[str, None] = {}
    for split in [*cfg.dataset.infer_splits, cfg.dataset.eval_split]:
        for name in voc.split(split):
            seen.setdefault(name, None)
    return list(seen)


# -- the size every stage sees an image at (dataset.long_side) ----------------------------------
PROFILE_SAMPLE = 500  # images whose sizes are read for the profile (evenly spread)


def dataset_profile(voc: VOCDataset, names: list[str]) -> dict[str, Any]:
    """Long sides (px) of the images ``names``: min, 10th percentile, median, 90th percentile,
    max over up to 500 of them, evenly spread, read from the file headers (fast at any size)."""
    step = max(1, len(names) // PROFILE_SAMPLE)
    sides = np.array([s for s in (voc.image_long_side(n) for n in names[::step]) if s > 0] or [0])
    return {"images": len(names), "measured": int(len(names[::step])),
            "long_side": {key: int(np.percentile(sides, q)) for key, q in
                          (("min", 0), ("p10", 10), ("median", 50), ("p90", 90), ("max", 100))}}


def announce_sizes(cfg: RunConfig, voc: VOCDataset, names: list[str], stage: str, sizes: str) -> None:
    """Print (rank 0) the size rule a stage applies: the dataset's image sizes, the working size,
    and ``sizes``, the stage's own effective sizes."""
    if not distributed.current().is_main:
        return
    p = dataset_profile(voc, names)["long_side"]
    rule = (f"each resized to a long side of {cfg.dataset.long_side} px (dataset.long_side)" if cfg.dataset.long_side
            else "used at their native size (dataset.long_side 0)")
    print(f"{stage}: images {p['min']}-{p['max']} px on the long side (median {p['median']}), {rule}; {sizes}")


def report(stage: str, line: str, warnings: list[str]) -> None:
    """Print a stage's diagnostic ``line`` and its warnings (rank 0; warnings on stderr)."""
    if distributed.current().is_main:
        print(f"{stage}: {line}")
        for warning in warnings:
            print(f"affinitynet: warning: {stage}: {warning}", file=sys.stderr)


def announce_training_sizes(cfg: RunConfig, voc: VOCDataset, names: list[str], stage: str,
                            section: TrainingConfig) -> None:
    """``announce_sizes`` for a training stage: its random long side (if any) and crop."""
    if section.resize_long is None:
        sizes = f"training crops {section.crop} px from the image at that size (no rescale)"
    else:
        lo, hi = section.resize_long
        sizes = f"training resizes the long side to {lo}-{hi} px, crop {section.crop} px"
    announce_sizes(cfg, voc, names, stage, sizes)


# -- networks ----------------------------------------------------------------------------------
def backbone_of(cfg: RunConfig, section: TrainingConfig) -> str:
    """The backbone of a training stage's network: its own, else the classifier's."""
    return section.backbone or cfg.train_cam.backbone


def image_to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A (B, 3, H, W) batch to ``device``, NHWC when the network is (``channels_last``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(device, non_blocking=True, memory_format=fmt)


@torch.inference_mode()
def image_affinity(net: torch.nn.Module, image: np.ndarray, radius: int, device: torch.device,
                   channels_last: bool = False) -> torch.Tensor:
    """(n_offsets, n_from) affinities of an (H, W, 3) uint8 image on its padded stride-8 grid.
    ``channels_last``: NHWC input, for a network converted with ``net.to(memory_format=...)``."""
    x = normalize(image, net.normalization)[None]
    height, width = image.shape[:2]
    x = F.pad(x, (0, -width % STRIDE, 0, -height % STRIDE))  # zero padding, as the original
    return net.affinity(image_to(x, device, channels_last), radius).float()[0]


def load_backbone_weights(net: torch.nn.Module, path: str | Path) -> list[str]:
    """Initialise the backbone of ``net`` from a weights file (ImageNet .params / .caffemodel /
    .pth, or a trained sibling network); heads keep their fresh initialisation. Returns the
    file's keys that were not used."""
    from affinitynet.models import load_backbone_state_dict
    from affinitynet.weights import load_weights

    try:
        return load_backbone_state_dict(net, load_weights(path))
    except InputError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise InputError(f"{path}: {exc}") from None


def initial_weights(net: torch.nn.Module, cfg: RunConfig, section: TrainingConfig) -> torch.nn.Module:
    """Start ``net``'s backbone from ``section.weights`` when given, else (with
    ``init_from_classifier``, networks on the run's backbones only) from the trained classifier
    of this run when it exists and has the same backbone; otherwise leave the fresh
    initialisation."""
    if section.weights:
        load_backbone_weights(net, section.weights)
    elif getattr(section, "init_from_classifier", False) and getattr(section, "model", "largefov") == "largefov":
        final = artifacts.WorkDir(cfg.workdir).classifier.final
        if final.exists() and backbone_of(cfg, section) == cfg.train_cam.backbone:
            load_backbone_weights(net, final)
    return net


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


def inference_net(net: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``net`` in eval mode on ``device``, NHWC when ``channels_last``."""
    net.eval().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count inside the block (process-wide, so restored afterwards)."""
    saved = torch.get_num_threads()
    if count != saved:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != saved:
            torch.set_num_threads(saved)


# -- the per-image runner ----------------------------------------------------------------------
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
