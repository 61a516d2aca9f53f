"""The pipeline's stages, as data: what every reader of a work folder needs to know about them.

One row per stage, in pipeline order. A stage has one name everywhere: its config section, its
key in ``metrics.json`` and in ``metrics["seconds"]``, and (with hyphens) its command; its title
is how pictures and the report call it. The command line and ``pipeline.run`` add the module
that runs it (``pipeline.STAGES``); the report, ``vis/`` pictures and the demo's table read the
titles, the label folders and the training folders from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    """One step of the pipeline."""

    name: str  # config section, metrics key: e.g. "random_walk"
    title: str  # in pictures, tables and the report: e.g. "random walk"
    help: str  # one line for ``affinitynet --help``
    trains: bool  # a training stage (``run(cfg, resume)``, a ``artifacts.TrainingFolder``)
    folder: str  # its output: the ``artifacts.WorkDir`` attribute (a training folder or a label folder)
    evaluates: bool = False  # its result holds scores on the evaluation split (metrics.json)
    command: str = ""  # the CLI command, when not the name with hyphens
    label: str = ""  # what its label maps are called in pictures, when not its title

    @property
    def cli(self) -> str:
        return self.command or self.name.replace("_", "-")

    @property
    def label_title(self) -> str:
        return self.label or self.title


STAGE_TABLE: tuple[StageInfo, ...] = (
    StageInfo("train_cam", "classifier", "stage 1: train the multi-label classifier", True, "classifier"),
    StageInfo("make_cam", "CAM", "stage 2a: multi-scale CAMs (+ CAM prediction and evaluation)", False, "cam_pred",
              evaluates=True, label="CAM prediction"),
    StageInfo("aff_labels", "confident labels (CRF)", "stage 2b: dense-CRF confident labels for AffinityNet", False,
              "aff_labels", evaluates=True, command="make-aff-labels", label="confident (CRF)"),
    StageInfo("train_aff", "AffinityNet", "stage 3: train AffinityNet", True, "affinity"),
    StageInfo("random_walk", "random walk", "stage 4: random walk -> pseudo labels (+ evaluation)", False,
              "pseudo_labels", evaluates=True),
    StageInfo("train_seg", "segmentation net", "stage 5a: train the segmentation network on the pseudo labels", True,
              "segmentation"),
    StageInfo("segment", "segmentation net", "stage 5b: segment a split with it (+ evaluation)", False, "seg_pred",
              evaluates=True),
)

STAGE_BY_NAME: dict[str, StageInfo] = {s.name: s for s in STAGE_TABLE}

#: what a stage's result holds beyond its scores (kept out of metrics.json)
NOT_METRICS = ("confusion", "class_names", "images", "seconds", "history", "final", "steps")
