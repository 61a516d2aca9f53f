"""Trained networks and one image through them, as the stages do it.

Networks: loading a stage's weights (``load_trained``) or a backbone's (``load_backbone_weights``),
and ``Prepared``, a network ready for inference (eval mode, device, memory format, its input
normalisation).

Per-image steps, each the one place where the stage's logic for one image lives; the stages,
``affinitynet tune``, the Python API (``affinitynet.api``) and ``affinitynet predict`` call them:
CAMs (make-cam), the CRF scores and confident labels (make-aff-labels), the random walk's input
and pseudo label (random-walk), the segmentation (``Segmenter``: segment, predict). Each takes
the image as a ``WorkImage`` (native size and working size, ``dataset.long_side``) and returns
what the stage writes, at the native size.

IRN's per-image steps (``IRNLabeler``): boundaries and displacements of IRN's network, and from
them and any CAMs IRN's semantic and instance pseudo labels, with the sparse stride-4 walk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from affinitynet import artifacts, records
from affinitynet.algorithms.boundary import semantic_pseudo_label
from affinitynet.algorithms.cam import conform_cams, irn_multiscale_cam, multiscale_cam, strided_cams, strided_size
from affinitynet.algorithms.crf import (IRN_LABEL_KERNELS, confident_labels, crf_with_background, dense_crf,
                                       ir_label)
from affinitynet.algorithms.instances import Detections, instance_pseudo_labels
from affinitynet.algorithms.random_walk import propagate_cams
from affinitynet.algorithms.resize import WorkImage, resize_maps
from affinitynet.algorithms.segmentation import multiscale_probabilities, probabilities_to_label
from affinitynet.config import (AffLabelsConfig, IRLabelsConfig, IRNLabelsConfig, MakeCamConfig, RandomWalkConfig, RunConfig,
                                SegmentConfig)
from affinitynet.conventions import IRN_STRIDE, STRIDE
from affinitynet.data.images import to_rgb
from affinitynet.data.transforms import normalize
from affinitynet.data.voc import open_dataset
from affinitynet.errors import InputError
from affinitynet.models import (build_affinity_net, build_classifier, build_irn_net, build_segmentation_model,
                                input_to, load_backbone_state_dict, load_state_dict_strict, main_scores)
from affinitynet.models.irn import ResNet50IRN, load_irn_state_dict
from affinitynet.weights import load_weights


# -- networks ----------------------------------------------------------------------------------
def load_backbone_weights(net: torch.nn.Module, path: str | Path) -> list[str]:
    """Initialise the backbone of ``net`` from a weights file (ImageNet .params / .caffemodel /
    .pth, or a trained sibling network); heads keep their fresh initialisation. Returns the
    file's keys that were not used."""
    try:
        return load_backbone_state_dict(net, load_weights(path))
    except InputError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise InputError(f"{path}: {exc}") from None


def load_trained(net: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Load a stage's final weights strictly; a checkpoint for another network is named."""
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


@dataclass(frozen=True)
class Prepared:
    """A network ready for inference: in eval mode on ``device``, NHWC with ``channels_last``,
    bf16 autocast on CUDA with ``amp``. ``normalization`` is how its input is normalised."""

    net: torch.nn.Module
    device: torch.device
    channels_last: bool = False
    amp: bool = False

    @property
    def normalization(self) -> str:
        return self.net.normalization

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 RGB -> (3, H, W) float32, as the network expects."""
        return normalize(image, self.normalization)

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) batch on the network's device and in its memory format."""
        return input_to(x, self.device, self.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp and self.device.type == "cuda")

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> CAMs (B, C, ceil(h/8), ceil(w/8)) float32 >= 0."""
        with self.autocast():
            return self.net.cam(self.input(x)).float()

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """A segmentation network's main scores (B, K + 1, h', w')."""
        with self.autocast():
            return main_scores(self.net(self.input(x)))


def prepare(net: torch.nn.Module, device: torch.device, channels_last: bool = False, amp: bool = False) -> Prepared:
    """``net`` in eval mode on ``device`` (NHWC with ``channels_last``), ready for inference."""
    net.eval().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return Prepared(net, device, channels_last, amp)


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


# -- make-cam ----------------------------------------------------------------------------------
def batch_flip_on(device: torch.device) -> bool:
    """Whether an image and its flip go through the classifier as one batch of 2: on CUDA
    (fewer, fuller kernels); on the CPU two passes of 1 measured ~10 % faster
    (benchmarks/bench_cam_inference.py)."""
    return device.type == "cuda"


def cams_of_image(classifier: Prepared, image: WorkImage, label: np.ndarray,
                  settings: MakeCamConfig) -> tuple[np.ndarray, np.ndarray]:
    """make-cam's CAMs of one image: ``settings.scales`` of its working size, with flips ->
    (keys (k,), maps (k, H, W) in [0, 1] at the native size) for the classes of the 0/1 ``label``,
    fused as ``settings.fusion`` says."""
    if settings.fusion == "irn":
        keys, _, maps = irn_cams_of_image(classifier, image, label, settings)
        return keys, maps
    return multiscale_cam(classifier.cam, image.native, label, classifier.normalize,
                          scales=[s * image.factor for s in settings.scales], flip=settings.flip,
                          batch_flip=batch_flip_on(classifier.device), device=classifier.device)


def irn_cams_of_image(classifier: Prepared, image: WorkImage, label: np.ndarray,
                      settings: MakeCamConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """make-cam's CAMs of one image fused as IRN's make_cam.py does (``make_cam.fusion: irn``),
    computed at the working size (h, w): (keys (k,), IRN's stride-4 ``cam`` (k, ceil(h/4),
    ceil(w/4)) there, ``high_res`` (k, H, W) at the native size), in [0, 1]."""
    keys, strided, high_res = irn_multiscale_cam(classifier.cam, image.image, label, classifier.normalize,
                                                 scales=settings.scales, stride=IRN_STRIDE,
                                                 cam_stride=classifier.net.feature_stride, flip=settings.flip,
                                                 batch_flip=batch_flip_on(classifier.device),
                                                 device=classifier.device)
    return keys, strided, high_res if image.factor == 1 else resize_maps(high_res, image.native_size)


def irn_walk_cams(image: WorkImage, maps: np.ndarray, strided: np.ndarray | None) -> np.ndarray:
    """What IRN's walk of an image starts from, for ``IRNLabeler``: the stride-4 CAMs of its CAM
    file (``make_cam.fusion: irn``, or IRN's imported) when they are on the stride-4 grid of the
    working size, else the maps (k, H, W) at the working size (pooled onto that grid)."""
    if strided is not None and tuple(strided.shape[1:]) == strided_size(image.size, IRN_STRIDE):
        return strided
    return image.maps(maps)


# -- make-aff-labels ---------------------------------------------------------------------------
def crf_score(image: WorkImage, maps: np.ndarray, alpha: float, iterations: int) -> np.ndarray:
    """The dense-CRF scores of one image for one background power ``alpha`` (paper Sec. 3.2),
    at the working size (the CRF's kernels are in pixels): (k+1, h, w) float32, background first.
    ``maps`` (k, H, W) the image's CAMs at the native size."""
    return crf_with_background(image.image, image.maps(maps), alpha, iterations)


def crf_scores(image: WorkImage, maps: np.ndarray, settings: AffLabelsConfig) -> tuple[np.ndarray, np.ndarray]:
    """``crf_score`` for the low and the high alpha: (low, high), what make-aff-labels keeps."""
    return (crf_score(image, maps, settings.low_alpha, settings.crf_iterations),
            crf_score(image, maps, settings.high_alpha, settings.crf_iterations))


def confident_label_map(image: WorkImage, keys: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The confident labels of one image at the native size (paper Sec. 3.2): (H, W) uint8, 0
    background, class index + 1 foreground, 255 unsure. Objects are trusted where the CRF with
    the *low* alpha (strong background score) still finds them, background where the CRF with
    the *high* alpha (weak background score) still finds it."""
    return image.label_to_native(confident_labels(low, high, keys=keys))


def ir_label_map(image: WorkImage, keys: np.ndarray, maps: np.ndarray, settings: IRLabelsConfig) -> np.ndarray:
    """IRN's confident inter-pixel-relation label of one image at the working size (IRN
    cam_to_ir_label.py; the label CRF's kernels are in pixels): (h, w) uint8, 0 background,
    class index + 1 foreground, 255 unsure. ``maps`` (k, H, W) the CAMs at the native size."""
    return ir_label(image.image, keys, image.maps(maps), settings.fg_threshold, settings.bg_threshold,
                    settings.crf_iterations, settings.gt_prob, IRN_LABEL_KERNELS)


# -- random-walk -------------------------------------------------------------------------------
@torch.inference_mode()
def image_affinity(affinity_net: Prepared, image: np.ndarray, radius: int) -> torch.Tensor:
    """(n_offsets, n_from) affinities of an (H, W, 3) uint8 image on its padded stride-8 grid."""
    x = affinity_net.normalize(image)[None]
    height, width = image.shape[:2]
    x = torch.nn.functional.pad(x, (0, -width % STRIDE, 0, -height % STRIDE))  # zero padding, as the original
    return affinity_net.net.affinity(affinity_net.input(x), radius).float()[0]


@dataclass(frozen=True)
class WalkInput:
    """What the random walk of one image starts from, at the working size: the CAMs and the
    AffinityNet's pair affinities."""

    maps: np.ndarray  # (k, h, w)
    affinity: torch.Tensor  # (n_offsets, n_from), on the network's device


def walk_input(affinity_net: Prepared, image: WorkImage, maps: np.ndarray, radius: int) -> WalkInput:
    """The CAMs ``maps`` (k, H, W, native size) and the affinities of the image, at the working size."""
    return WalkInput(image.maps(maps), image_affinity(affinity_net, image.image, radius))


def pseudo_label(image: WorkImage, keys: np.ndarray, start: WalkInput, settings: RandomWalkConfig) -> np.ndarray:
    """random-walk's pseudo label of one image (paper Sec. 3.4), at the native size: (H, W) uint8."""
    # 256 short sparse products: one thread (on the CPU), as the cores serve the loader workers too
    with torch_threads(1 if start.affinity.device.type == "cpu" else torch.get_num_threads()):
        label, _ = propagate_cams(keys, start.maps, start.affinity, image.size, alpha=settings.alpha,
                                  beta=settings.beta, logt=settings.logt, radius=settings.radius,
                                  method=settings.method)
    return image.label_to_native(label)


# -- segment -----------------------------------------------------------------------------------
class Segmenter:
    """A trained segmentation network and how segment uses it: mean softmax over ``scales`` (of
    the working size ``long_side``) and flips, optionally a dense CRF, argmax.

    ``classes`` are the object classes (label c + 1 is ``classes[c]``, 0 is background).
    """

    def __init__(self, net: Prepared, classes: Sequence[str], settings: SegmentConfig, long_side: int = 0) -> None:
        self.net, self.classes, self.settings, self.long_side = net, list(classes), settings, long_side

    @property
    def normalization(self) -> str:
        return self.net.normalization

    def probabilities(self, image: np.ndarray | Image.Image) -> torch.Tensor:
        """An image ((H, W, 3) uint8 RGB, any numpy image or PIL image), or a list of images of
        one size -> (classes + 1, H, W) float32 probabilities (CRF-refined with
        ``settings.crf``), background first; (N, classes + 1, H, W) for a list."""
        images = [to_rgb(im) for im in image] if isinstance(image, (list, tuple)) else [to_rgb(image)]
        factor = WorkImage(images[0], self.long_side).factor
        probs = multiscale_probabilities(self.net.scores, np.stack(images), self.net.normalize,
                                         scales=[s * factor for s in self.settings.scales], flip=self.settings.flip,
                                         device=self.net.device).cpu()
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


def segmentation_meta(cfg: RunConfig, normalization: str, classes: Sequence[str]) -> dict[str, Any]:
    """What train-seg's weights file carries so that the network can be used without the run's
    config (``affinitynet predict``, ``affinitynet.api``): how to build it, its classes, its
    input normalisation and the working size it was trained for."""
    ts = cfg.train_seg
    return {"format": 1, "model": ts.model, "backbone": cfg.backbone_of(ts), "aux_loss": ts.aux_loss,
            "num_classes": len(classes), "classes": list(classes), "normalization": normalization,
            "long_side": cfg.dataset.long_side}


# -- a run's networks, loaded from its work folder ---------------------------------------------
def load_segmenter(path: str | Path, device: str | torch.device = "cpu", settings: SegmentConfig | None = None,
                   long_side: int | None = None) -> Segmenter:
    """The segmentation network in ``path``: a work folder (its ``segmentation/final.pth``) or a
    ``final.pth`` written by train-seg, which names its network, classes, input and working
    size (``meta``). ``settings`` default to the run's ``segment`` section when ``path`` is a
    work folder, else to SegmentConfig(); ``long_side`` to the one the network was trained with."""
    path = Path(path)
    weights = artifacts.WorkDir(path).segmentation.final if path.is_dir() else path
    if not weights.exists():
        raise InputError(f"{weights}: segmentation network weights do not exist (run train-seg first)")
    state = artifacts.load_checkpoint(weights)
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict):
        raise InputError(f"{weights}: not a network written by train-seg (it does not say which network it holds)")
    net = build_segmentation_model(meta["model"], meta["backbone"], int(meta["num_classes"]), bool(meta["aux_loss"]))
    load_trained(net, weights, "segmentation network")
    cfg = run_config(path) if path.is_dir() else None
    settings = settings or (cfg.segment if cfg is not None else SegmentConfig())
    long_side = int(meta["long_side"]) if long_side is None else long_side
    return Segmenter(prepare(net, torch.device(device), settings.channels_last), meta["classes"], settings, long_side)


def run_config(workdir: str | Path) -> RunConfig | None:
    """The settings a work folder's outputs were made with (``records.recorded_config``), or
    None for a folder that has neither records nor a config."""
    wd = artifacts.WorkDir(workdir)
    if not wd.config.is_file() and not records.recorded_stages(workdir):
        return None
    return records.recorded_config(workdir)


class PseudoLabeler:
    """A run's classifier and its pixel-relation network with the run's settings: CAMs and a
    pseudo label of an image given its class names (the paper's pseudo labels for images with
    image-level tags), or given its CAMs from elsewhere (as ``import-cams`` takes them), as the
    run's random-walk stage makes them: PSA's walk on AffinityNet's affinities, or with method
    irn IRN's labels (semantic, and ``instances``). Load with ``load_pseudo_labeler(workdir)``;
    a work folder of imported CAMs has no classifier, so there the CAMs must be given."""

    def __init__(self, cfg: RunConfig, classes: Sequence[str], device: torch.device) -> None:
        wd = artifacts.WorkDir(cfg.workdir)
        self.cfg, self.classes = cfg, list(classes)
        self.classifier = None
        if wd.classifier.final.exists() or not wd.cam.is_dir():
            self.classifier = prepare(load_trained(build_classifier(cfg.train_cam.backbone, len(classes)),
                                                   wd.classifier.final, "classifier"), device)
        self.affinity_net, self.irn = None, None
        if cfg.method == "irn":
            net = load_trained(build_irn_net(cfg.backbone_of(cfg.train_irn)), wd.affinity.final, "IRN's network")
            self.irn = IRNLabeler(prepare(net, device), cfg.irn_labels)
        else:
            self.affinity_net = prepare(load_trained(build_affinity_net(cfg.backbone_of(cfg.train_aff)),
                                                     wd.affinity.final, "AffinityNet"), device)

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
        work = WorkImage(to_rgb(image), self.cfg.dataset.long_side)
        return cams_of_image(self._classifier(), work, self.label_vector(class_names), self.cfg.make_cam)

    def _classifier(self) -> Prepared:
        if self.classifier is None:
            raise InputError(f"{self.cfg.workdir}: its CAMs were imported, so it has no classifier to make CAMs; "
                             "give them: pseudo_label(image, class_names, cams=maps)")
        return self.classifier

    def pseudo_label(self, image: np.ndarray | Image.Image, class_names: Sequence[str],
                     cams: np.ndarray | None = None) -> np.ndarray:
        """random-walk's pseudo label: (H, W) uint8, 0 background, c + 1 class c. ``cams``: the
        image's CAMs from elsewhere instead of the classifier's, (k, H, W) one map per name of
        ``class_names`` in that order, at the image size; maps not in [0, 1] are normalised as
        ``import-cams`` does (``algorithms.cam.conform_cams``)."""
        work, keys, maps, strided = self._work_and_cams(image, class_names, cams)
        if self.irn is not None:
            return work.label_to_native(self.irn.semantic_label(work.image, keys, irn_walk_cams(work, maps, strided)))
        assert self.affinity_net is not None
        start = walk_input(self.affinity_net, work, maps, self.cfg.random_walk.radius)
        return pseudo_label(work, keys, start, self.cfg.random_walk)

    def instances(self, image: np.ndarray | Image.Image, class_names: Sequence[str],
                  cams: np.ndarray | None = None) -> Detections:
        """IRN's instance pseudo labels (method irn only), as random-walk writes them: masks
        (N, H, W) bool at the image size, classes (N,) class indices, scores (N,). ``cams`` as
        for ``pseudo_label``."""
        if self.irn is None:
            raise InputError(f"{self.cfg.workdir}: instance pseudo labels come from IRN's displacement field; "
                             "this run's method is psa (run with method irn)")
        work, keys, maps, strided = self._work_and_cams(image, class_names, cams)
        found = self.irn.instances(work.image, keys, irn_walk_cams(work, maps, strided))
        return Detections(work.masks_to_native(found.masks), found.classes, found.scores)

    def _work_and_cams(self, image: np.ndarray | Image.Image, class_names: Sequence[str], cams: np.ndarray | None
                       ) -> tuple[WorkImage, np.ndarray, np.ndarray, np.ndarray | None]:
        """The image at the run's working size, and its CAMs: keys, maps at the native size and
        (``make_cam.fusion: irn``) the stride-4 maps, as make-cam writes them."""
        work = WorkImage(to_rgb(image), self.cfg.dataset.long_side)
        if cams is not None:
            return (work, *self._given_cams(class_names, cams, work.native_size), None)
        if self.cfg.make_cam.fusion == "irn":
            keys, strided, maps = irn_cams_of_image(self._classifier(), work, self.label_vector(class_names),
                                                    self.cfg.make_cam)
            return work, keys, maps, strided
        return (work, *self.cams(image, class_names), None)

    def _given_cams(self, class_names: Sequence[str], cams: np.ndarray,
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(keys ascending, maps in [0, 1]) of CAMs given in the order of ``class_names``."""
        index = np.flatnonzero(self.label_vector(class_names))
        names_order = np.array([self.classes.index(n) for n in dict.fromkeys(class_names)])
        maps = conform_cams(np.asarray(cams), size).maps
        if len(maps) != len(names_order):
            raise ValueError(f"{len(maps)} CAMs for {len(names_order)} class names")
        return index, maps[np.argsort(names_order)]


def load_pseudo_labeler(workdir: str | Path, device: str | torch.device = "cpu") -> PseudoLabeler:
    """The classifier and AffinityNet (or IRN's network) a run trained, with the settings of its
    config.yaml."""
    cfg = run_config(workdir)
    if cfg is None:
        raise InputError(f"{workdir}: not a work folder of `affinitynet run` (no records, no config.yaml)")
    return PseudoLabeler(cfg, open_dataset(cfg.dataset).classes, torch.device(device))


# -- IRN's pseudo labels -----------------------------------------------------------------------
class IRNLabeler:
    """IRN's inter-pixel relation network with IRN's settings (``IRNLabelsConfig``): the class
    boundaries and displacements of an image, and from them and the image's CAMs IRN's semantic
    pseudo label (``make_sem_seg_labels``) and instance pseudo labels (``make_ins_seg_labels``).
    The walk is the sparse one (``settings.method``), so a VOC image's stride-4 walk needs
    megabytes where IRN's dense matrix needs ~0.5 GB. Load IRN's ``res50_irn.pth`` with
    ``load_irn_labeler``.

    CAMs are (k, H, W) at the image size (any method's; maps not in [0, 1] are normalised as
    ``import-cams`` does and pooled onto the stride-4 grid) or IRN's own stride-4 ``cam`` (k, h,
    w), for the classes ``keys`` (class indices, ascending as IRN's ``keys``).
    """

    def __init__(self, net: Prepared, settings: IRNLabelsConfig | None = None) -> None:
        self.net, self.settings = net, settings or IRNLabelsConfig()

    @torch.inference_mode()
    def boundary(self, image: np.ndarray | Image.Image) -> tuple[torch.Tensor, np.ndarray]:
        """(boundary map (h, w) in [0, 1] on the network's device, displacement field (2, h, w)
        float32 in stride-4 cells) of an image, h = ceil(H/4), w = ceil(W/4)."""
        x = self.net.input(self.net.normalize(to_rgb(image))[None])
        with self.net.autocast():
            edge, displacement = self.net.net.edge_displacement(x, self.settings.crop)
        return edge[0].float(), displacement.float().cpu().numpy()

    def grid_cams(self, cams: np.ndarray, image_hw: tuple[int, int]) -> torch.Tensor:
        """The CAMs on the stride-4 grid: (k, h, w) float32 in [0, 1] on the network's device."""
        maps = np.asarray(cams, np.float32)
        if maps.ndim == 3 and tuple(maps.shape[1:]) == strided_size(image_hw, IRN_STRIDE) != tuple(image_hw):
            strided = np.clip(maps, 0, 1)
        else:
            strided = strided_cams(conform_cams(maps, image_hw).maps, IRN_STRIDE)
        return torch.from_numpy(np.ascontiguousarray(strided)).to(self.net.device)

    @torch.inference_mode()
    def semantic_label(self, image: np.ndarray | Image.Image, keys: np.ndarray, cams: np.ndarray) -> np.ndarray:
        """IRN's semantic pseudo label: (H, W) uint8, 0 background, class index + 1."""
        return self.labels(image, keys, cams, instances=False).semantic

    @torch.inference_mode()
    def instances(self, image: np.ndarray | Image.Image, keys: np.ndarray, cams: np.ndarray) -> Detections:
        """IRN's instance pseudo labels: detections with masks (N, H, W) bool, classes (N,)
        class indices and scores (N,); ``artifacts.save_instances`` writes them."""
        found = self.labels(image, keys, cams, semantic=False).detections
        assert found is not None
        return found

    @torch.inference_mode()
    def labels(self, image: np.ndarray | Image.Image, keys: np.ndarray, cams: np.ndarray, semantic: bool = True,
               instances: bool = True) -> IRNLabels:
        """The boundary map and, from one pass of the network, the semantic and / or instance
        pseudo labels of an image (what random-walk writes with method irn)."""
        rgb, s = to_rgb(image), self.settings
        edge, displacement = self.boundary(rgb)
        grid, keys = self.grid_cams(cams, rgb.shape[:2]), np.asarray(keys)
        label = found = None
        if semantic:
            label = semantic_pseudo_label(grid, keys, edge, rgb.shape[:2], beta=s.beta, exp_times=s.exp_times,
                                          bg_threshold=s.sem_seg_bg_thres, radius=s.radius, stride=IRN_STRIDE,
                                          method=s.method)[0]
        if instances:
            found = instance_pseudo_labels(grid, keys, edge, displacement, rgb.shape[:2], beta=s.beta,
                                           exp_times=s.exp_times, radius=s.radius, stride=IRN_STRIDE,
                                           bg_threshold=s.ins_seg_bg_thres, centroid_iterations=s.centroid_iterations,
                                           weak_threshold=s.weak_threshold, min_area_fraction=s.min_area,
                                           method=s.method).detections
        return IRNLabels(edge.cpu().numpy(), label, found)


@dataclass(frozen=True)
class IRNLabels:
    """What IRN makes of one image: ``boundary`` (ceil(H/4), ceil(W/4)) float32 in [0, 1],
    ``semantic`` (H, W) uint8 label map (0 background, class index + 1) and ``detections``
    (instance masks (N, H, W), classes, scores); None where not asked for."""

    boundary: np.ndarray
    semantic: np.ndarray | None
    detections: Detections | None


def load_irn_labeler(weights: str | Path, device: str | torch.device = "cpu",
                     settings: IRNLabelsConfig | None = None) -> IRNLabeler:
    """IRN's network as an ``IRNLabeler``: from a work folder of ``method: irn`` (its trained
    network and its ``irn_labels`` settings), or from a weights file (IRN's released
    ``res50_irn.pth``, or a state dict of ``models.irn.ResNet50IRN``; loaded strictly, without
    the training-only path-index buffers IRN saves with it) with IRN's settings."""
    path = Path(weights)
    if path.is_dir():
        cfg = run_config(path)
        if cfg is None or cfg.method != "irn":
            raise InputError(f"{path}: not a work folder of `affinitynet run` with method irn")
        net = load_trained(build_irn_net(cfg.backbone_of(cfg.train_irn)), artifacts.WorkDir(path).affinity.final,
                           "IRN's network")
        return IRNLabeler(prepare(net, torch.device(device)), settings or cfg.irn_labels)
    if not path.exists():
        raise InputError(f"{path}: IRN weights do not exist")
    state = artifacts.load_checkpoint(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a state dict (name -> tensor) of IRN's network")
    net = ResNet50IRN()
    try:
        load_irn_state_dict(net, state)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    return IRNLabeler(prepare(net, torch.device(device)), settings)
