"""``affinitynet export``: a trained segmentation network as an ONNX (or TorchScript) file.

The exported graph takes the image itself and gives full-resolution probabilities, so it runs
without this package (ONNX Runtime, or ``torch.jit.load``): input ``image``, float32 (B, 3, H, W), RGB in 0..255, any H and W;
output ``probabilities``, float32 (B, classes + 1, H, W), background first (the network's
normalisation, upsampling and softmax are inside; one scale, no flip). ``<out>.json`` names the
classes. ONNX uses torch's exporter (``torch.onnx.export``, opset of its default) with dynamic
batch, height and width.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from affinitynet import artifacts
from affinitynet.config import ExportConfig, SegmentConfig
from affinitynet.data.transforms import CAFFE_BGR_MEAN, IMAGENET_MEAN, IMAGENET_STD
from affinitynet.errors import InputError
from affinitynet.inference import load_segmenter
from affinitynet.models import main_scores

class ImageToProbabilities(nn.Module):
    """A segmentation network with its input normalisation, upsampling and softmax:
    image (B, 3, H, W) float RGB 0..255 -> probabilities (B, classes + 1, H, W)."""

    def __init__(self, net: nn.Module, normalization: str) -> None:
        super().__init__()
        self.net, self.bgr = net.eval(), normalization == "caffe_bgr"
        mean = CAFFE_BGR_MEAN if self.bgr else tuple(255 * m for m in IMAGENET_MEAN)
        std = (1.0, 1.0, 1.0) if self.bgr else tuple(255 * s for s in IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.flip(1) if self.bgr else image
        scores = main_scores(self.net((x - self.mean) / self.std))
        scores = F.interpolate(scores, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return scores.softmax(dim=1)


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    dims = {"image": {0: torch.export.Dim("batch", max=1024), 2: torch.export.Dim("height", min=16, max=8192),
                      3: torch.export.Dim("width", min=16, max=8192)}}
    program = torch.onnx.export(model, (example,), dynamic_shapes=dims, input_names=["image"],
                                output_names=["probabilities"], dynamo=True, verbose=False)
    program.save(str(path))


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    torch.jit.trace(model, example, check_trace=False).save(str(path))  # traced: the shapes stay symbolic


#: export.format -> the writer (config.EXPORT_FORMATS names these)
EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript}


def run(cfg: ExportConfig) -> dict[str, Any]:
    if not cfg.weights or not cfg.out:
        raise InputError("export: give the network (--weights WORKDIR_OR_PTH) and the output file (--out FILE)")
    segmenter = load_segmenter(cfg.weights, "cpu", SegmentConfig(channels_last=False))  # a plain NCHW graph
    model = ImageToProbabilities(segmenter.net.net, segmenter.normalization).eval()
    out = Path(cfg.out)
    with artifacts.atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporters' notes on their own internals
        EXPORTERS[cfg.format](model, torch.rand(1, 3, 96, 128) * 255, tmp)
    info = {"format": cfg.format, "classes": segmenter.classes, "normalization": segmenter.normalization,
            "input": "image: float32 (B, 3, H, W), RGB 0..255", "output": "probabilities: float32 (B, classes + 1, H, W), "
            "background first"}
    artifacts.write_json(out.with_suffix(out.suffix + ".json"), info)
    print(f"exported the segmentation network ({len(segmenter.classes)} classes) to {out} ({cfg.format})")
    return {"out": str(out), **info}
