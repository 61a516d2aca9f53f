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
    trains: bool  # a training stage (its output is an ``artifacts.TrainingFolder``)
    folder: str  # its main output: the ``artifacts.WorkDir`` attribute (a training folder or a label folder)
    evaluates: bool = False  # its result holds scores on the evaluation split (metrics.json)
    command: str = ""  # the CLI command, when not the name with hyphens
    label: str = ""  # what its label maps are called in pictures, when not its title
    # what its record (``records.py``) holds and compares:
    reads: tuple[str, ...] = ()  # the stages whose outputs it reads
    outputs: tuple[str, ...] = ()  # every output folder (WorkDir attributes); default: ``folder``
    derived: tuple[str, ...] = ()  # settings of its section that change only ``derived_outputs``
    derived_outputs: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()  # settings of its section that change no output (e.g. which split)

    @property
    def section(self) -> str:
        """Its config section."""
        return self.name

    @property
    def folders(self) -> tuple[str, ...]:
        return self.outputs or (self.folder,)

    @property
    def cli(self) -> str:
        return self.command or self.name.replace("_", "-")

    @property
    def label_title(self) -> str:
        return self.label or self.title


STAGE_TABLE: tuple[StageInfo, ...] = (
    StageInfo("train_cam", "classifier", "stage 1: train the multi-label classifier", True, "classifier"),
    StageInfo("make_cam", "CAM", "stage 2a: multi-scale CAMs (+ CAM prediction and evaluation)", False, "cam_pred",
              evaluates=True, label="CAM prediction", reads=("train_cam",), outputs=("cam", "cam_pred"),
              derived=("bg_score", "save_pred"), derived_outputs=("cam_pred",), ignored=("sweep",)),
    StageInfo("aff_labels", "confident labels (CRF)", "stage 2b: dense-CRF confident labels for AffinityNet", False,
              "aff_labels", evaluates=True, command="make-aff-labels", label="confident (CRF)", reads=("make_cam",),
              outputs=("crf", "aff_labels")),
    StageInfo("train_aff", "AffinityNet", "stage 3: train AffinityNet", True, "affinity",
              reads=("train_cam", "aff_labels")),
    StageInfo("random_walk", "random walk", "stage 4: random walk -> pseudo labels (+ evaluation)", False,
              "pseudo_labels", evaluates=True, reads=("make_cam", "train_aff"),
              outputs=("pseudo_labels", "boundary", "instances")),  # the last two: method irn
    StageInfo("train_seg", "segmentation net", "stage 5a: train the segmentation network on the pseudo labels", True,
              "segmentation", reads=("train_cam", "random_walk")),
    StageInfo("segment", "segmentation net", "stage 5b: segment a split with it (+ evaluation)", False, "seg_pred",
              evaluates=True, reads=("train_seg",), ignored=("split",)),
)

STAGE_BY_NAME: dict[str, StageInfo] = {s.name: s for s in STAGE_TABLE}

#: the stages a method other than PSA's does its own way, and the config section each then reads
#: (``RunConfig.method``); the stage keeps its name, folders and place, so everything that reads
#: a work folder works for both methods
METHOD_SECTIONS: dict[str, dict[str, str]] = {
    "psa": {},
    "irn": {"aff_labels": "ir_labels", "train_aff": "train_irn", "random_walk": "irn_labels"},
}


#: titles that differ under a method (pictures and the report)
METHOD_TITLES: dict[str, dict[str, str]] = {
    "psa": {},
    "irn": {"aff_labels": "confident IR labels (IRN's CRF)", "train_aff": "IRN's network"},
}


def section_of(stage: str, method: str) -> str:
    """The config section stage ``stage`` reads under ``method``."""
    return METHOD_SECTIONS[method].get(stage, stage)


def title_of(stage: str, method: str) -> str:
    """How pictures and the report call stage ``stage`` under ``method``."""
    return METHOD_TITLES[method].get(stage, STAGE_BY_NAME[stage].title)

#: ``affinitynet tune``: not a pipeline stage, but its outputs have a record too
TUNE = StageInfo("tune", "tune", "search bg score, CRF alphas and walk settings on images with ground truth", False,
                 "tune", reads=("make_cam", "aff_labels", "train_aff", "random_walk"))
RECORDED_BY_NAME: dict[str, StageInfo] = {**STAGE_BY_NAME, "tune": TUNE}

#: what a stage's result holds beyond its scores (kept out of metrics.json)
NOT_METRICS = ("confusion", "class_names", "images", "seconds", "history", "final", "steps", "status")
