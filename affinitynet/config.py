"""Typed configuration of every stage, with the paper's defaults in one place.

Every default below is the value of Ahn & Kwak (CVPR 2018) / the original PSA release unless a
comment says otherwise. YAML files and ``--set key=value`` only override these; the final config
of a run is written into its work folder (``config.yaml``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from affinitynet.errors import ConfigError


# --------------------------------------------------------------------------------------------
# Data-layer stages
# --------------------------------------------------------------------------------------------
@dataclass
class SynthConfig:
    """``affinitynet synth``: write the built-in synthetic dataset in VOC layout."""

    out: str = "work/synthetic"
    train: int = 240
    val: int = 60
    seed: int = 0


@dataclass
class PrepareVOCConfig:
    """``affinitynet prepare-voc``: split lists and image labels from VOC 2012 (+ SBD)."""

    voc_root: str = ""
    sbd_root: str = ""
    out: str = ""  # default: the VOC root itself
    convert_sbd: bool = False  # also write SBD .mat masks as palette PNGs


@dataclass
class EvaluateConfig:
    """``affinitynet evaluate``: mIoU of a folder of palette PNG predictions."""

    pred: str = ""
    dataset: str = ""
    split: str = "val"
    out: str = ""  # JSON path; default <pred>/../eval_<pred-folder>_<split>.json


@dataclass
class ConvertWeightsConfig:
    """``affinitynet convert-weights IN OUT.pth``."""

    input: str = ""
    output: str = ""


# --------------------------------------------------------------------------------------------
# Pipeline stages (all share the dataset and work folder of a run)
# --------------------------------------------------------------------------------------------
@dataclass
class DatasetConfig:
    root: str = ""  # a folder in VOC layout
    labels: str = ""  # optional JSON/CSV image -> class names (else Annotations/*.xml)
    train_split: str = "train_aug"  # paper: CAM and AffinityNet trained on VOC train_aug
    eval_split: str = "train"  # paper reports pseudo-label mIoU on VOC train
    val_split: str = "val"  # validation loss of the training stages (skipped when absent)
    infer_splits: list[str] = field(default_factory=lambda: ["train_aug"])  # images that get CAMs / labels


@dataclass
class TrainCamConfig:
    """Stage 1: the multi-label classifier (paper Sec. 3.1; PSA train_cls.py)."""

    backbone: str = "resnet38"
    weights: str = ""  # ImageNet weights: .params (ResNet-38), .caffemodel (VGG-16), .pth
    batch_size: int = 16
    epochs: int = 15
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = -1.0  # <0: the original's quirk (weight decay passed as momentum -> 5e-4)
    crop: int = 448
    resize_long: tuple[int, int] = (256, 512)
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    num_workers: int = 2  # persistent across epochs
    amp: bool = True  # bf16 autocast, on CUDA only
    channels_last: bool = True  # NHWC network and input, on CUDA only
    compile: bool = False
    seed: int = 0


@dataclass
class MakeCamConfig:
    """Stage 2a: multi-scale + flip CAMs (PSA infer_cls.py)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    bg_score: float = 0.2  # background score of the CAM prediction (PSA: 0.2)
    save_pred: bool = True
    sweep: bool = True  # background-threshold sweep on the eval split
    num_workers: int = 2
    amp: bool = False  # bf16 autocast, on CUDA only (CAMs then differ by ~1e-2 relative)
    channels_last: bool = True  # NHWC network and input (faster on CUDA and CPU)


@dataclass
class AffLabelsConfig:
    """Stage 2b: dense-CRF confident regions (paper Sec. 3.2)."""

    low_alpha: float = 4.0
    high_alpha: float = 32.0
    crf_iterations: int = 10
    processes: int = 0  # 0 = all cores


@dataclass
class TrainAffConfig:
    """Stage 3: AffinityNet (paper Sec. 3.3; PSA train_aff.py)."""

    backbone: str = ""  # default: the classifier's backbone
    weights: str = ""  # default: the trained classifier (ImageNet weights in the paper)
    init_from_classifier: bool = True
    batch_size: int = 8
    epochs: int = 8
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = -1.0
    crop: int = 448
    resize_long: tuple[int, int] = (448, 768)
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    radius: int = 5
    num_workers: int = 2  # persistent across epochs
    amp: bool = True  # bf16 autocast, on CUDA only
    channels_last: bool = True  # NHWC network and input, on CUDA only
    compile: bool = False
    seed: int = 0


@dataclass
class RandomWalkConfig:
    """Stage 4: random walk with the learned affinities (paper Sec. 3.4, Eq. 7-9)."""

    alpha: float = 16.0
    beta: float = 8.0
    logt: int = 8  # t = 2^logt = 256
    radius: int = 5
    method: str = "sparse"  # or "dense" (the original's, for checking)
    channels_last: bool = True  # NHWC AffinityNet and input (faster on CUDA and CPU)


@dataclass
class TrainSegConfig:
    """Stage 5a: the segmentation network on the pseudo labels (paper Sec. 5 trains DeepLab on
    them; the optimiser settings here are DeepLab's usual ones, which the paper does not list)."""

    backbone: str = ""  # default: the classifier's backbone
    weights: str = ""  # ImageNet weights; default: the trained classifier's backbone
    init_from_classifier: bool = True
    labels: str = ""  # label folder; default: the random walk's pseudo_labels/
    batch_size: int = 8
    epochs: int = 12
    lr: float = 0.01  # x10 for the new head (poly schedule, as the other stages)
    weight_decay: float = 5e-4
    momentum: float = 0.9
    crop: int = 448
    resize_long: tuple[int, int] = (320, 640)
    color_jitter: tuple[float, float, float, float] = (0.3, 0.3, 0.3, 0.1)
    num_workers: int = 2  # persistent across epochs
    amp: bool = True  # bf16 autocast, on CUDA only
    channels_last: bool = True  # NHWC network and input, on CUDA only
    compile: bool = False
    seed: int = 0


@dataclass
class SegmentConfig:
    """Stage 5b: segment a split with the trained network and evaluate it."""

    split: str = ""  # default: dataset.val_split
    scales: tuple[float, ...] = (1.0,)
    flip: bool = True
    crf: bool = False  # dense-CRF post-processing of the probabilities (10 iterations)
    num_workers: int = 2
    channels_last: bool = True  # NHWC network and input (faster on CUDA and CPU)


@dataclass
class RunConfig:
    """``affinitynet run``: the whole pipeline."""

    workdir: str = "work/run"
    device: str = "auto"  # auto = cuda when available
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train_cam: TrainCamConfig = field(default_factory=TrainCamConfig)
    make_cam: MakeCamConfig = field(default_factory=MakeCamConfig)
    aff_labels: AffLabelsConfig = field(default_factory=AffLabelsConfig)
    train_aff: TrainAffConfig = field(default_factory=TrainAffConfig)
    random_walk: RandomWalkConfig = field(default_factory=RandomWalkConfig)
    train_seg: TrainSegConfig = field(default_factory=TrainSegConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)


# --------------------------------------------------------------------------------------------
# Validation, YAML, --set overrides
# --------------------------------------------------------------------------------------------
# names of affinitynet.models.BACKBONES (kept here so that validation needs no torch import)
BACKBONE_NAMES: tuple[str, ...] = ("resnet38", "vgg16", "resnet50", "tiny")

# key suffix -> (low, high) inclusive bounds, checked on every config after overrides
RANGES: dict[str, tuple[float, float]] = {
    "beta": (1e-6, 1e3),
    "alpha": (0.0, 1e3),
    "low_alpha": (0.0, 1e3),
    "high_alpha": (0.0, 1e3),
    "logt": (0, 20),
    "radius": (2, 32),  # radius 1 has no pairs (offsets need dx^2 + dy^2 < radius^2)
    "batch_size": (1, 1 << 16),
    "epochs": (0, 1 << 16),
    "lr": (0.0, 100.0),
    "weight_decay": (0.0, 1.0),
    "crop": (8, 1 << 14),
    "crf_iterations": (1, 1000),
    "processes": (0, 1024),
    "num_workers": (0, 256),
    "bg_score": (0.0, 1.0),
    "train": (0, 1 << 24),
    "val": (0, 1 << 24),
}


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
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
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


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def apply_overrides(cfg: Any, data: dict[str, Any], prefix: str = "") -> Any:
    """Set the fields of dataclass ``cfg`` from nested ``data``; unknown keys are errors."""
    hints = _hints(type(cfg))
    names = {f.name for f in dataclasses.fields(cfg)}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}': expected a mapping, got {value!r}")
            apply_overrides(current, value, prefix=f"{full}.")
        else:
            setattr(cfg, key, _coerce(value, hints[key], full))
    return cfg


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


def validate(cfg: Any, prefix: str = "") -> None:
    """Range checks by field name (see RANGES) and a few cross-field rules; raises ConfigError."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        full = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{full}.")
            continue
        if f.name in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            lo, hi = RANGES[f.name]
            if not lo <= value <= hi:
                raise ConfigError(f"config key '{full}' = {value} is out of range [{lo}, {hi}]")
    if isinstance(cfg, (TrainCamConfig, TrainAffConfig, TrainSegConfig)):
        lo, hi = cfg.resize_long
        if not 8 <= lo <= hi:
            raise ConfigError(f"config key '{prefix}resize_long' = {cfg.resize_long}: need 8 <= low <= high")
    with_backbone = (TrainCamConfig, TrainAffConfig, TrainSegConfig)
    if isinstance(cfg, with_backbone) and cfg.backbone not in (*BACKBONE_NAMES, ""):
        raise ConfigError(f"config key '{prefix}backbone' = {cfg.backbone!r}: choose one of "
                          f"{', '.join(BACKBONE_NAMES)}")
    if isinstance(cfg, TrainCamConfig) and not cfg.backbone:
        raise ConfigError(f"config key '{prefix}backbone' is empty: choose one of {', '.join(BACKBONE_NAMES)}")
    if isinstance(cfg, TrainAffConfig) and cfg.crop < 8 * (2 * cfg.radius - 1):
        # the crop's stride-8 grid must hold one pair of every offset (width 2*radius-1 cells)
        raise ConfigError(f"config key '{prefix}crop' = {cfg.crop} is too small for radius {cfg.radius}: "
                          f"need at least {8 * (2 * cfg.radius - 1)}")
    if isinstance(cfg, (MakeCamConfig, SegmentConfig)) and (not cfg.scales or min(cfg.scales) <= 0):
        raise ConfigError(f"config key '{prefix}scales' = {cfg.scales}: need positive scales")
    if isinstance(cfg, RandomWalkConfig) and cfg.method not in ("sparse", "dense"):
        raise ConfigError(f"config key '{prefix}method' = {cfg.method!r}: expected 'sparse' or 'dense'")


# Classifier recipes that differ from the paper's ResNet-38/VGG-16 one, by backbone: ResNet-50
# follows IRN (Ahn et al., CVPR 2019, train_cam.py): 5 epochs, weight decay 1e-4, crop 512,
# long side 320-640. They replace the defaults above; YAML and --set still override them.
BACKBONE_RECIPES: dict[str, dict[str, Any]] = {
    "resnet50": {"train_cam": {"epochs": 5, "weight_decay": 1e-4, "crop": 512, "resize_long": [320, 640]}},
}


def load_config(cls: type, path: str | Path | None = None, sets: list[str] | None = None) -> Any:
    """Defaults of ``cls`` (with the chosen backbone's recipe), then the YAML file, then ``--set``
    items; validated."""
    cfg = cls()
    layers: list[dict[str, Any]] = []
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        layers.append(data)
    if sets:
        layers.append(parse_set(sets))
    if cls is RunConfig:
        backbone = cfg.train_cam.backbone
        for layer in layers:
            section = layer.get("train_cam")
            if isinstance(section, dict) and "backbone" in section:
                backbone = section["backbone"]
        if backbone in BACKBONE_RECIPES:
            apply_overrides(cfg, BACKBONE_RECIPES[backbone])
    for layer in layers:
        apply_overrides(cfg, layer)
    validate(cfg)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
