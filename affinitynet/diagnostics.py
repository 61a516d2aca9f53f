"""Signs that the pseudo labels will be bad, readable without ground truth.

Three measurements on (a sample of) the images a run labels, each with a warning when it looks
like a failure, the likely cause and the setting to try:

- **CAM coverage**: the share of an image whose CAM prediction is foreground (its maximum CAM
  above ``make_cam.bg_score``), per image and per class. CAMs of a working classifier cover
  the discriminative parts of the objects; covering most of the image means they do not
  localise (often: training and inference see objects at different scales).
- **Confident regions**: the shares of confident background, confident objects and unsure
  pixels of make-aff-labels. Without confident background AffinityNet learns no object
  boundary.
- **The random walk's growth**: a class's pseudo-label share against its CAM prediction's. A
  walk that grows a class over most of an image floods it (weak boundaries, too weak a
  background).

Where the evaluation split has ground truth, the CAM warning also names the best background
threshold of the sweep and its gain. Percentages throughout.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affinitynet import artifacts
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.images import load_label_png
from affinitynet.data.voc import VOCDataset

SAMPLE = 500  # images measured at most (evenly spread over the list)
MOSTLY = 80.0  # % of an image: "most of the image"
CAM_COVERAGE_HIGH = 50.0  # mean CAM coverage (%) above which CAMs do not localise
MOSTLY_COVERED_IMAGES = 25.0  # % of images covered mostly by their CAM
BACKGROUND_LOW = 10.0  # mean confident background (%) below which it is "nearly absent"
NO_BACKGROUND = 2.0  # % of an image: an image without confident background
NO_BACKGROUND_IMAGES = 25.0  # % of images without confident background
FLOODED_IMAGES = 20.0  # % of images the walk floods


def sample_names(names: Sequence[str], count: int = SAMPLE) -> list[str]:
    """At most ``count`` of ``names``, evenly spread (deterministic)."""
    names = list(names)
    if len(names) <= count:
        return names
    return [names[i] for i in np.linspace(0, len(names) - 1, count).round().astype(int)]


def _summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "p10": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {"mean": float(v.mean()), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90))}


def cam_coverage(cam_file: Callable[[str], Path], voc: VOCDataset, names: Sequence[str],
                 bg_score: float) -> dict[str, Any]:
    """CAM coverage (% of the image above ``bg_score``) per image and per class."""
    per_image: dict[str, float] = {}
    per_class: dict[str, list[float]] = {c: [] for c in voc.classes}
    for name in sample_names(names):
        keys, maps = artifacts.load_cam(cam_file(name))
        if len(keys) == 0:
            per_image[name] = 0.0
            continue
        per_image[name] = 100.0 * float((maps.max(0) > bg_score).mean())
        for k, m in zip(keys, maps):
            per_class[voc.classes[k]].append(100.0 * float((m > bg_score).mean()))
    values = list(per_image.values())
    return {"coverage": _summary(values),
            "images_mostly_covered": 100.0 * float(np.mean([v > MOSTLY for v in values])) if values else 0.0,
            "coverage_per_class": {c: float(np.mean(v)) if v else None for c, v in per_class.items()},
            "per_image": per_image}


def confident_regions(label_dir: Path, names: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Shares (%) of confident background, confident objects (per class) and unsure pixels."""
    background, objects, unsure = [], [], []
    per_class: dict[str, list[float]] = {c: [] for c in classes}
    per_image: dict[str, float] = {}
    for name in sample_names(names):
        label = load_label_png(label_dir / f"{name}.png")
        bg = 100.0 * float((label == 0).mean())
        background.append(bg)
        per_image[name] = bg
        unsure.append(100.0 * float((label == IGNORE_INDEX).mean()))
        fg = (label != 0) & (label != IGNORE_INDEX)
        objects.append(100.0 * float(fg.mean()))
        for value in np.unique(label[fg]):
            per_class[classes[int(value) - 1]].append(100.0 * float((label == value).mean()))
    return {"background": _summary(background), "objects": _summary(objects), "unsure": _summary(unsure),
            "images_without_background": 100.0 * float(np.mean([b < NO_BACKGROUND for b in background]))
            if background else 0.0,
            "objects_per_class": {c: float(np.mean(v)) if v else None for c, v in per_class.items()},
            "background_per_image": per_image}


def walk_growth(pseudo_dir: Path, cam_pred_dir: Path, names: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """How the random walk changed each class's share of its images (%), against the CAM
    prediction; an image is flooded when one class covers most of it after the walk but not
    before."""
    before_all, after_all, flooded = [], [], []
    growth: dict[str, list[float]] = {c: [] for c in classes}
    for name in sample_names(names):
        after = load_label_png(pseudo_dir / f"{name}.png")
        before_path = cam_pred_dir / f"{name}.png"
        before = load_label_png(before_path) if before_path.exists() else None
        after_fg = 100.0 * float(((after != 0) & (after != IGNORE_INDEX)).mean())
        after_all.append(after_fg)
        flood = False
        for value in np.unique(after[(after != 0) & (after != IGNORE_INDEX)]):
            share_after = 100.0 * float((after == value).mean())
            share_before = 100.0 * float((before == value).mean()) if before is not None else float("nan")
            growth[classes[int(value) - 1]].append(share_after - share_before)
            flood |= share_after > MOSTLY and not share_before > MOSTLY / 2
        if before is not None:
            before_all.append(100.0 * float(((before != 0) & (before != IGNORE_INDEX)).mean()))
        flooded.append(flood)
    return {"coverage_before": _summary(before_all), "coverage_after": _summary(after_all),
            "images_flooded": 100.0 * float(np.mean(flooded)) if flooded else 0.0,
            "growth_per_class": {c: float(np.nanmean(v)) if v and not np.all(np.isnan(v)) else None
                                 for c, v in growth.items()}}


# -- warnings ------------------------------------------------------------------------------------
# Each warning names its likely causes and a setting to try. They are written here, together, so
# that one refers to another only when that one fires (the predicates below decide both).
THRESHOLD_GAP = 3.0  # mIoU the best CAM background threshold gains over the one used: worth tuning


def cams_do_not_localise(cam_diag: dict[str, Any] | None) -> bool:
    """The CAM coverage warning fires."""
    if not cam_diag:
        return False
    return cam_diag["coverage"]["mean"] > CAM_COVERAGE_HIGH or cam_diag["images_mostly_covered"] > MOSTLY_COVERED_IMAGES


def background_nearly_absent(confident_diag: dict[str, Any] | None) -> bool:
    """The confident-background warning fires."""
    if not confident_diag:
        return False
    return (confident_diag["background"]["mean"] < BACKGROUND_LOW
            or confident_diag["images_without_background"] > NO_BACKGROUND_IMAGES)


def sweep_summary(scores: dict[str, Any]) -> dict[str, Any] | None:
    """The background-threshold sweep's best threshold and the mIoU at it and at the one used,
    from make-cam's scores (None without a sweep)."""
    if scores.get("best_threshold") is None:
        return None
    return {"best_threshold": scores["best_threshold"], "best_miou": scores["best_miou"],
            "miou_at_bg_score": scores.get("miou", scores["best_miou"])}


def threshold_gap(sweep: dict[str, Any] | None) -> float:
    """mIoU the sweep's best background threshold gains over the one used (0 without a sweep)."""
    return sweep["best_miou"] - sweep["miou_at_bg_score"] if sweep else 0.0


def cam_warnings(diag: dict[str, Any], scale_hint: str, sweep: dict[str, Any] | None, bg_score: float) -> list[str]:
    """The scale warning (images far from the size the classifier was trained at), the
    background-threshold warning (the best threshold of the sweep gains THRESHOLD_GAP mIoU or
    more) and the CAM coverage warning, with their likely causes and the settings to try."""
    warnings = [f"{scale_hint} (inference now sees objects at another scale than training did)"] if scale_hint else []
    gap = threshold_gap(sweep)
    if gap >= THRESHOLD_GAP:
        warnings.append(f"the best CAM background threshold on the evaluation split is {sweep['best_threshold']:.2f} "
                        f"({sweep['best_miou']:.1f} mIoU) against the {bg_score:.2f} used "
                        f"({sweep['miou_at_bg_score']:.1f}): run `affinitynet tune` (it chooses the threshold, the "
                        f"CRF alphas and the walk's settings on half of the images and checks them on the other "
                        f"half), or set make_cam.bg_score={sweep['best_threshold']:.2f}")
    if not cams_do_not_localise(diag):
        return warnings
    causes = [scale_hint] if scale_hint else []
    if gap >= THRESHOLD_GAP:
        causes.append("too low a background score (see the background-threshold warning)")
    elif not sweep:
        causes.append("too low a background score: try make_cam.bg_score=0.4, or run `affinitynet tune` on a split "
                      "with ground truth")
    causes = causes or ["a classifier that has not learnt the classes yet: train it longer (train_cam.epochs)"]
    mean, mostly = diag["coverage"]["mean"], diag["images_mostly_covered"]
    return warnings + [f"CAMs cover most of the image (mean coverage {mean:.0f} %, {mostly:.0f} % of images over "
                       f"{MOSTLY:.0f} %): they do not localise the objects. Likely cause: " + "; or ".join(causes)]


def confident_warnings(diag: dict[str, Any], cam_diag: dict[str, Any] | None = None) -> list[str]:
    """The confident-background warning; it names the CAM coverage as a cause only when the
    CAM coverage warning fires (``cam_diag``: make-cam's diagnostics)."""
    if not background_nearly_absent(diag):
        return []
    mean, none = diag["background"]["mean"], diag["images_without_background"]
    causes = ["too weak a background for the CRF: try a lower aff_labels.high_alpha (e.g. 16)"]
    if cams_do_not_localise(cam_diag):
        causes.insert(0, "CAMs that cover the image (see the CAM coverage warning)")
    return [f"confident background is nearly absent ({mean:.1f} % of the pixels; {none:.0f} % of images have "
            f"less than {NO_BACKGROUND:.0f} %): AffinityNet will learn few object boundaries. Likely cause: "
            + "; or ".join(causes)]


def walk_warnings(diag: dict[str, Any], confident_diag: dict[str, Any] | None = None,
                  method: str = "psa") -> list[str]:
    """The flooding warning; it names the confident background as a cause only when the
    confident-background warning fires (``confident_diag``: make-aff-labels' diagnostics), and
    the settings of ``method``'s walk."""
    flooded = diag["images_flooded"]
    if flooded <= FLOODED_IMAGES:
        return []
    if method == "irn":
        causes = ["too weak a background or too long a walk for the image size: try a larger "
                  "irn_labels.sem_seg_bg_thres (e.g. 0.4) or a smaller irn_labels.exp_times (e.g. 6)"]
    else:
        causes = ["too weak a background or too long a walk for the image size: try a larger random_walk.alpha "
                  "(e.g. 24) or a smaller random_walk.logt (e.g. 6), or run `affinitynet tune`"]
    if background_nearly_absent(confident_diag):
        causes.append("affinities trained without confident background (see the confident-background warning)")
    return [f"the random walk grows a class over most of the image in {flooded:.0f} % of images: the affinities do "
            "not stop it at the object boundaries. Likely cause: " + "; or ".join(causes)]


def scale_hint(long_side: int, profile: dict[str, Any], resize_long: tuple[int, int] | None) -> str:
    """The scale mismatch, when images are used at their native size but are far from the long
    sides the classifier was trained at (none when it trained on the images' own sizes)."""
    median = profile["long_side"]["median"]
    if resize_long is None:
        return ""
    lo, hi = resize_long
    if long_side or not median or lo * 0.8 <= median <= hi * 1.25:
        return ""
    return (f"the classifier trained on long sides of {lo}-{hi} px but the images are {median} px (median) and "
            f"used at their native size: set dataset.long_side={(lo + hi) // 2}")
