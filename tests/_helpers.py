"""Helpers shared by the end-to-end CLI tests (test_bad_inputs, test_reliability).

Imported as ``from _helpers import ...``: pytest puts ``tests/`` on ``sys.path`` (no package).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from affinitynet import config as C
from affinitynet.pipeline import demo_config


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """One torch thread inside the block: the CPU is shared with other test processes (far
    faster so) and results are bitwise reproducible; the previous count is restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def write_config(cfg_file: Path, workdir: Path, data_root: Path | str, sets: list[str]):
    """The demo config with ``sets`` applied and ``dataset.root = data_root``, written as YAML to
    ``cfg_file``; returns the config object."""
    cfg = demo_config(workdir, [*(sets or []), f"dataset.root={data_root}"])
    cfg_file.write_text(C.dump_yaml(cfg))
    return cfg


def tiny_sets(*, cam_epochs: int, crf_iterations: int, logt: int) -> list[str]:
    """Config overrides for a fast CPU pipeline: tiny crops (64 px), batch 2, one CAM scale, no
    flip, no loader workers, one CRF process; the given epochs, CRF iterations and walk logt."""
    return [
        "device=cpu",
        f"train_cam.epochs={cam_epochs}", "train_cam.batch_size=2", "train_cam.crop=64",
        "train_cam.resize_long=[64,96]", "train_cam.num_workers=0",
        "make_cam.scales=[1.0]", "make_cam.flip=false", "make_cam.num_workers=0", "make_cam.sweep=false",
        "aff_labels.processes=1", f"aff_labels.crf_iterations={crf_iterations}",
        f"random_walk.logt={logt}",
    ]


#: the whole pipeline at its smallest: one epoch of every training stage on tiny crops
TINY_RUN = tiny_sets(cam_epochs=1, crf_iterations=1, logt=2) + [
    "train_aff.epochs=1", "train_aff.batch_size=2", "train_aff.crop=72", "train_aff.num_workers=0",
    "train_seg.epochs=1", "train_seg.batch_size=2", "train_seg.crop=64", "train_seg.resize_long=[64,96]",
    "train_seg.num_workers=0", "segment.num_workers=0", "random_walk.num_workers=0"]
