"""Pictures of CAMs and labels, for looking at what each stage did.

``overview()`` draws, for one image: the photo, its CAMs (one heat map per present class), the
CAM prediction, the confident labels of the CRF stage, the random-walk pseudo label and the
ground truth, whichever exist. The report's charts (class IoU bars, the CAM threshold sweep,
training curves), each in a light or a dark ``Theme``, and CAM heat-map overlays. Pure drawing:
the caller passes arrays and a file path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from affinitynet.artifacts import atomic_path
from affinitynet.data.palette import colorize


def overview(path: str | Path, image: np.ndarray, keys: np.ndarray | None = None,
             maps: np.ndarray | None = None, labels: dict[str, np.ndarray] | None = None,
             class_names: list[str] | None = None) -> Path:
    """Save one figure: image, CAM heat maps (keys (k,), maps (k, H, W) in [0, 1]) and label
    maps (title -> (H, W) uint8). Returns the path written (PNG)."""
    labels = {k: v for k, v in (labels or {}).items() if v is not None}
    cams = [] if keys is None or maps is None else list(zip(keys, maps))
    panels = 1 + len(cams) + len(labels)
    # a Figure of its own (no pyplot): no global backend or figure registry, works without a display
    fig = Figure(figsize=(2.6 * panels, 2.8))
    axes = fig.subplots(1, panels, squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=9)
    for ax, (key, cam) in zip(axes[1:], cams):
        ax.imshow(image)
        ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        name = class_names[key] if class_names and key < len(class_names) else str(key)
        ax.set_title(f"CAM {name}", fontsize=9)
    for ax, (title, label) in zip(axes[1 + len(cams):], labels.items()):
        ax.imshow(colorize(label))
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:  # never a half-drawn picture
        fig.savefig(tmp, dpi=80, format="png")
    return path


# ----------------------------------------------------------------------------------------------
# the report's charts and pictures (affinitynet.report): one PNG per chart and colour scheme
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Theme:
    """Colours of a chart, so the report can show it on a light or a dark page."""

    background: str
    text: str
    grid: str
    series: tuple[str, ...]  # one colour per line / bar group, readable on ``background``


THEMES: dict[str, Theme] = {
    "light": Theme("#ffffff", "#1f2328", "#d0d7de", ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")),
    "dark": Theme("#161b22", "#e6edf3", "#3d444d", ("#58a6ff", "#f0883e", "#3fb950", "#ff7b72", "#d2a8ff")),
}


def class_iou_chart(path: str | Path, classes: list[str], series: dict[str, list[float | None]],
                    theme: Theme = THEMES["light"]) -> Path:
    """Grouped bars: IoU (percent, 0-100) per class for each series (title -> one value per
    class; None or NaN = not measured, no bar). Returns the PNG written."""
    n = len(classes)
    fig = Figure(figsize=(min(13.0, max(6.0, 2.5 + 0.45 * n)), 3.4))  # VOC's 21 classes: 12 in
    ax = fig.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(n)
    for i, (title, values) in enumerate(series.items()):
        heights = np.asarray(values, dtype=float)  # None -> NaN: no bar
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=title,
               color=theme.series[i % len(theme.series)])
    ax.set_xticks(x, classes, rotation=35 if n > 8 else 0, ha="right" if n > 8 else "center")
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    ax.grid(axis="y")
    ax.set_axisbelow(True)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28 if n > 8 else -0.12), ncols=len(series),
              frameon=False)
    return _save_chart(fig, path, theme)


def sweep_chart(path: str | Path, thresholds: list[float], miou: list[float | None], used: float | None = None,
                theme: Theme = THEMES["light"]) -> Path:
    """mIoU (percent) of the CAM prediction against its background threshold, the threshold the
    run used (``used``) dashed and the best one marked. Returns the PNG written."""
    fig = Figure(figsize=(6.0, 3.2))
    ax = fig.subplots()
    t = np.asarray(thresholds, dtype=float)
    m = np.asarray(miou, dtype=float)  # None -> NaN
    ax.plot(t, m, marker="o", markersize=3, color=theme.series[0], label="CAM mIoU")
    if np.isfinite(m).any():
        best = int(np.nanargmax(m))
        ax.plot([t[best]], [m[best]], marker="*", markersize=12, linestyle="none", color=theme.series[1],
                label=f"best: {t[best]:.2f} ({m[best]:.1f})")
    if used is not None:
        ax.axvline(used, linestyle="--", color=theme.series[2], label=f"used: {used:.2f}")
    ax.set_xlabel("background threshold (make_cam.bg_score)")
    ax.set_ylabel("mIoU (%)")
    ax.grid()
    ax.legend(fontsize=8)
    return _save_chart(fig, path, theme)


def training_chart(path: str | Path, title: str, steps: dict[str, np.ndarray], epochs: dict[str, np.ndarray],
                   theme: Theme = THEMES["light"]) -> Path:
    """Loss and learning rate of one training stage against the step: ``steps`` has arrays
    "step", "loss", "lr" (one entry per step), ``epochs`` has "step", "train_loss" and
    "val_loss" (one entry per epoch, NaN where not measured). Returns the PNG written."""
    fig = Figure(figsize=(10.0, 3.0))
    loss_ax, lr_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    colors = theme.series
    if len(steps.get("step", ())):
        loss_ax.plot(steps["step"], steps["loss"], linewidth=0.8, alpha=0.45, color=colors[0], label="loss per step")
        lr_ax.plot(steps["step"], steps["lr"], color=colors[2])
    if len(epochs.get("step", ())):
        loss_ax.plot(epochs["step"], epochs["train_loss"], marker="o", markersize=3, color=colors[0],
                     label="train loss (epoch mean)")
        if np.isfinite(epochs["val_loss"]).any():
            loss_ax.plot(epochs["step"], epochs["val_loss"], marker="s", markersize=3, color=colors[1],
                         label="val loss (epoch)")
    loss_ax.set_title(f"{title}: loss", fontsize=10)
    loss_ax.set_xlabel("step")
    loss_ax.grid()
    loss_ax.legend(fontsize=8)
    lr_ax.set_title("learning rate", fontsize=10)
    lr_ax.set_xlabel("step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.grid()
    return _save_chart(fig, path, theme)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image with one (H, W) CAM in [0, 1] blended over it as a jet heat map."""
    from matplotlib import colormaps

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return np.round((1 - alpha) * image.astype(np.float32) + alpha * heat).astype(np.uint8)


def boundary_picture(boundary: np.ndarray, working_hw: tuple[int, int], image_hw: tuple[int, int]) -> np.ndarray:
    """IRN's boundary map (h, w) in [0, 1] on the stride-4 grid of the image at its working size
    ``working_hw`` -> (H, W, 3) uint8 at the image size ``image_hw``: boundaries white on black."""
    from PIL import Image

    cells = np.repeat(np.repeat(np.asarray(boundary, np.float32), 4, axis=0), 4, axis=1)
    cells = cells[:working_hw[0], :working_hw[1]]
    gray = Image.fromarray(np.round(np.clip(cells, 0, 1) * 255).astype(np.uint8))
    gray = np.asarray(gray.resize((image_hw[1], image_hw[0]), Image.BILINEAR))
    return np.repeat(gray[..., None], 3, axis=2)


def instance_ids(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Instance masks (N, H, W) -> (H, W) uint8 map of instance numbers as VOC's
    SegmentationObject numbers them (0 none, 1.. by descending score, at most 254), a
    higher-scoring instance drawn over a lower one; shown in the VOC palette like
    SegmentationObject."""
    masks = np.asarray(masks, dtype=bool)
    ids = np.zeros(masks.shape[1:], np.uint8)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")[:254]
    for number, index in reversed(list(enumerate(order, start=1))):  # the best last: on top
        ids[masks[index]] = number
    return ids


def _save_chart(fig: Figure, path: str | Path, theme: Theme) -> Path:
    """Colour every axes of ``fig`` with ``theme`` and save it as PNG, atomically."""
    fig.set_facecolor(theme.background)
    for ax in fig.axes:
        ax.set_facecolor(theme.background)
        for spine in ax.spines.values():
            spine.set_color(theme.grid)
        ax.tick_params(colors=theme.text, which="both")
        ax.xaxis.label.set_color(theme.text)
        ax.yaxis.label.set_color(theme.text)
        ax.yaxis.get_offset_text().set_color(theme.text)
        ax.title.set_color(theme.text)
        for line in ax.get_xgridlines() + ax.get_ygridlines():
            line.set_color(theme.grid)
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(theme.background)
            legend.get_frame().set_edgecolor(theme.grid)
            for text in legend.get_texts():
                text.set_color(theme.text)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", facecolor=theme.background)
    return path
