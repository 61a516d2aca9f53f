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

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from affinitynet import artifacts, distributed
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.algorithms.metrics import confusion_matrix
from affinitynet.algorithms.crf import confident_labels, crf_with_background
from affinitynet.algorithms.random_walk import propagate_cams_settings
from affinitynet.algorithms.resize import resize_label, resize_maps
from affinitynet.artifacts import WorkDir
from affinitynet.common import (backbone_of, image_affinity, inference_net, load_trained, open_dataset, torch_threads,
                                working_image)
from affinitynet.config import RunConfig
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.errors import InputError
from affinitynet.evaluation import names_with_gt
from affinitynet.models import build_affinity_net

MIN_IMAGES = 4  # two to choose on, two to check on


@dataclass
class Case:
    """One image: CAMs and ground truth at the native size, the image, CAMs and AffinityNet
    affinities at the working size (dataset.long_side), and the CRF outputs by alpha."""

    keys: np.ndarray
    maps: np.ndarray
    gt: np.ndarray
    work_image: np.ndarray
    work_maps: np.ndarray
    aff: torch.Tensor
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
            case.crf[alpha] = crf_with_background(case.work_image, case.work_maps, alpha, iterations)
        for low, high in pairs:
            label = confident_labels(case.crf[low], case.crf[high], keys=case.keys)
            scores.add((low, high), resize_label(label, case.gt.shape), case.gt)
    return scores


def _walk_scores(cases: Sequence[Case], alphas: Sequence[float], betas: Sequence[float], logts: Sequence[int],
                 radius: int, num_classes: int) -> Scores:
    """Pseudo-label scores of every (alpha, beta, logt)."""
    scores = Scores(num_classes)
    for case in tqdm(cases, desc="tune: random walk", leave=False, dynamic_ncols=True):
        for beta in betas:
            with torch_threads(1):
                labels = propagate_cams_settings(case.keys, case.work_maps, case.aff, list(alphas), beta, list(logts),
                                                 radius)
            for (alpha, logt), label in labels.items():
                scores.add((alpha, beta, logt), resize_label(label, case.gt.shape), case.gt)
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
    wd, voc, radius = WorkDir(cfg.workdir), open_dataset(cfg), cfg.random_walk.radius
    net = load_trained(build_affinity_net(backbone_of(cfg, cfg.train_aff)), wd.affinity.final, "AffinityNet")
    inference_net(net, device, channels_last=False)
    cases = []
    for name in tqdm(names, desc="tune: affinities", leave=False, dynamic_ncols=True):
        image = voc.load_image(name)
        keys, maps = artifacts.load_cam(wd.cam_file(name), image.shape[:2], voc.num_classes)
        work = working_image(image, cfg.dataset.long_side)
        aff = image_affinity(net, work, radius, device).cpu()
        cases.append(Case(keys, maps, voc.load_gt(name), work, resize_maps(maps, work.shape[:2]), aff))
    return cases


def score_settings(cfg: RunConfig, names: list[str], settings: dict[str, dict[str, float]]) -> dict[str, float]:
    """mIoU on ``names`` of the CAM prediction, the confident labels (unsure = missed) and the
    pseudo labels under ``settings`` (sections make_cam, aff_labels, random_walk, as in
    tuned.yaml), with the run's CAMs and AffinityNet: e.g. the current against the tuned
    settings on images the search never saw."""
    _, device = distributed.setup(cfg.device)
    cases, k = _load_cases(cfg, names, device), open_dataset(cfg).num_classes
    bg = settings["make_cam"]["bg_score"]
    crf = (settings["aff_labels"]["low_alpha"], settings["aff_labels"]["high_alpha"])
    walk = tuple(settings["random_walk"][key] for key in ("alpha", "beta", "logt"))
    return {"bg": _bg_scores(cases, [bg], k).result(bg)["miou"],
            "crf": _crf_scores(cases, [crf], cfg.aff_labels.crf_iterations, k).result(crf)["miou"],
            "walk": _walk_scores(cases, [walk[0]], [walk[1]], [int(walk[2])], cfg.random_walk.radius,
                                 k).result((walk[0], walk[1], int(walk[2])))["miou"]}


def run(cfg: RunConfig) -> dict[str, Any]:
    t0 = time.time()
    tc = cfg.tune
    _, device = distributed.setup(cfg.device)
    if not distributed.current().is_main:  # one process searches; the others wait
        distributed.barrier()
        return {}
    wd, voc = WorkDir(cfg.workdir), open_dataset(cfg)
    split = tc.split or cfg.dataset.eval_split
    names = names_with_gt(voc, split)[:tc.images]
    if len(names) < MIN_IMAGES:
        raise InputError(f"{voc.split_path(split)}: tune needs images with ground truth (SegmentationClass/), "
                         f"split '{split}' has {len(names)} (at least {MIN_IMAGES}; set tune.split)")
    missing = [n for n in names if not wd.cam_file(n).exists()]
    if missing:
        raise InputError(f"{wd.cam_file(missing[0])}: CAMs of {len(missing)} tuning images do not exist "
                         f"(run make-cam with '{split}' among dataset.infer_splits or as dataset.eval_split)")
    cases = _load_cases(cfg, names, device)
    search, check = cases[:len(cases) // 2], cases[len(cases) // 2:]
    k = voc.num_classes
    ac, rc = cfg.aff_labels, cfg.random_walk
    current = {"bg": cfg.make_cam.bg_score, "crf": (ac.low_alpha, ac.high_alpha), "walk": (rc.alpha, rc.beta, rc.logt)}
    grids = {"bg": _with(tc.bg_scores, current["bg"]),
             "crf": _with([(lo, hi) for lo in tc.low_alphas for hi in tc.high_alphas if lo < hi], current["crf"]),
             "walk": [(a, b, t) for a in _with(tc.alphas, rc.alpha) for b in _with(tc.betas, rc.beta)
                      for t in _with(tc.logts, rc.logt)]}

    def searched(part: Sequence[Case], settings: dict[str, list]) -> dict[str, Scores]:
        return {"bg": _bg_scores(part, settings["bg"], k),
                "crf": _crf_scores(part, settings["crf"], ac.crf_iterations, k),
                "walk": _walk_scores(part, sorted({a for a, _, _ in settings["walk"]}),
                                     sorted({b for _, b, _ in settings["walk"]}),
                                     sorted({t for _, _, t in settings["walk"]}), rc.radius, k)}

    on_search = searched(search, grids)
    floor = on_search["crf"].result(current["crf"])["precision"] - 1.0
    chosen = {
        "bg": _choose({s: on_search["bg"].result(s) for s in grids["bg"]}, current["bg"], tc.margin),
        "crf": _choose({s: on_search["crf"].result(s) for s in grids["crf"]}, current["crf"], tc.margin,
                       eligible=lambda r: r["precision"] >= floor),
        "walk": _choose({s: on_search["walk"].result(s) for s in grids["walk"]}, current["walk"], tc.margin),
    }
    # the other half: the current and the chosen settings only; a choice it does not confirm is undone
    on_check = searched(check, {g: sorted({current[g], chosen[g]}) for g in grids})
    checks = {g: {"current": on_check[g].result(current[g]), "chosen": on_check[g].result(chosen[g])}
              for g in grids}
    candidates = dict(chosen)
    for g in grids:
        checks[g]["confirmed"] = checks[g]["chosen"]["miou"] >= checks[g]["current"]["miou"]
        if not checks[g]["confirmed"]:
            chosen[g] = current[g]

    titles = {"bg": "make_cam.bg_score", "crf": "aff_labels (low_alpha, high_alpha)",
              "walk": "random_walk (alpha, beta, logt)"}
    lines = [f"tune: {len(search)} images to choose on, {len(check)} to check on (split '{split}')"]
    for g in grids:
        lines += ["", *_table(f"{titles[g]}, {len(search)} search images", on_search[g], grids[g], current[g],
                              candidates[g])]
        verdict = "kept" if checks[g]["confirmed"] else "not confirmed: the current setting stays"
        lines.append(f"check on {len(check)} other images: current {checks[g]['current']['miou']:.1f} -> chosen "
                     f"{checks[g]['chosen']['miou']:.1f} mIoU ({verdict})")
    fragment = {"make_cam": {"bg_score": float(chosen["bg"])},
                "aff_labels": {"low_alpha": float(chosen["crf"][0]), "high_alpha": float(chosen["crf"][1])},
                "random_walk": {"alpha": float(chosen["walk"][0]), "beta": float(chosen["walk"][1]),
                                "logt": int(chosen["walk"][2])}}
    header = (f"# written by `affinitynet tune` from {len(names)} images of '{split}'; use after the run's config:\n"
              f"#   affinitynet run --config RUN.yaml --config {wd.tune / 'tuned.yaml'}\n")
    artifacts.write_bytes(wd.tune / "tuned.yaml", (header + yaml.safe_dump(fragment, sort_keys=False)).encode())
    result = {"split": split, "images": len(names), "chosen": fragment,
              "current": {"make_cam": {"bg_score": current["bg"]},
                          "aff_labels": dict(zip(("low_alpha", "high_alpha"), current["crf"])),
                          "random_walk": dict(zip(("alpha", "beta", "logt"), current["walk"]))},
              "check": checks, "fragment": str(wd.tune / "tuned.yaml"),
              "search": {g: [{"setting": list(s) if isinstance(s, tuple) else s, **on_search[g].result(s)}
                             for s in grids[g]] for g in grids},
              "seconds": time.time() - t0}
    artifacts.write_json(wd.tune / "tune.json", result)
    print("\n".join(lines))
    print(f"tuned settings written to {wd.tune / 'tuned.yaml'} ({result['seconds']:.0f} s)")
    distributed.barrier()
    return result
