"""Typed configuration of every command and stage, with the paper's defaults in one place.

Every setting the paper (Ahn & Kwak, CVPR 2018) or the original PSA release fixes has its value
here, with the source in a comment where it is not obvious; settings of our own (loader workers,
memory format, the working size, ...) say what they are. The fixed constants of the algorithms
themselves (the CRF's kernel widths, the normalisation means) live with the algorithms. YAML
files, ``--set key=value`` and command-line flags only override these defaults, through
``load_config``, which validates the result (ranges are declared with the fields, ``bounded``)
and returns it frozen; the final config of a run is written into its work folder.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from affinitynet.algorithms.pairs import min_image_size
from affinitynet.errors import ConfigError
from affinitynet.stage_table import RECORDED_BY_NAME

#: recipes that ship with the package (``configs/`` in the repository): ``--config demo`` works
#: from anywhere
RECIPES = Path(__file__).resolve().parent / "configs"


def bounded(default: Any, low: float, high: float) -> Any:
    """A dataclass field whose value (every element, for a tuple) must lie in [low, high]."""
    return field(default=default, metadata={"range": (low, high)})


def one_of(default: Any, choices: tuple[Any, ...]) -> Any:
    """A dataclass field whose value must be one of ``choices``."""
    return field(default=default, metadata={"choices": choices})


# The choices of the settings that name a thing defined elsewhere, kept here so that validation
# needs no torch import (tests/test_config.py checks they agree):
# affinitynet.models.BACKBONES, affinitynet.models.SEGMENTATION_MODELS, the synthetic families
# (affinitynet.data.synthetic.families), the export formats (affinitynet.stages.export)
BACKBONE_NAMES: tuple[str, ...] = ("resnet38", "vgg16", "resnet50", "tiny")
SEGMENTATION_MODEL_NAMES: tuple[str, ...] = ("largefov", "deeplabv2", "deeplabv3_resnet50", "deeplabv3_resnet101")
SYNTHETIC_FAMILIES: tuple[str, ...] = ("shapes", "clutter")
EXPORT_FORMATS: tuple[str, ...] = ("onnx", "torchscript")
WALK_METHODS: tuple[str, ...] = ("sparse", "dense")  # dense: the original's, for checking
# the pixel-relation method of stages 2b-4: PSA (this paper: AffinityNet) or IRN (Ahn, Cho & Kwak,
# CVPR 2019: class boundaries); stage_table.METHOD_SECTIONS names each method's sections
METHODS: tuple[str, ...] = ("psa", "irn")
IRN_BACKBONES: tuple[str, ...] = ("tiny", "resnet50")  # the backbones of IRN's network (models.build_irn_net)
# CAM files of other toolkits (import-cams, export-labels): affinitynet.artifacts.EXCHANGE_SUFFIX
CAM_EXCHANGE_FORMATS: tuple[str, ...] = ("psa", "irn", "npz")
# the stages whose label maps export-labels writes (their label folders in the stage table)
LABEL_STAGES: tuple[str, ...] = tuple(s for s, info in RECORDED_BY_NAME.items() if not info.trains and s != "tune")


# --------------------------------------------------------------------------------------------
# Data-layer commands
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SynthConfig:
    """``affinitynet synth``: write the built-in synthetic dataset in VOC layout."""

    out: str = "work/synthetic"
    train: int = bounded(240, 0, 1 << 24)
    val: int = bounded(60, 0, 1 << 24)
    seed: int = 0
    family: str = one_of("shapes", SYNTHETIC_FAMILIES)  # affinitynet/data/synthetic*.py
    scale: float = bounded(1.0, 0.05, 10.0)  # resize every image (e.g. 0.55: shapes of 110-176 px)


@dataclass(frozen=True)
class PrepareVOCConfig:
    """``affinitynet prepare-voc``: split lists and image labels from VOC 2012 (+ SBD)."""

    voc_root: str = ""
    sbd_root: str = ""
    out: str = ""  # default: the VOC root itself
    convert_sbd: bool = False  # also write SBD .mat masks as palette PNGs


@dataclass(frozen=True)
class PrepareCOCOConfig:
    """``affinitynet prepare-coco``: MS-COCO 2014 as a VOC-layout dataset (lists, labels,
    image links, ground-truth PNGs)."""

    coco_root: str = ""  # holds train2014/, val2014/, annotations/instances_{train,val}2014.json
    out: str = ""  # default: the COCO root itself
    processes: int = bounded(0, 0, 1024)  # mask-writing processes; 0 = all cores


@dataclass(frozen=True)
class EvaluateConfig:
    """``affinitynet evaluate``: mIoU of a folder of palette PNG predictions, or mask AP of a
    folder of instance files."""

    pred: str = ""
    dataset: str = ""
    split: str = "val"
    out: str = ""  # JSON path; default <pred>/../eval_<pred-folder>_<split>.json
    # score instance files (<pred>/<name>.json, COCO results with RLE) against SegmentationObject:
    # mask AP at this IoU (IRN reports 0.5)
    instances: bool = False
    iou: float = bounded(0.5, 0.0, 1.0)


@dataclass(frozen=True)
class ConvertWeightsConfig:
    """``affinitynet convert-weights IN OUT.pth``."""

    input: str = ""
    output: str = ""


@dataclass(frozen=True)
class ExportConfig:
    """``affinitynet export``: a trained segmentation network as ONNX or TorchScript."""

    weights: str = ""  # a work folder or train-seg's final.pth
    out: str = ""
    format: str = one_of("onnx", EXPORT_FORMATS)


@dataclass(frozen=True)
class ImportCamsConfig:
    """``affinitynet import-cams``: another method's CAMs become a work folder's make-cam
    outputs (with the run's config for the dataset and the work folder)."""

    source: str = ""  # folder of one file per image: <image>.npy (psa, irn) or <image>.npz (npz)
    format: str = one_of("npz", CAM_EXCHANGE_FORMATS)
    trust_pickle: bool = False  # psa and irn files are pickles, which can run code: read them only when trusted


@dataclass(frozen=True)
class ExportLabelsConfig:
    """``affinitynet export-labels``: a work folder's label maps and CAMs where other toolkits
    read them."""

    workdir: str = ""
    out: str = ""
    labels: str = one_of("random_walk", ("", *LABEL_STAGES))  # whose label maps ("" = none)
    png: str = one_of("palette", ("palette", "gray"))  # gray: plain index PNGs, as PSA and IRN write them
    cams: str = one_of("", ("", *CAM_EXCHANGE_FORMATS))  # the CAMs in this format ("" = none)


# --------------------------------------------------------------------------------------------
# Pipeline stages (all share the dataset and work folder of a run)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetConfig:
    root: str = ""  # a folder in VOC layout
    labels: str = ""  # optional JSON/CSV image -> class names (else Annotations/*.xml)
    train_split: str = "train_aug"  # paper: CAM and AffinityNet trained on VOC train_aug
    eval_split: str = "train"  # paper reports pseudo-label mIoU on VOC train
    val_split: str = "val"  # validation loss of the training stages (skipped when absent)
    infer_splits: tuple[str, ...] = ("train_aug",)  # images that get CAMs / labels
    # The size every stage sees an image at. 0: its native size (the paper; its pixel sizes are
    # for VOC's images, 500 px on the long side). N: the image resized to a long side of N px
    # first, so that the training crops and resize ranges (px) and the inference scales (x N)
    # mean the same on a dataset of any image size. Outputs stay at the native size.
    long_side: int = bounded(0, 0, 1 << 14)
    # Read images with their EXIF orientation applied (upright), and turn every ground-truth mask
    # the same way. Off by default: the original reads the stored pixel grid, and VOC's and COCO's
    # masks are drawn on it; either way an image and its mask stay aligned.
    exif_transpose: bool = False


@dataclass(frozen=True)
class TrainingConfig:
    """What the three training stages share: the network and its initial weights, SGD with the
    poly schedule, the augmentation and the loop. The defaults are AffinityNet's (PSA
    train_aff.py: crop 448 and flip, colour jitter, no rescale, fp32); the classifier and the
    segmentation network change some."""

    backbone: str = one_of("", ("", *BACKBONE_NAMES))  # "" = the classifier's (train_cam.backbone)
    weights: str = ""  # ImageNet weights: .params (ResNet-38), .caffemodel (VGG-16), .pth
    batch_size: int = bounded(8, 1, 1 << 16)
    epochs: int = bounded(8, 0, 1 << 16)
    lr: float = bounded(0.1, 0.0, 100.0)
    weight_decay: float = bounded(5e-4, 0.0, 1.0)
    # The original's SGD received the weight decay as its momentum argument (positional call),
    # so PSA's models were trained with momentum 5e-4 (= the weight decay)
    momentum: float = bounded(5e-4, 0.0, 0.999)
    # augmentation, in the original's order: random long side (null: none, the image at its
    # working size), flip, colour jitter (brightness, contrast, saturation, hue), random crop
    crop: int = bounded(448, 8, 1 << 14)
    resize_long: tuple[int, int] | None = bounded(None, 8, 1 << 14)  # random long side, low <= high
    flip: bool = True  # random horizontal flip (off for classes that depend on orientation)
    color_jitter: tuple[float, float, float, float] = bounded((0.3, 0.3, 0.3, 0.1), 0.0, 1.0)
    num_workers: int = bounded(2, 0, 256)  # persistent across epochs
    amp: bool = False  # bf16 autocast, on CUDA only (the original trains in fp32)
    channels_last: bool = True  # NHWC network and input, on CUDA only
    compile: bool = False
    seed: int = 0


@dataclass(frozen=True)
class TrainCamConfig(TrainingConfig):
    """Stage 1: the multi-label classifier (paper Sec. 3.1; PSA train_cls.py)."""

    backbone: str = "resnet38"
    batch_size: int = 16
    epochs: int = 15
    resize_long: tuple[int, int] | None = (256, 512)  # PSA train_cls.py: RandomResizeLong(256, 512)


@dataclass(frozen=True)
class MakeCamConfig:
    """Stage 2a: multi-scale + flip CAMs (PSA infer_cls.py)."""

    scales: tuple[float, ...] = bounded((1.0, 0.5, 1.5, 2.0), 1e-3, 100.0)  # summed in this order
    flip: bool = True
    # how the scales are fused: "psa" (PSA infer_cls.py: each map upsampled to the image, then
    # summed) or "irn" (IRN make_cam.py: the flip added at the network's grid, the sum resized to
    # the image and to the stride-4 grid, which the CAM file keeps for IRN's walk)
    fusion: str = one_of("psa", ("psa", "irn"))
    bg_score: float = bounded(0.2, 0.0, 1.0)  # background score of the CAM prediction (PSA: 0.2)
    save_pred: bool = True
    sweep: bool = True  # background-threshold sweep on the eval split
    num_workers: int = bounded(2, 0, 256)
    amp: bool = False  # bf16 autocast, on CUDA only (CAMs then differ by ~1e-2 relative)
    channels_last: bool = True  # NHWC network and input (faster on CUDA and CPU)


@dataclass(frozen=True)
class AffLabelsConfig:
    """Stage 2b: dense-CRF confident regions (paper Sec. 3.2)."""

    low_alpha: float = bounded(4.0, 0.0, 1e3)  # strong background: the objects it keeps are confident
    high_alpha: float = bounded(32.0, 0.0, 1e3)  # weak background: the background it keeps is confident
    crf_iterations: int = bounded(10, 1, 1000)
    processes: int = bounded(0, 0, 1024)  # 0 = all cores


@dataclass(frozen=True)
class TrainAffConfig(TrainingConfig):
    """Stage 3: AffinityNet (paper Sec. 3.3; PSA train_aff.py)."""

    # the trained classifier's backbone when no weights are given (the paper starts from
    # ImageNet; on data without ImageNet weights, e.g. the synthetic set, that is the better start)
    init_from_classifier: bool = True
    radius: int = bounded(5, 2, 32)  # pairs within this radius on the stride-8 grid (radius 1 has none)


@dataclass(frozen=True)
class RandomWalkConfig:
    """Stage 4: random walk with the learned affinities (paper Sec. 3.4, Eq. 7-9)."""

    alpha: float = bounded(16.0, 0.0, 1e3)
    beta: float = bounded(8.0, 1e-6, 1e3)
    logt: int = bounded(8, 0, 20)  # t = 2^logt = 256
    radius: int = bounded(5, 2, 32)
    method: str = one_of("sparse", WALK_METHODS)
    num_workers: int = bounded(2, 0, 256)  # image decoding processes
    channels_last: bool = True  # NHWC AffinityNet and input (faster on CUDA and CPU)


@dataclass(frozen=True)
class IRLabelsConfig:
    """Stage 2b with ``method: irn``: IRN's confident inter-pixel-relation labels (IRN
    cam_to_ir_label.py; run_sample.py's defaults): the label CRF of the CAMs against a
    background plane of ``fg_threshold`` gives the objects, against ``bg_threshold`` the
    background; the rest is unsure (255)."""

    fg_threshold: float = bounded(0.30, 0.0, 1.0)  # conf_fg_thres
    bg_threshold: float = bounded(0.05, 0.0, 1.0)  # conf_bg_thres
    crf_iterations: int = bounded(10, 1, 1000)
    gt_prob: float = bounded(0.7, 0.01, 0.99)  # the label CRF's confidence in its input labels
    processes: int = bounded(0, 0, 1024)  # 0 = all cores


@dataclass(frozen=True)
class TrainIRNConfig(TrainingConfig):
    """Stage 3 with ``method: irn``: IRN's boundary and displacement network on the frozen
    backbone (IRN train_irn.py: radius 10, crop 512, rescale 0.5-1.5, flip, no colour jitter,
    3 epochs of batch 32, lr 0.1 (x10 for the displacement branch), weight decay 1e-4, and, as
    its optimizer makes PSA's positional call, momentum = the weight decay)."""

    init_from_classifier: bool = True  # the trained classifier's backbone when no weights are given
    radius: int = bounded(10, 2, 32)  # training pairs within this radius on the stride-4 grid
    rescale: tuple[float, float] = bounded((0.5, 1.5), 0.01, 100.0)  # random scale of the image, low <= high
    crop: int = 512
    batch_size: int = 32
    epochs: int = 3
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 1e-4
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class IRNLabelsConfig:
    """IRN's pseudo labels from its class boundaries and displacement field (Ahn, Cho & Kwak,
    CVPR 2019; the defaults of IRN's run_sample.py): the walk on boundary affinities for
    semantic labels, the displacement field's instances for instance labels."""

    beta: float = bounded(10.0, 1e-6, 1e3)  # beta
    exp_times: int = bounded(8, 0, 20)  # t = 2^exp_times = 256 steps
    radius: int = bounded(5, 2, 32)  # the walk's pairs on the stride-4 grid
    sem_seg_bg_thres: float = bounded(0.25, 0.0, 1.0)  # background plane of the semantic label
    ins_seg_bg_thres: float = bounded(0.25, 0.0, 1.0)  # background plane of the instance masks
    crop: int = bounded(512, 8, 1 << 14)  # the network's input is zero-padded to crop x crop
    centroid_iterations: int = bounded(300, 0, 1 << 16)  # steps along the displacement field
    weak_threshold: float = bounded(2.5, 0.0, 1e3)  # displacement (cells) under which a cell is a centroid
    min_area: float = bounded(0.01, 0.0, 1.0)  # detections smaller than this share of the image score 0
    instances: bool = True  # also instance pseudo labels, instances/<image>.json (IRN's make_ins_seg_labels)
    method: str = one_of("sparse", WALK_METHODS)
    num_workers: int = bounded(2, 0, 256)  # image decoding processes (random-walk with method irn)
    channels_last: bool = True  # NHWC network and input


@dataclass(frozen=True)
class TrainSegConfig(TrainingConfig):
    """Stage 5a: the segmentation network on the pseudo labels (paper Sec. 5 trains DeepLab on
    them; the optimiser settings here are DeepLab's usual ones, which the paper does not list)."""

    # largefov (the backbone + DeepLab-LargeFOV head, the paper's), deeplabv2 (ResNet-101 + ASPP),
    # deeplabv3_resnet50 / deeplabv3_resnet101 (torchvision's); see affinitynet/models/segmentation.py
    model: str = one_of("largefov", SEGMENTATION_MODEL_NAMES)
    aux_loss: bool = False  # deeplabv3_*: torchvision's auxiliary head on layer3 (loss weight 0.5)
    init_from_classifier: bool = True  # largefov: the classifier's backbone when no weights are given
    labels: str = ""  # label folder; default: the random walk's pseudo_labels/
    epochs: int = 12
    lr: float = 0.01  # x10 for the new head (poly schedule, as the other stages)
    momentum: float = 0.9
    resize_long: tuple[int, int] | None = (320, 640)


@dataclass(frozen=True)
class SegmentConfig:
    """Stage 5b: segment a split with the trained network and evaluate it."""

    split: str = ""  # default: dataset.val_split
    scales: tuple[float, ...] = bounded((1.0,), 1e-3, 100.0)
    flip: bool = True
    crf: bool = False  # dense-CRF post-processing of the probabilities
    crf_iterations: int = bounded(10, 1, 1000)
    num_workers: int = bounded(2, 0, 256)
    channels_last: bool = True  # NHWC network and input (faster on CUDA and CPU)


@dataclass(frozen=True)
class PredictConfig:
    """``affinitynet predict``: a trained segmentation network on any images, as segment uses
    it (``segment``: scales, flip, CRF, loader workers)."""

    weights: str = ""  # a work folder or train-seg's final.pth
    inputs: tuple[str, ...] = ()  # image files, folders, .txt lists of paths
    out: str = ""
    overlay: bool = False  # also <out>/overlay/<name>.jpg: the labels over the image
    long_side: int = bounded(-1, -1, 1 << 14)  # -1: the working size the network was trained at
    batch_size: int = bounded(1, 1, 1024)  # images of one size per network pass
    device: str = "auto"
    exif_transpose: bool = False  # read images upright by their EXIF orientation (default: stored grid)
    segment: SegmentConfig = field(default_factory=SegmentConfig)


@dataclass(frozen=True)
class TuneConfig:
    """``affinitynet tune``: the settings searched on images with ground truth (not the paper's:
    a search around them)."""

    split: str = ""  # default: dataset.eval_split (needs ground truth)
    images: int = bounded(60, 4, 1 << 20)  # the first ones with ground truth; half to choose, half to check
    margin: float = bounded(0.5, 0.0, 100.0)  # mIoU a setting must gain over the current one to replace it
    bg_scores: tuple[float, ...] = bounded(tuple(round(0.05 * i, 2) for i in range(1, 20)), 0.0, 1.0)
    low_alphas: tuple[float, ...] = bounded((1.0, 2.0, 4.0, 8.0), 0.0, 1e3)
    high_alphas: tuple[float, ...] = bounded((8.0, 16.0, 32.0, 64.0), 0.0, 1e3)
    alphas: tuple[float, ...] = bounded((4.0, 8.0, 12.0, 16.0, 24.0, 32.0), 0.0, 1e3)
    betas: tuple[float, ...] = bounded((4.0, 8.0, 12.0), 1e-6, 1e3)
    logts: tuple[int, ...] = bounded((4, 5, 6, 7, 8), 0, 20)
    # method irn: ir_labels' thresholds and irn_labels' walk (IRN: 0.30 / 0.05; 0.25, beta 10, exp_times 8)
    fg_thresholds: tuple[float, ...] = bounded((0.2, 0.25, 0.3, 0.35, 0.4), 0.0, 1.0)
    bg_thresholds: tuple[float, ...] = bounded((0.03, 0.05, 0.08, 0.12), 0.0, 1.0)
    sem_seg_bg_thresholds: tuple[float, ...] = bounded((0.15, 0.2, 0.25, 0.3, 0.35, 0.4), 0.0, 1.0)
    irn_betas: tuple[float, ...] = bounded((5.0, 10.0, 15.0), 1e-6, 1e3)
    exp_times: tuple[int, ...] = bounded((5, 6, 7, 8), 0, 20)


@dataclass(frozen=True)
class RunConfig:
    """``affinitynet run``: the whole pipeline."""

    workdir: str = "work/run"
    device: str = "auto"  # auto = cuda when available
    # outputs made with other settings (records.py): "redo" sets them aside and makes them again,
    # "refuse" stops with an error naming the changed settings (to keep them)
    changed: str = one_of("redo", ("redo", "refuse"))
    # how stages 2b-4 learn pixel relations: "psa" (AffinityNet, this paper) or "irn" (IRN's
    # class boundaries: sections ir_labels, train_irn, irn_labels)
    method: str = one_of("psa", METHODS)
    redo: tuple[str, ...] = ()  # stages to redo even with unchanged settings (and, so, those after them)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    aff_labels: AffLabelsConfig = field(default_factory=AffLabelsConfig)
    train_aff: TrainAffConfig = field(default_factory=TrainAffConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    ir_labels: IRLabelsConfig = field(default_factory=IRLabelsConfig)
    train_irn: TrainIRNConfig = field(default_factory=TrainIRNConfig)
    irn_labels: IRNLabelsConfig = field(default_factory=IRNLabelsConfig)
    train_seg: TrainSegConfig = field(default_factory=TrainSegConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def backbone_of(self, section: TrainingConfig) -> str:
        """The backbone of a training stage's network: its own, else the classifier's."""
        return section.backbone or self.train_cam.backbone


# Classifier recipes that differ from the paper's ResNet-38/VGG-16 one, by backbone: ResNet-50
# follows IRN (Ahn et al., CVPR 2019, train_cam.py): 5 epochs, weight decay 1e-4, crop 512,
# long side 320-640, and (IRN's optimizer makes the same positional call as PSA's) momentum
# = the weight decay. They replace the defaults above; YAML and --set still override them.
BACKBONE_RECIPES: dict[str, dict[str, Any]] = {
    "resnet50": {"train_cam": {"epochs": 5, "weight_decay": 1e-4, "momentum": 1e-4, "crop": 512,
                               "resize_long": [320, 640]}},
}

# The training recipe of each segmentation network's paper, by train_seg.model (largefov keeps
# the train_seg defaults above):
# - deeplabv2: Chen et al., TPAMI 2017 (DeepLab-v2 on VOC aug): lr 2.5e-4 (x10 for the ASPP
#   layers), momentum 0.9, weight decay 5e-4, batch 10, crop 321, 20k iterations = 19 epochs
#   of train_aug's 10,582 images;
# - deeplabv3_*: torchvision's segmentation reference: lr 0.02 for batch 32, here 0.005 for the
#   batch of 8 (linear scaling), momentum 0.9, weight decay 1e-4, batch norm trained.
SEGMENTATION_RECIPES: dict[str, dict[str, Any]] = {
    "deeplabv2": {"train_seg": {"lr": 2.5e-4, "momentum": 0.9, "weight_decay": 5e-4, "batch_size": 10,
                                "crop": 321, "epochs": 19}},
    "deeplabv3_resnet50": {"train_seg": {"lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4}},
    "deeplabv3_resnet101": {"train_seg": {"lr": 0.005, "momentum": 0.9, "weight_decay": 1e-4}},
}

# settings that come with a choice: (section, key) -> {chosen value: overrides}
RECIPES_BY_CHOICE: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("train_cam", "backbone"): BACKBONE_RECIPES,
    ("train_seg", "model"): SEGMENTATION_RECIPES,
}



# --------------------------------------------------------------------------------------------
# Validation, YAML, --set overrides
# --------------------------------------------------------------------------------------------
def _field_metadata(cls: type, name: str, key: str) -> Any:
    """The ``key`` ("range", "choices") declared with field ``name`` of ``cls``, or None; a
    subclass that only changes a default keeps what its base class declared."""
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            for f in dataclasses.fields(klass):
                if f.name == name and key in f.metadata:
                    return f.metadata[key]
    return None


def validate(cfg: Any, prefix: str = "") -> None:
    """Declared field ranges and choices and a few cross-field rules, recursively; raises
    ConfigError naming the key."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{prefix}{f.name}.")
        else:
            _check_field(type(cfg), f.name, value, f"{prefix}{f.name}")
    _check_rules(cfg, prefix)


def _check_field(cls: type, name: str, value: Any, full: str) -> None:
    choices = _field_metadata(cls, name, "choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"config key '{full}' = {value!r}: choose one of {', '.join(c for c in choices if c)}")
    bounds = _field_metadata(cls, name, "range")
    if bounds is None or value is None:
        return
    lo, hi = bounds
    items = value if isinstance(value, (tuple, list)) else (value,)
    if isinstance(value, (tuple, list)) and not value:
        raise ConfigError(f"config key '{full}' is empty")
    if any(not lo <= v <= hi for v in items):
        raise ConfigError(f"config key '{full}' = {value} is out of range [{lo}, {hi}]")


def _check_rules(cfg: Any, prefix: str) -> None:
    """The rules that involve more than one field."""
    if isinstance(cfg, TrainingConfig) and cfg.resize_long and cfg.resize_long[0] > cfg.resize_long[1]:
        raise ConfigError(f"config key '{prefix}resize_long' = {cfg.resize_long}: need low <= high")
    if isinstance(cfg, TrainCamConfig) and not cfg.backbone:
        raise ConfigError(f"config key '{prefix}backbone' is empty: choose one of {', '.join(BACKBONE_NAMES)}")
    if isinstance(cfg, TrainAffConfig):
        # the confident labels are averaged over the crop's 8x8 blocks (the stride-8 grid), and
        # that grid must hold one pair of every offset
        least = -(-max(min_image_size(cfg.radius)) // 8) * 8
        if cfg.crop % 8:
            raise ConfigError(f"config key '{prefix}crop' = {cfg.crop} must be a multiple of 8")
        if cfg.crop < least:
            raise ConfigError(f"config key '{prefix}crop' = {cfg.crop} is too small for radius {cfg.radius}: "
                              f"need at least {least}")
    if isinstance(cfg, TrainIRNConfig):
        least = 4 * (2 * cfg.radius - 1)  # the stride-4 grid of the crop must hold a pair of every offset
        if cfg.crop % 4 or cfg.crop < least:
            raise ConfigError(f"config key '{prefix}crop' = {cfg.crop} must be a multiple of 4 and at least "
                              f"{least} for radius {cfg.radius}")
        if cfg.rescale[0] > cfg.rescale[1]:
            raise ConfigError(f"config key '{prefix}rescale' = {cfg.rescale}: need low <= high")
    if isinstance(cfg, RunConfig) and cfg.method == "irn" and cfg.backbone_of(cfg.train_irn) not in IRN_BACKBONES:
        raise ConfigError(f"config key 'method' = irn: IRN's network is built on the backbones "
                          f"{', '.join(IRN_BACKBONES)}, not {cfg.backbone_of(cfg.train_irn)} "
                          "(set train_irn.backbone)")
    if isinstance(cfg, RunConfig) and set(cfg.redo) - set(RECORDED_BY_NAME):
        raise ConfigError(f"config key 'redo' = {list(cfg.redo)}: name stages among {', '.join(RECORDED_BY_NAME)}")
    if isinstance(cfg, TrainSegConfig) and cfg.aux_loss and not cfg.model.startswith("deeplabv3"):
        raise ConfigError(f"config key '{prefix}aux_loss': only the deeplabv3_* models have an auxiliary head")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if tp in (int, float):
        number = _number(value, tp)
        if number is None:
            raise ConfigError(f"config key '{key}': expected {'an integer' if tp is int else 'a number'}, "
                              f"got {value!r}")
        return number
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}': expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, key) for v, a in zip(value, args))
        inner = args[0] if args else str
        items = [_coerce(v, inner, key) for v in value]
        return tuple(items) if origin is tuple else items
    raise ConfigError(f"config key '{key}': unsupported type {tp}")


def _number(value: Any, tp: type) -> int | float | None:
    """``value`` as an int / float, or None when it is not one (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = tp(value)
        except ValueError:
            return None
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) else None


def apply_overrides(cfg: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """A copy of dataclass ``cfg`` with the fields of nested ``data`` set; unknown keys are errors."""
    hints = typing.get_type_hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}': expected a mapping, got {value!r}")
            changes[key] = apply_overrides(current, value, prefix=f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
    return dataclasses.replace(cfg, **changes)


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def recipe_path(path: str | Path) -> Path:
    """``path`` itself, or for a bare name without a file of that name (``demo``,
    ``voc_resnet38``) the recipe of that name shipped in the package."""
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and (RECIPES / f"{p.stem}.yaml").is_file():
        return RECIPES / f"{p.stem}.yaml"
    return p


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping; ConfigError naming the file otherwise."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def load_config(cls: type, path: str | Path | list[str | Path] | None = None, sets: list[str] | None = None,
                values: dict[str, Any] | None = None) -> Any:
    """Defaults of ``cls`` (with the chosen backbone's recipe), then the YAML file(s) in order
    (paths or shipped recipes' names; e.g. a recipe, then the fragment ``affinitynet tune``
    wrote), then ``values`` (nested dict), then ``--set`` items; validated."""
    cfg = cls()
    paths = [] if not path else [path] if isinstance(path, (str, Path)) else list(path)
    layers = [read_yaml(recipe_path(p)) for p in paths]
    if values:
        layers.append(values)
    if sets:
        layers.append(parse_set(sets))
    if cls is RunConfig:
        for (section_name, key), recipes in RECIPES_BY_CHOICE.items():
            chosen = getattr(getattr(cfg, section_name), key)
            for layer in layers:
                section = layer.get(section_name)
                if isinstance(section, dict) and key in section:
                    chosen = section[key]
            if chosen in recipes:
                cfg = apply_overrides(cfg, recipes[chosen])
    for layer in layers:
        cfg = apply_overrides(cfg, layer)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
