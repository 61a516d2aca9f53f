"""Pictures of CAMs and labels, for looking at what each stage did.

``overview()`` draws, for one image: the photo, its CAMs (one heat map per present class), the
CAM prediction, the confident labels of the CRF stage, the random-walk pseudo label and the
ground truth, whichever exist. Pure drawing: the caller passes arrays and a file path.
"""

from __future__ import annotations

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
