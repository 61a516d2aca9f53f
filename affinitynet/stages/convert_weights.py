"""``affinitynet convert-weights IN OUT.pth``: pretrained MXNet/Caffe weights -> a torch state dict.

Reads an ademxapp ResNet-38 ``.params`` or DeepLab VGG-16 ``.caffemodel`` (or an existing
``.pth``) without MXNet or Caffe, renames to our backbone keys and writes a plain state dict that
``torch.load(weights_only=True)`` reads. The keys are compared with the backbone's (``fc8`` and ``num_batches_tracked`` ignored, as PSA loads with
``strict=False``) and the differences reported by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from affinitynet import artifacts
from affinitynet.config import ConvertWeightsConfig
from affinitynet.errors import InputError
from affinitynet.models import build_classifier
from affinitynet.weights import load_weights

__all__ = ["ConvertWeightsConfig", "run"]

_ARCH_BY_SUFFIX = {".params": "resnet38", ".caffemodel": "vgg16"}
# A key only this backbone has, to recognise an already converted .pth.
_ARCH_MARKERS = {"conv1a.weight": "resnet38", "conv1_1.weight": "vgg16"}


def _is_head(key: str) -> bool:
    return key.startswith("fc8.") or key.endswith("num_batches_tracked")


def _backbone_shapes(arch: str | None) -> dict[str, tuple[int, ...]] | None:
    """Backbone key -> shape of our network of ``arch``, or None for an unknown backbone."""
    if arch is None:
        return None
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        state = build_classifier(arch).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if not _is_head(k)}


def run(cfg: ConvertWeightsConfig) -> dict[str, Any]:
    """Convert ``cfg.input`` and write ``cfg.output`` atomically.

    Returns ``{"output", "num_tensors", "backbone", "missing", "unexpected", "mismatched"}``;
    the last three list backbone keys absent from the file, file keys the backbone lacks, and
    keys whose shapes differ (all empty when the file's backbone is unknown).
    """
    if not cfg.input:
        raise InputError("convert-weights: no input weight file given")
    if not cfg.output:
        raise InputError("convert-weights: no output .pth path given")
    state = load_weights(cfg.input)
    arch = _ARCH_BY_SUFFIX.get(Path(cfg.input).suffix.lower())
    if arch is None:
        arch = next((a for k, a in _ARCH_MARKERS.items() if k in state), None)
    expected = _backbone_shapes(arch)
    missing: list[str] = []
    unexpected: list[str] = []
    mismatched: list[str] = []
    if expected is not None:
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected and not _is_head(k)]
        mismatched = [f"{k} {list(state[k].shape)} vs {list(expected[k])}"
                      for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    plain = {k: v.detach().contiguous() for k, v in state.items()}
    artifacts.save_checkpoint(cfg.output, plain)
    return {"output": str(cfg.output), "num_tensors": len(plain), "backbone": arch,
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched}

