"""What the stages print: the size rule a stage applies, its diagnostic line and warnings (rank 0
only; warnings on stderr, as ``affinitynet: warning: <stage>: ...``)."""

from __future__ import annotations

import sys

from affinitynet import distributed
from affinitynet.config import DatasetConfig, TrainingConfig
from affinitynet.data.voc import VOCDataset, size_profile


def announce_sizes(settings: DatasetConfig, voc: VOCDataset, names: list[str], stage: str, sizes: str) -> None:
    """Print the size rule a stage applies: the dataset's image sizes, the working size, and
    ``sizes``, the stage's own effective sizes."""
    if not distributed.current().is_main:
        return
    p = size_profile(voc, names)["long_side"]
    rule = (f"each resized to a long side of {settings.long_side} px (dataset.long_side)" if settings.long_side
            else "used at their native size (dataset.long_side 0)")
    print(f"{stage}: images {p['min']}-{p['max']} px on the long side (median {p['median']}), {rule}; {sizes}")


def training_sizes(section: TrainingConfig) -> str:
    """A training stage's sizes for ``announce_sizes``: its random long side or scale (if any)
    and crop."""
    rescale = getattr(section, "rescale", None)  # IRN's random scale factor
    if rescale is not None:
        return f"training rescales the image by {rescale[0]:g}-{rescale[1]:g}x, crop {section.crop} px"
    if section.resize_long is None:
        return f"training crops {section.crop} px from the image at that size (no rescale)"
    lo, hi = section.resize_long
    return f"training resizes the long side to {lo}-{hi} px, crop {section.crop} px"


def print_diagnostics(stage: str, line: str, warnings: list[str]) -> None:
    """Print a stage's diagnostic ``line`` and its warnings."""
    if distributed.current().is_main:
        print(f"{stage}: {line}")
        for warning in warnings:
            print(f"affinitynet: warning: {stage}: {warning}", file=sys.stderr)


def print_run_warnings(warnings: list[str]) -> None:
    """Every warning of a run again, at its end."""
    if warnings and distributed.current().is_main:
        print("affinitynet: warnings of this run (details under 'diagnostics' in metrics.json):", file=sys.stderr)
        for w in warnings:
            print(f"  - {w}", file=sys.stderr)
