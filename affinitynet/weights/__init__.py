"""Pretrained-weight readers and the mapping onto our backbones' state dicts.

PSA initialises ResNet-38 from ademxapp's MXNet ImageNet model and VGG-16 from DeepLab's
``vgg16_20M.caffemodel``; both are read here in pure numpy (no MXNet, no Caffe), and plain
``.pth``/``.pt`` state dicts through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import torch

from affinitynet.errors import InputError
from affinitynet.weights.caffe import read_caffemodel, vgg16_from_caffe
from affinitynet.weights.mxnet import mxnet_to_torch_key, read_mxnet_params, resnet38_from_mxnet

__all__ = ["load_weights", "read_mxnet_params", "resnet38_from_mxnet",
           "mxnet_to_torch_key", "read_caffemodel", "vgg16_from_caffe", "SUFFIXES"]

SUFFIXES = (".params", ".caffemodel", ".pth", ".pt")


def _load_torch(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            KeyError, AttributeError, TypeError, IndexError) as e:
        from affinitynet.artifacts import torch_load_error

        raise InputError(f"{path}: not a loadable torch weight file ({torch_load_error(e)})") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{path}: expected a state dict (name -> tensor), "
                         f"optionally under 'state_dict' or 'model'")
    # Checkpoints saved from a DistributedDataParallel wrapper carry a 'module.' prefix.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(path: str | os.PathLike[str],
                 target_shapes: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """Read pretrained weights and return them under our state-dict keys (CPU tensors).

    Dispatch on suffix: ``.params`` (MXNet -> ResNet-38), ``.caffemodel`` (Caffe -> VGG-16,
    reshaped to ``target_shapes`` when given), ``.pth``/``.pt`` (a state dict, unwrapped from
    ``{"state_dict": ...}`` or ``{"model": ...}``). Raises ``InputError`` naming the file.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported weight file type {suffix or '(none)'!r}; "
                         f"expected one of {', '.join(SUFFIXES)}")
    if not os.path.isfile(path):
        raise InputError(f"{path}: weight file not found")
    if suffix == ".params":
        arrays = read_mxnet_params(path)
        if not isinstance(arrays, dict):
            raise InputError(f"{path}: MXNet file was saved as a list without names; "
                             f"cannot map it to ResNet-38")
        try:
            state = resnet38_from_mxnet(arrays)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    elif suffix == ".caffemodel":
        layers = read_caffemodel(path)
        try:
            state = vgg16_from_caffe(layers, target_shapes)
        except InputError as e:
            raise InputError(f"{path}: {e}") from None
    else:
        state = _load_torch(path)
    if not state:
        raise InputError(f"{path}: no usable weights found (no ResNet-38/VGG-16 parameter names)")
    return state
