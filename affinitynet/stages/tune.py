"""``affinitynet tune``: search the settings that matter on a new dataset, on images with ground
truth, reusing what the run already computed (CAM files, the trained AffinityNet or IRN network).

Searched, each group with its own score (``GROUPS``, by method):

- ``make_cam.bg_score``: mIoU of the CAM prediction;
- ``aff_labels.low_alpha`` / ``high_alpha`` (method psa), ``ir_labels.fg_threshold`` /
  ``bg_threshold`` (method irn): mIoU of the confident labels with unsure pixels counted as
  missed (confident pixels teach the network, wrong ones mislead it), among the settings whose
  precision is at most a point below the current one's;
- ``random_walk.alpha``, ``beta``, ``logt`` (method psa), ``irn_labels.sem_seg_bg_thres``,
  ``beta``, ``exp_times`` (method irn): mIoU of the pseudo labels. The affinities (or the
  boundary map) are computed once per image, and the walk is linear: one walk per beta carries
  every background power as a channel of its own and keeps its scores after 2^t steps for every
  t; IRN's background plane comes after the walk.

The images are split in two halves: a setting is chosen on the first ("search") when it scores
at least ``tune.margin`` mIoU more than the current one there, and kept only when it is not
worse on the second ("check") either; otherwise the current setting stays. Writes ``tune/tuned.yaml``, a config fragment
that ``run`` accepts after the run's own config (``--config RUN.yaml --config tune/tuned.yaml``),
and ``tune/tune.json`` with every score.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from affinitynet import artifacts, distributed, records
from affinitynet.algorithms.boundary import boundary_walks, semantic_label, upsample_walk
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.algorithms.crf import IRN_LABEL_KERNELS, combine_ir_labels, ir_label_parts
from affinitynet.algorithms.metrics import confusion_matrix
from affinitynet.algorithms.random_walk import propagate_cams_settings
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig, TuneConfig
from affinitynet.conventions import IGNORE_INDEX, IRN_STRIDE
from affinitynet.data.voc import open_dataset
from affinitynet.errors import InputError
from affinitynet.evaluation import names_with_gt
from affinitynet.inference import (IRNLabeler, WalkInput, confident_label_map, crf_score, load_trained,
                                   irn_walk_cams, prepare, torch_threads, walk_input)
from affinitynet.models import build_affinity_net, build_irn_net
from affinitynet.stage_table import TUNE

MIN_IMAGES = 4  # two to choose on, two to check on


@dataclass(frozen=True)
class IRNWalk:
    """What IRN's walk of one image starts from, at the working size."""

    cams: torch.Tensor  # (k, h, w) on the stride-4 grid, in [0, 1]
    boundary: torch.Tensor  # (h, w) in [0, 1]


@dataclass
class Case:
    """One image: its CAMs and ground truth at the native size, the image at both sizes, what
    the walk starts from at the working size (method psa: the CAMs and AffinityNet's affinities;
    irn: ``IRNWalk``), and the CRF outputs by setting (computed once each, when first needed)."""

    keys: np.ndarray
    maps: np.ndarray
    gt: np.ndarray
    image: WorkImage
    walk: WalkInput | IRNWalk
    crf: dict[float, np.ndarray] = field(default_factory=dict)


class Scores:
    """Confusion counts of label maps against ground truth, per setting; an unsure prediction
    (255) counts as missed for its class."""

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes + 1
        self.counts: dict[Hashable, np.ndarray] = {}

    def add(self, setting: Hashable, pred: np.ndarray, gt: np.ndarray) -> None:
        # unsure becomes an extra class k: its column counts the missed pixels, its row is empty
        conf = confusion_matrix(np.where(pred == IGNORE_INDEX, self.k, pred), gt, self.k + 1)[:self.k]
        self.counts[setting] = self.counts.get(setting, 0) + conf

    def result(self, setting: Hashable) -> dict[str, float]:
        """mIoU (unsure = missed; classes absent from prediction and ground truth left out),
        precision of the confident pixels and their coverage, in percent."""
        conf = self.counts[setting]
        tp = np.diag(conf[:, :self.k]).astype(np.float64)
        union = conf.sum(1) + conf[:, :self.k].sum(0) - tp
        confident = conf[:, :self.k].sum()
        return {"miou": float(100 * np.mean(tp[union > 0] / union[union > 0])) if (union > 0).any() else 0.0,
                "precision": float(100 * tp.sum() / max(confident, 1)),
                "coverage": float(100 * confident / max(conf.sum(), 1))}


#: a group's score of settings (tuples, one value per key) on some images: (cases, settings, the
#: run's config, number of classes) -> Scores keyed by setting
Scorer = Callable[[Sequence[Case], Sequence[tuple], RunConfig, int], Scores]


def _bg_scores(cases: Sequence[Case], settings: Sequence[tuple], cfg: RunConfig, num_classes: int) -> Scores:
    scores = Scores(num_classes)
    for case in cases:
        for (threshold,) in settings:
            scores.add((threshold,), cam_prediction(case.keys, case.maps, threshold, case.gt.shape), case.gt)
    return scores


def _crf_scores(cases: Sequence[Case], settings: Sequence[tuple], cfg: RunConfig, num_classes: int) -> Scores:
    """PSA's confident labels of every (low_alpha, high_alpha)."""
    scores = Scores(num_classes)
    for case in tqdm(cases, desc="tune: CRF", leave=False, dynamic_ncols=True):
        for alpha in sorted({a for pair in settings for a in pair} - set(case.crf)):
            case.crf[alpha] = crf_score(case.image, case.maps, alpha, cfg.aff_labels.crf_iterations)
        for low, high in settings:
            scores.add((low, high), confident_label_map(case.image, case.keys, case.crf[low], case.crf[high]), case.gt)
    return scores


def _ir_scores(cases: Sequence[Case], settings: Sequence[tuple], cfg: RunConfig, num_classes: int) -> Scores:
    """IRN's confident labels of every (fg_threshold, bg_threshold): one label CRF per threshold."""
    scores, ir = Scores(num_classes), cfg.ir_labels
    for case in tqdm(cases, desc="tune: IR labels", leave=False, dynamic_ncols=True):
        missing = sorted({t for pair in settings for t in pair} - set(case.crf))
        maps = case.image.maps(case.maps) if missing else None
        for threshold in missing:
            case.crf[threshold] = ir_label_parts(case.image.image, case.keys, maps, threshold, ir.crf_iterations,
                                                 ir.gt_prob, IRN_LABEL_KERNELS)[1]
        for fg, bg in settings:
            label = combine_ir_labels(case.crf[fg], case.crf[bg])
            scores.add((fg, bg), case.image.label_to_native(label), case.gt)
    return scores


def _axes(settings: Sequence[tuple]) -> list[list]:
    """The values of each position of the settings, sorted."""
    return [sorted({s[i] for s in settings}) for i in range(len(settings[0]))]


def _walk_scores(cases: Sequence[Case], settings: Sequence[tuple], cfg: RunConfig, num_classes: int) -> Scores:
    """PSA's pseudo labels of every (alpha, beta, logt)."""
    scores, (alphas, betas, logts) = Scores(num_classes), _axes(settings)
    for case in tqdm(cases, desc="tune: random walk", leave=False, dynamic_ncols=True):
        assert isinstance(case.walk, WalkInput)
        for beta in betas:
            with torch_threads(1):
                labels = propagate_cams_settings(case.keys, case.walk.maps, case.walk.affinity.cpu(), alphas,
                                                 beta, logts, cfg.random_walk.radius)
            for (alpha, logt), label in labels.items():
                scores.add((alpha, beta, logt), case.image.label_to_native(label), case.gt)
    return scores


def _irn_walk_scores(cases: Sequence[Case], settings: Sequence[tuple], cfg: RunConfig, num_classes: int) -> Scores:
    """IRN's semantic pseudo labels of every (sem_seg_bg_thres, beta, exp_times)."""
    scores, (thresholds, betas, exp_times) = Scores(num_classes), _axes(settings)
    for case in tqdm(cases, desc="tune: IRN walk", leave=False, dynamic_ncols=True):
        assert isinstance(case.walk, IRNWalk)
        for beta in betas:
            walks = boundary_walks(case.walk.cams, case.walk.boundary, beta, exp_times, cfg.irn_labels.radius)
            for times, walked in walks.items():
                rw_up = upsample_walk(walked, case.image.size, IRN_STRIDE)
                for threshold in thresholds:
                    label = semantic_label(rw_up, case.keys, threshold)
                    scores.add((threshold, beta, times), case.image.label_to_native(label), case.gt)
    return scores


def _with(grid: Sequence, current: Any) -> list:
    """``grid`` with the current setting in it."""
    return sorted(set(grid) | {current})


@dataclass(frozen=True)
class Group:
    """Settings searched together: their config section and keys, the values tried for each key
    (``TuneConfig``'s, with the current value added), which combinations are valid, and their
    score."""

    name: str
    section: str
    keys: tuple[str, ...]
    values: Callable[[TuneConfig], tuple[Sequence, ...]]
    score: Scorer
    valid: Callable[[tuple], bool] = lambda setting: True
    precise: bool = False  # choose only among settings at most a point less precise than the current

    @property
    def title(self) -> str:
        if len(self.keys) == 1:
            return f"{self.section}.{self.keys[0]}"
        return f"{self.section} ({', '.join(self.keys)})"

    def current(self, cfg: RunConfig) -> tuple:
        return tuple(getattr(getattr(cfg, self.section), key) for key in self.keys)

    def grid(self, cfg: RunConfig) -> list[tuple]:
        axes = [_with(values, now) for values, now in zip(self.values(cfg.tune), self.current(cfg))]
        return sorted({s for s in itertools.product(*axes) if self.valid(s)} | {self.current(cfg)})

    def as_section(self, cfg: RunConfig, setting: tuple) -> dict[str, Any]:
        """A setting as config keys, each of its config type (float or int)."""
        return {key: type(now)(value) for key, now, value in zip(self.keys, self.current(cfg), setting)}


BG_SCORE = Group("bg", "make_cam", ("bg_score",), lambda tc: (tc.bg_scores,), _bg_scores)
#: the groups tune searches, by method
GROUPS: dict[str, tuple[Group, ...]] = {
    "psa": (BG_SCORE,
            Group("crf", "aff_labels", ("low_alpha", "high_alpha"), lambda tc: (tc.low_alphas, tc.high_alphas),
                  _crf_scores, valid=lambda s: s[0] < s[1], precise=True),
            Group("walk", "random_walk", ("alpha", "beta", "logt"), lambda tc: (tc.alphas, tc.betas, tc.logts),
                  _walk_scores)),
    "irn": (BG_SCORE,
            Group("ir", "ir_labels", ("fg_threshold", "bg_threshold"),
                  lambda tc: (tc.fg_thresholds, tc.bg_thresholds), _ir_scores, valid=lambda s: s[1] < s[0],
                  precise=True),
            Group("irn_walk", "irn_labels", ("sem_seg_bg_thres", "beta", "exp_times"),
                  lambda tc: (tc.sem_seg_bg_thresholds, tc.irn_betas, tc.exp_times), _irn_walk_scores)),
}


def _show(setting: tuple) -> str:
    return ", ".join(f"{v:g}" for v in setting)


def _table(title: str, scores: Scores, settings: Sequence[tuple], current: tuple, chosen: tuple,
           show: int = 6) -> list[str]:
    """Markdown rows: the best ``show`` settings by mIoU, plus the current and the chosen one."""
    ranked = sorted(settings, key=lambda s: -scores.result(s)["miou"])
    rows = list(dict.fromkeys([*ranked[:show], current, chosen]))
    lines = [f"| {title} | mIoU | precision | coverage | |", "|---|---:|---:|---:|---|"]
    for s in rows:
        r = scores.result(s)
        mark = " / ".join(m for m, hit in (("current", s == current), ("chosen", s == chosen)) if hit)
        lines.append(f"| {_show(s)} | {r['miou']:.1f} | {r['precision']:.1f} | {r['coverage']:.1f} | {mark} |")
    return lines


def _load_cases(cfg: RunConfig, names: list[str], device: torch.device) -> list[Case]:
    wd, voc = WorkDir(cfg.workdir), open_dataset(cfg.dataset)
    start = _irn_start(cfg, device) if cfg.method == "irn" else _psa_start(cfg, device)
    cases = []
    for name in tqdm(names, desc="tune: affinities", leave=False, dynamic_ncols=True):
        image = WorkImage(voc.load_image(name), cfg.dataset.long_side)
        keys, maps, strided = artifacts.load_cam_and_strided(wd.cam_file(name), image.native_size, voc.num_classes)
        cases.append(Case(keys, maps, voc.load_gt(name), image, start(image, maps, strided)))
    return cases


def _psa_start(cfg: RunConfig, device: torch.device
               ) -> Callable[[WorkImage, np.ndarray, np.ndarray | None], WalkInput]:
    """The walk's start of an image (its CAMs at the native size, their stride-4 maps if any):
    AffinityNet's affinities."""
    net = load_trained(build_affinity_net(cfg.backbone_of(cfg.train_aff)), WorkDir(cfg.workdir).affinity.final,
                       "AffinityNet")
    affinity_net = prepare(net, device)
    return lambda image, maps, strided: walk_input(affinity_net, image, maps, cfg.random_walk.radius)


def _irn_start(cfg: RunConfig, device: torch.device
               ) -> Callable[[WorkImage, np.ndarray, np.ndarray | None], IRNWalk]:
    """IRN's walk's start of an image (its CAMs at the native size, their stride-4 maps if any):
    the stride-4 CAMs and the boundary map."""
    net = load_trained(build_irn_net(cfg.backbone_of(cfg.train_irn)), WorkDir(cfg.workdir).affinity.final,
                       "IRN's network")
    labeler = IRNLabeler(prepare(net, device), cfg.irn_labels)

    def start(image: WorkImage, maps: np.ndarray, strided: np.ndarray | None) -> IRNWalk:
        boundary, _ = labeler.boundary(image.image)
        cams = irn_walk_cams(image, maps, strided)
        return IRNWalk(labeler.grid_cams(cams, image.size), boundary)

    return start


def score_settings(cfg: RunConfig, names: list[str], settings: dict[str, dict[str, float]]) -> dict[str, float]:
    """mIoU on ``names`` of each group's settings in ``settings`` (config sections, as in
    tuned.yaml) with the run's CAMs and network: the CAM prediction, the confident labels
    (unsure = missed) and the pseudo labels; e.g. the current against the tuned settings on
    images the search never saw. Returns {group name: mIoU}."""
    _, device = distributed.setup(cfg.device)
    cases, k = _load_cases(cfg, names, device), open_dataset(cfg.dataset).num_classes
    out = {}
    for group in GROUPS[cfg.method]:
        setting = tuple(settings[group.section][key] for key in group.keys)
        out[group.name] = group.score(cases, [setting], cfg, k).result(setting)["miou"]
    return out


def run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    _, device = distributed.setup(cfg.device)
    if not distributed.current().is_main:  # one process searches; the others wait
        distributed.barrier()
        return {}
    split, names = _tuning_images(cfg)
    decision, done = _start(cfg)
    # what the outputs tune reads were made with: the "current" settings it compares against
    cfg = records.recorded_config(cfg.workdir, base=cfg, stages=TUNE.reads)
    if done is not None:
        print(f"tune: up to date; the tuned settings are in {done['fragment']}")
        return done
    groups, k = GROUPS[cfg.method], open_dataset(cfg.dataset).num_classes
    cases = _load_cases(cfg, names, device)
    search, check = cases[:len(cases) // 2], cases[len(cases) // 2:]
    current = {g.name: g.current(cfg) for g in groups}
    grids = {g.name: g.grid(cfg) for g in groups}
    on_search = {g.name: g.score(search, grids[g.name], cfg, k) for g in groups}
    candidates = {g.name: _choose_in(g, on_search[g.name], grids[g.name], current[g.name], cfg.tune.margin)
                  for g in groups}
    # the other half: the current and the chosen settings only; a choice it does not confirm is undone
    checks = {}
    for g in groups:
        on_check = g.score(check, sorted({current[g.name], candidates[g.name]}), cfg, k)
        checks[g.name] = {"current": on_check.result(current[g.name]), "chosen": on_check.result(candidates[g.name])}
        checks[g.name]["confirmed"] = checks[g.name]["chosen"]["miou"] >= checks[g.name]["current"]["miou"]
    chosen = {g.name: candidates[g.name] if checks[g.name]["confirmed"] else current[g.name] for g in groups}
    fragment = _write_fragment(cfg, groups, chosen, len(names), split)
    result = {"split": split, "images": len(names), "method": cfg.method, "chosen": fragment,
              "current": _as_sections(cfg, groups, current), "check": checks,
              "fragment": str(WorkDir(cfg.workdir).tune / "tuned.yaml"),
              "search": {g: [{"setting": list(s), **on_search[g].result(s)} for s in grids[g]] for g in grids},
              "seconds": time.time() - t0, **records.outcome(decision, "tune", len(names))}
    artifacts.write_json(WorkDir(cfg.workdir).tune / "tune.json", result)
    print("\n".join(_summary(groups, on_search, checks, grids, current, candidates, len(search), len(check), split)))
    print(f"tuned settings written to {result['fragment']} ({result['seconds']:.0f} s)")
    distributed.barrier()
    return result


def _choose(scores: dict[tuple, dict[str, float]], current: tuple, margin: float,
            eligible: Callable[[dict[str, float]], bool]) -> tuple:
    """The setting of the highest mIoU among the eligible, when it beats ``current`` by
    ``margin``; else ``current``."""
    best = max((s for s in scores if eligible(scores[s])), key=lambda s: scores[s]["miou"], default=current)
    return best if scores[best]["miou"] >= scores[current]["miou"] + margin else current


def _choose_in(group: Group, scores: Scores, grid: list[tuple], current: tuple, margin: float) -> tuple:
    """The group's best setting when it beats the current one by ``margin``; for a ``precise``
    group only among settings at most a point less precise than the current one."""
    floor = scores.result(current)["precision"] - 1.0 if group.precise else -np.inf
    return _choose({s: scores.result(s) for s in grid}, current, margin, eligible=lambda r: r["precision"] >= floor)


def _start(cfg: RunConfig) -> tuple[records.Start, dict[str, Any] | None]:
    """The comparison with tune's record; the earlier result when it was made with these
    settings from these outputs."""
    decision = records.start(cfg, "tune")
    path = WorkDir(cfg.workdir).tune / "tune.json"
    if decision.status == "continued" and path.is_file():
        return decision, json.loads(path.read_text())
    return decision, None


def _tuning_images(cfg: RunConfig) -> tuple[str, list[str]]:
    """(split, the images tune scores): the first ``tune.images`` with ground truth; an
    InputError when there are too few or their CAMs are missing."""
    wd, voc = WorkDir(cfg.workdir), open_dataset(cfg.dataset)
    split = cfg.tune.split or cfg.dataset.eval_split
    names = names_with_gt(voc, split)[:cfg.tune.images]
    if len(names) < MIN_IMAGES:
        raise InputError(f"{voc.split_path(split)}: tune needs images with ground truth (SegmentationClass/), "
                         f"split '{split}' has {len(names)} (at least {MIN_IMAGES}; set tune.split)")
    missing = [n for n in names if not wd.cam_file(n).exists()]
    if missing:
        raise InputError(f"{wd.cam_file(missing[0])}: CAMs of {len(missing)} tuning images do not exist "
                         f"(run make-cam with '{split}' among dataset.infer_splits or as dataset.eval_split)")
    return split, names


def _as_sections(cfg: RunConfig, groups: Sequence[Group], settings: dict[str, tuple]) -> dict[str, dict[str, Any]]:
    """The groups' settings as config sections (what tuned.yaml holds)."""
    sections: dict[str, dict[str, Any]] = {}
    for g in groups:
        sections.setdefault(g.section, {}).update(g.as_section(cfg, settings[g.name]))
    return sections


def _write_fragment(cfg: RunConfig, groups: Sequence[Group], chosen: dict[str, tuple], images: int,
                    split: str) -> dict[str, Any]:
    """``tune/tuned.yaml``: the chosen settings as a config fragment; returns it."""
    path = WorkDir(cfg.workdir).tune / "tuned.yaml"
    fragment = _as_sections(cfg, groups, chosen)
    header = (f"# written by `affinitynet tune` from {images} images of '{split}'; use after the run's config:\n"
              f"#   affinitynet run --config RUN.yaml --config {path}\n")
    artifacts.write_bytes(path, (header + yaml.safe_dump(fragment, sort_keys=False)).encode())
    return fragment


def _summary(groups: Sequence[Group], on_search: dict[str, Scores], checks: dict[str, dict],
             grids: dict[str, list], current: dict[str, tuple], candidates: dict[str, tuple], n_search: int,
             n_check: int, split: str) -> list[str]:
    """The printed tables: per group its best settings on the search half, then the check."""
    lines = [f"tune: {n_search} images to choose on, {n_check} to check on (split '{split}')"]
    for group in groups:
        g = group.name
        lines += ["", *_table(f"{group.title}, {n_search} search images", on_search[g], grids[g], current[g],
                              candidates[g])]
        verdict = "kept" if checks[g]["confirmed"] else "not confirmed: the current setting stays"
        lines.append(f"check on {n_check} other images: current {checks[g]['current']['miou']:.1f} -> chosen "
                     f"{checks[g]['chosen']['miou']:.1f} mIoU ({verdict})")
    return lines
