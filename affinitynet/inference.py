"""One image through the trained networks, as the stages do it: CAMs (make-cam), a random-walk
pseudo label (random-walk), a segmentation (segment). The stages call these per image; the
Python API (``affinitynet.api``) and ``affinitynet predict`` call the same functions, so a
label from any of them is the label the stage writes.

Each function takes the image at its native size and the working size ``long_side``
(``dataset.long_side``: 0 = native) and returns arrays at the native size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from affinitynet import artifacts
from affinitynet.algorithms.cam import multiscale_cam
from affinitynet.algorithms.crf import dense_crf
from affinitynet.algorithms.random_walk import propagate_cams
from affinitynet.algorithms.resize import resize_label, resize_maps
from affinitynet.algorithms.segmentation import multiscale_probabilities, probabilities_to_label
from affinitynet.common import (backbone_of, image_affinity, image_to, inference_net, load_trained, open_dataset,
                                torch_threads, working_image, working_scale)
from affinitynet.config import MakeCamConfig, RandomWalkConfig, RunConfig, SegmentConfig, load_config
from affinitynet.data.images import to_rgb
from affinitynet.data.transforms import normalize
from affinitynet.errors import InputError
from affinitynet.models import build_affinity_net, build_classifier, build_segmentation_model, main_scores


def cams_of_image(cam_fn: Callable[[torch.Tensor], torch.Tensor], normalization: str, image: np.ndarray,
                  label: np.ndarray, settings: MakeCamConfig, long_side: int, batch_flip: bool,
                  device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """make-cam's CAMs of one image: ``settings.scales`` of its working size, with flips ->
    (keys (k,), maps (k, H, W) in [0, 1]) for the classes of the 0/1 ``label``."""
    factor = working_scale(long_side, image.shape[:2])
    return multiscale_cam(cam_fn, image, label, lambda im: normalize(im, normalization),
                          scales=[s * factor for s in settings.scales], flip=settings.flip,
                          batch_flip=batch_flip, device=device)


def pseudo_label_of_image(affinity_net: torch.nn.Module, image: np.ndarray, keys: np.ndarray, maps: np.ndarray,
                          settings: RandomWalkConfig, long_side: int, num_classes: int, device: torch.device,
                          channels_last: bool = False) -> np.ndarray:
    """random-walk's pseudo label of one image: AffinityNet and the walk at the working size,
    the label back at the native size: (H, W) uint8."""
    work = working_image(image, long_side)
    aff = image_affinity(affinity_net, work, settings.radius, device, channels_last)
    # 256 short sparse products: one thread (on the CPU), as the cores serve the loader workers too
    with torch_threads(1 if device.type == "cpu" else torch.get_num_threads()):
        label, _ = propagate_cams(keys, resize_maps(maps, work.shape[:2]), aff, work.shape[:2], alpha=settings.alpha,
                                  beta=settings.beta, logt=settings.logt, radius=settings.radius,
                                  num_classes=num_classes, method=settings.method)
    return resize_label(label, image.shape[:2])


class Segmenter:
    """A trained segmentation network and how segment uses it: mean softmax over ``scales`` (of
    the working size ``long_side``) and flips, optionally a dense CRF, argmax.

    ``classes`` are the object classes (label c + 1 is ``classes[c]``, 0 is background).
    """

    def __init__(self, net: torch.nn.Module, classes: Sequence[str], normalization: str, device: torch.device,
                 settings: SegmentConfig, long_side: int = 0, channels_last: bool = False) -> None:
        self.net = inference_net(net, device, channels_last)
        self.classes, self.normalization, self.device = list(classes), normalization, device
        self.settings, self.long_side, self.channels_last = settings, long_side, channels_last

    def probabilities(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """An image ((H, W, 3) uint8 RGB, any numpy image or PIL image), or a list of images of
        one size -> (classes + 1, H, W) float32 probabilities (CRF-refined with
        ``settings.crf``), background first; (N, classes + 1, H, W) for a list."""
        images = [to_rgb(im) for im in image] if isinstance(image, (list, tuple)) else [to_rgb(image)]
        factor = working_scale(self.long_side, images[0].shape[:2])
        probs = multiscale_probabilities(
            lambda x: main_scores(self.net(image_to(x, self.device, self.channels_last))), np.stack(images),
            lambda im: normalize(im, self.normalization), scales=[s * factor for s in self.settings.scales],
            flip=self.settings.flip, device=self.device).cpu()
        if self.settings.crf:
            probs = torch.stack([torch.from_numpy(dense_crf(im, p.numpy(), self.settings.crf_iterations))
                                 for im, p in zip(images, probs)])
        return probs if isinstance(image, (list, tuple)) else probs[0]

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """An image -> (H, W) uint8 label map (0 background, c + 1 class c); a list of images of
        one size -> a list of label maps."""
        probs = self.probabilities(image)
        if isinstance(image, (list, tuple)):
            return [probabilities_to_label(p) for p in probs]
        return probabilities_to_label(probs)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu", settings: SegmentConfig | None = None,
                   long_side: int | None = None) -> Segmenter:
    """The segmentation network in ``path``: a work folder (its ``segmentation/final.pth``) or a
    ``final.pth`` written by train-seg, which names its network, classes and input (``meta``).
    ``settings`` default to the run's ``segment`` section when ``path`` is a work folder, else
    to SegmentConfig(); ``long_side`` to the one the network was trained with."""
    path = Path(path)
    weights = artifacts.WorkDir(path).segmentation.final if path.is_dir() else path
    if not weights.exists():
        raise InputError(f"{weights}: segmentation network weights do not exist (run train-seg first)")
    state = artifacts.load_checkpoint(weights)
    meta = state.get("meta") if isinstance(state, dict) else None
    cfg = _run_config(path if path.is_dir() else weights.parent.parent)
    if meta is None:  # a file from before the networks carried their meta: the run's config says it
        if cfg is None:
            raise InputError(f"{weights}: does not say which network it holds (no meta) and no config.yaml "
                             "is beside it; give the work folder of the run that trained it")
        net = build_segmentation_model(cfg.train_seg.model, backbone_of(cfg, cfg.train_seg), 1)
        meta = segmentation_meta(cfg, net.normalization, open_dataset(cfg).classes)
    net = build_segmentation_model(meta["model"], meta["backbone"], int(meta["num_classes"]), bool(meta["aux_loss"]))
    load_trained(net, weights, "segmentation network")
    settings = settings or (cfg.segment if cfg is not None else SegmentConfig())
    if long_side is None:
        long_side = int(meta.get("long_side", cfg.dataset.long_side if cfg is not None else 0))
    return Segmenter(net, meta["classes"], meta["normalization"], torch.device(device), settings, long_side,
                     settings.channels_last)


def _run_config(workdir: Path) -> RunConfig | None:
    """The config a work folder's run wrote, or None."""
    path = artifacts.WorkDir(workdir).config
    return load_config(RunConfig, path) if path.is_file() else None


def segmentation_meta(cfg: RunConfig, normalization: str, classes: Sequence[str]) -> dict[str, Any]:
    """What train-seg's weights file carries so that the network can be used without the run's
    config (``affinitynet predict``, ``affinitynet.api``): how to build it, its classes, its
    input normalisation and the working size it was trained for."""
    ts = cfg.train_seg
    return {"format": 1, "model": ts.model, "backbone": backbone_of(cfg, ts), "aux_loss": ts.aux_loss,
            "num_classes": len(classes), "classes": list(classes), "normalization": normalization,
            "long_side": cfg.dataset.long_side}


class PseudoLabeler:
    """A run's classifier and AffinityNet with the run's settings: CAMs and a random-walk
    pseudo label of an image given its class names (the paper's pseudo labels for images with
    image-level tags). Load with ``load_pseudo_labeler(workdir)``."""

    def __init__(self, cfg: RunConfig, classes: Sequence[str], device: torch.device) -> None:
        wd = artifacts.WorkDir(cfg.workdir)
        self.cfg, self.classes, self.device = cfg, list(classes), device
        self.classifier = load_trained(build_classifier(cfg.train_cam.backbone, len(classes)), wd.classifier.final,
                                       "classifier")
        self.affinity_net = load_trained(build_affinity_net(backbone_of(cfg, cfg.train_aff)), wd.affinity.final,
                                         "AffinityNet")
        inference_net(self.classifier, device, channels_last=False)
        inference_net(self.affinity_net, device, channels_last=False)

    def label_vector(self, class_names: Sequence[str]) -> np.ndarray:
        """(C,) 0/1 vector of ``class_names``; an unknown name is a ValueError listing the known."""
        vec = np.zeros(len(self.classes), np.float32)
        for name in class_names:
            if name not in self.classes:
                raise ValueError(f"unknown class {name!r}; the run's classes: {', '.join(self.classes)}")
            vec[self.classes.index(name)] = 1
        return vec

    def cams(self, image: np.ndarray | Image.Image, class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """make-cam's CAMs: (keys (k,) class indices, maps (k, H, W) in [0, 1])."""
        def cam_fn(x: torch.Tensor) -> torch.Tensor:
            return self.classifier.cam(x.to(self.device)).float()

        return cams_of_image(cam_fn, self.classifier.normalization, to_rgb(image), self.label_vector(class_names),
                             self.cfg.make_cam, self.cfg.dataset.long_side, batch_flip=True, device=self.device)

    def pseudo_label(self, image: np.ndarray | Image.Image, class_names: Sequence[str]) -> np.ndarray:
        """random-walk's pseudo label: (H, W) uint8, 0 background, c + 1 class c."""
        image = to_rgb(image)
        keys, maps = self.cams(image, class_names)
        return pseudo_label_of_image(self.affinity_net, image, keys, maps, self.cfg.random_walk,
                                     self.cfg.dataset.long_side, len(self.classes), self.device)


def load_pseudo_labeler(workdir: str | Path, device: str | torch.device = "cpu") -> PseudoLabeler:
    """The classifier and AffinityNet a run trained, with the settings of its config.yaml."""
    cfg = _run_config(Path(workdir))
    if cfg is None:
        raise InputError(f"{artifacts.WorkDir(workdir).config}: not a work folder of `affinitynet run` (no config.yaml)")
    cfg.workdir = str(workdir)
    return PseudoLabeler(cfg, open_dataset(cfg).classes, torch.device(device))
