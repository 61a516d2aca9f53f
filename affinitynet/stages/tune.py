"""``affinitynet tune``: search the settings that matter on a new dataset, on images with ground
truth, reusing what the run already computed (CAM files, the trained AffinityNet).

Searched, each with its own score:

- ``make_cam.bg_score``: mIoU of the CAM prediction;
- ``aff_labels.low_alpha`` / ``high_alpha``: mIoU of the confident labels with unsure pixels
  counted as missed (confident pixels teach AffinityNet, wrong ones mislead it), among the
  pairs whose precision is at most a point below the current pair's;
- ``random_walk.alpha``, ``beta``, ``logt``: mIoU of the pseudo labels. The affinities are
  computed once per image, and the walk is linear: one walk per beta carries every background
  power alpha as a channel of its own and keeps its scores after 2^logt steps for every logt.

The images are split in two halves: a setting is chosen on the first ("search") when it scores
at least ``tune.margin`` mIoU more than the current one there, and kept only when it is not
worse on the second ("check") either; otherwise the current setting stays. Writes ``tune/tuned.yaml``, a config fragment
that ``run`` accepts after the run's own config (``--config RUN.yaml --config tune/tuned.yaml``),
and ``tune/tune.json`` with every score.
"""

from __future__ import annotations

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
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.algorithms.metrics import confusion_matrix
from affinitynet.algorithms.random_walk import propagate_cams_settings
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.voc import open_dataset
from affinitynet.errors import ConfigError, InputError
from affinitynet.evaluation import names_with_gt
from affinitynet.inference import (WalkInput, confident_label_map, crf_score, load_trained, prepare, torch_threads,
                                   walk_input)
from affinitynet.models import build_affinity_net
from affinitynet.stage_table import TUNE

MIN_IMAGES = 4  # two to choose on, two to check on


@dataclass
class Case:
    """One image: its CAMs and ground truth at the native size, the image at both sizes, the
    random walk's input (CAMs and AffinityNet affinities at the working size), and the CRF
    outputs by alpha (computed once each, when a setting first needs them)."""

    keys: np.ndarray
    maps: np.ndarray
    gt: np.ndarray
    image: WorkImage
    walk: WalkInput
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


def _choose(scores: dict[Hashable, dict[str, float]], current: Hashable, margin: float,
            eligible: Callable[[dict[str, float]], bool] = lambda s: True) -> Hashable:
    """The setting of the highest mIoU among the eligible, when it beats ``current`` by
    ``margin``; else ``current``."""
    best = max((s for s in scores if eligible(scores[s])), key=lambda s: scores[s]["miou"], default=current)
    return best if scores[best]["miou"] >= scores[current]["miou"] + margin else current


def _bg_scores(cases: Sequence[Case], thresholds: Sequence[float], num_classes: int) -> Scores:
    scores = Scores(num_classes)
    for case in cases:
        for t in thresholds:
            scores.add(t, cam_prediction(case.keys, case.maps, t, case.gt.shape), case.gt)
    return scores


def _crf_scores(cases: Sequence[Case], pairs: Sequence[tuple[float, float]], iterations: int,
                num_classes: int) -> Scores:
    scores = Scores(num_classes)
    for case in tqdm(cases, desc="tune: CRF", leave=False, dynamic_ncols=True):
        for alpha in sorted({a for pair in pairs for a in pair} - set(case.crf)):
            case.crf[alpha] = crf_score(case.image, case.maps, alpha, iterations)
        for low, high in pairs:
            scores.add((low, high), confident_label_map(case.image, case.keys, case.crf[low], case.crf[high]), case.gt)
    return scores


def _walk_scores(cases: Sequence[Case], alphas: Sequence[float], betas: Sequence[float], logts: Sequence[int],
                 radius: int, num_classes: int) -> Scores:
    """Pseudo-label scores of every (alpha, beta, logt)."""
    scores = Scores(num_classes)
    for case in tqdm(cases, desc="tune: random walk", leave=False, dynamic_ncols=True):
        for beta in betas:
            with torch_threads(1):
                labels = propagate_cams_settings(case.keys, case.walk.maps, case.walk.affinity.cpu(), list(alphas),
                                                 beta, list(logts), radius)
            for (alpha, logt), label in labels.items():
                scores.add((alpha, beta, logt), case.image.label_to_native(label), case.gt)
    return scores


def _with(grid: Sequence, current: Any) -> list:
    """``grid`` with the current setting in it."""
    return sorted(set(grid) | {current})


def _table(title: str, scores: Scores, settings: Sequence[Hashable], current: Hashable, chosen: Hashable,
           show: int = 6) -> list[str]:
    """Markdown rows: the best ``show`` settings by mIoU, plus the current and the chosen one."""
    ranked = sorted(settings, key=lambda s: -scores.result(s)["miou"])
    rows = list(dict.fromkeys([*ranked[:show], current, chosen]))
    lines = [f"| {title} | mIoU | precision | coverage | |", "|---|---:|---:|---:|---|"]
    for s in rows:
        r = scores.result(s)
        mark = " / ".join(m for m, hit in (("current", s == current), ("chosen", s == chosen)) if hit)
        lines.append(f"| {s} | {r['miou']:.1f} | {r['precision']:.1f} | {r['coverage']:.1f} | {mark} |")
    return lines


def _load_cases(cfg: RunConfig, names: list[str], device: torch.device) -> list[Case]:
    wd, voc = WorkDir(cfg.workdir), open_dataset(cfg.dataset)
    net = load_trained(build_affinity_net(cfg.backbone_of(cfg.train_aff)), wd.affinity.final, "AffinityNet")
    affinity_net = prepare(net, device)
    cases = []
    for name in tqdm(names, desc="tune: affinities", leave=False, dynamic_ncols=True):
        image = WorkImage(voc.load_image(name), cfg.dataset.long_side)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.native_size, voc.num_classes)
        cases.append(Case(keys, maps, voc.load_gt(name), image,
                          walk_input(affinity_net, image, maps, cfg.random_walk.radius)))
    return cases


def score_settings(cfg: RunConfig, names: list[str], settings: dict[str, dict[str, float]]) -> dict[str, float]:
    """mIoU on ``names`` of the CAM prediction, the confident labels (unsure = missed) and the
    pseudo labels under ``settings`` (sections make_cam, aff_labels, random_walk, as in
    tuned.yaml), with the run's CAMs and AffinityNet: e.g. the current against the tuned
    settings on images the search never saw."""
    _, device = distributed.setup(cfg.device)
    cases, k = _load_cases(cfg, names, device), open_dataset(cfg.dataset).num_classes
    bg = settings["make_cam"]["bg_score"]
    crf = (settings["aff_labels"]["low_alpha"], settings["aff_labels"]["high_alpha"])
    walk = tuple(settings["random_walk"][key] for key in ("alpha", "beta", "logt"))
    return {"bg": _bg_scores(cases, [bg], k).result(bg)["miou"],
            "crf": _crf_scores(cases, [crf], cfg.aff_labels.crf_iterations, k).result(crf)["miou"],
            "walk": _walk_scores(cases, [walk[0]], [walk[1]], [int(walk[2])], cfg.random_walk.radius,
                                 k).result((walk[0], walk[1], int(walk[2])))["miou"]}


TITLES = {"bg": "make_cam.bg_score", "crf": "aff_labels (low_alpha, high_alpha)",
          "walk": "random_walk (alpha, beta, logt)"}


def run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    if cfg.method != "psa":
        raise ConfigError(f"tune searches PSA's settings (CRF alphas, walk alpha / beta / logt); "
                          f"with method {cfg.method} it has nothing to search yet")
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
    cases = _load_cases(cfg, names, device)
    search, check = cases[:len(cases) // 2], cases[len(cases) // 2:]
    current, grids = _current_and_grids(cfg)
    searcher = _Searcher(cfg, open_dataset(cfg.dataset).num_classes)
    on_search = searcher.scores(search, grids)
    candidates = searcher.choose(on_search, current, grids)
    # the other half: the current and the chosen settings only; a choice it does not confirm is undone
    on_check = searcher.scores(check, {g: sorted({current[g], candidates[g]}) for g in grids})
    checks = {g: {"current": on_check[g].result(current[g]), "chosen": on_check[g].result(candidates[g])}
              for g in grids}
    for g in grids:
        checks[g]["confirmed"] = checks[g]["chosen"]["miou"] >= checks[g]["current"]["miou"]
    chosen = {g: candidates[g] if checks[g]["confirmed"] else current[g] for g in grids}
    fragment = _write_fragment(cfg, chosen, len(names), split)
    result = {"split": split, "images": len(names), "chosen": fragment, "current": _as_sections(current),
              "check": checks, "fragment": str(WorkDir(cfg.workdir).tune / "tuned.yaml"),
              "search": {g: [{"setting": list(s) if isinstance(s, tuple) else s, **on_search[g].result(s)}
                             for s in grids[g]] for g in grids},
              "seconds": time.time() - t0, **records.outcome(decision, "tune", len(names))}
    artifacts.write_json(WorkDir(cfg.workdir).tune / "tune.json", result)
    print("\n".join(_summary(on_search, checks, grids, current, candidates, len(search), len(check), split)))
    print(f"tuned settings written to {result['fragment']} ({result['seconds']:.0f} s)")
    distributed.barrier()
    return result


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


def _current_and_grids(cfg: RunConfig) -> tuple[dict[str, Any], dict[str, list]]:
    """The run's settings of each group and the settings searched (the current one among them)."""
    tc, ac, rc = cfg.tune, cfg.aff_labels, cfg.random_walk
    current = {"bg": cfg.make_cam.bg_score, "crf": (ac.low_alpha, ac.high_alpha), "walk": (rc.alpha, rc.beta, rc.logt)}
    grids = {"bg": _with(tc.bg_scores, current["bg"]),
             "crf": _with([(lo, hi) for lo in tc.low_alphas for hi in tc.high_alphas if lo < hi], current["crf"]),
             "walk": [(a, b, t) for a in _with(tc.alphas, rc.alpha) for b in _with(tc.betas, rc.beta)
                      for t in _with(tc.logts, rc.logt)]}
    return current, grids


@dataclass(frozen=True)
class _Searcher:
    """Scores every group's settings on a set of images, and chooses among them."""

    cfg: RunConfig
    num_classes: int

    def scores(self, part: Sequence[Case], settings: dict[str, list]) -> dict[str, Scores]:
        k, rc = self.num_classes, self.cfg.random_walk
        return {"bg": _bg_scores(part, settings["bg"], k),
                "crf": _crf_scores(part, settings["crf"], self.cfg.aff_labels.crf_iterations, k),
                "walk": _walk_scores(part, sorted({a for a, _, _ in settings["walk"]}),
                                     sorted({b for _, b, _ in settings["walk"]}),
                                     sorted({t for _, _, t in settings["walk"]}), rc.radius, k)}

    def choose(self, on_search: dict[str, Scores], current: dict[str, Any], grids: dict[str, list]) -> dict[str, Any]:
        """Each group's best setting when it beats the current one by ``tune.margin``; the CRF
        alphas only among pairs at most a point less precise than the current pair."""
        margin = self.cfg.tune.margin
        floor = on_search["crf"].result(current["crf"])["precision"] - 1.0
        return {"bg": _choose({s: on_search["bg"].result(s) for s in grids["bg"]}, current["bg"], margin),
                "crf": _choose({s: on_search["crf"].result(s) for s in grids["crf"]}, current["crf"], margin,
                               eligible=lambda r: r["precision"] >= floor),
                "walk": _choose({s: on_search["walk"].result(s) for s in grids["walk"]}, current["walk"], margin)}


def _as_sections(settings: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The groups' settings as config sections (what tuned.yaml holds)."""
    return {"make_cam": {"bg_score": float(settings["bg"])},
            "aff_labels": {"low_alpha": float(settings["crf"][0]), "high_alpha": float(settings["crf"][1])},
            "random_walk": {"alpha": float(settings["walk"][0]), "beta": float(settings["walk"][1]),
                            "logt": int(settings["walk"][2])}}


def _write_fragment(cfg: RunConfig, chosen: dict[str, Any], images: int, split: str) -> dict[str, Any]:
    """``tune/tuned.yaml``: the chosen settings as a config fragment; returns it."""
    path = WorkDir(cfg.workdir).tune / "tuned.yaml"
    fragment = _as_sections(chosen)
    header = (f"# written by `affinitynet tune` from {images} images of '{split}'; use after the run's config:\n"
              f"#   affinitynet run --config RUN.yaml --config {path}\n")
    artifacts.write_bytes(path, (header + yaml.safe_dump(fragment, sort_keys=False)).encode())
    return fragment


def _summary(on_search: dict[str, Scores], checks: dict[str, dict], grids: dict[str, list], current: dict[str, Any],
             candidates: dict[str, Any], n_search: int, n_check: int, split: str) -> list[str]:
    """The printed tables: per group its best settings on the search half, then the check."""
    lines = [f"tune: {n_search} images to choose on, {n_check} to check on (split '{split}')"]
    for g in grids:
        lines += ["", *_table(f"{TITLES[g]}, {n_search} search images", on_search[g], grids[g], current[g],
                              candidates[g])]
        verdict = "kept" if checks[g]["confirmed"] else "not confirmed: the current setting stays"
        lines.append(f"check on {n_check} other images: current {checks[g]['current']['miou']:.1f} -> chosen "
                     f"{checks[g]['chosen']['miou']:.1f} mIoU ({verdict})")
    return lines
