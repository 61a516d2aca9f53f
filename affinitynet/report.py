"""``affinitynet report WORKDIR``: one static HTML page of what a run produced.

``write_report(workdir)`` writes ``<workdir>/report/index.html`` with, whichever exist: the
warnings of the run, the scores of every evaluating stage (``metrics.json``) as a table and a
per-class IoU chart, the training curves (``log.jsonl`` of each training stage), the CAM
background-threshold sweep, a gallery of images with their CAMs and every label map in the
dataset's palette (with method irn also the class-boundary maps and the instance pseudo labels
beside the ground-truth instances), the stage times and the config. Everything it shows lies beside it in
``report/`` (PNG files, relative links, no script, no network), so it opens offline and can be
copied as a folder. Each chart exists twice, for a light and a dark page
(``prefers-color-scheme``).

A partial work folder (a run still going, or one that stopped) gives a partial page: what is
missing is left out with a short note.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from affinitynet import artifacts, config as C, records, visualize
from affinitynet.algorithms.metrics import confusion_matrix, mean_iou
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import ReportFolder, WorkDir
from affinitynet.conventions import IGNORE_INDEX
from affinitynet.data.images import load_label_png, save_label_png
from affinitynet.data.palette import VOC_COLORMAP
from affinitynet.data.voc import VOCDataset, open_dataset
from affinitynet.diagnostics import THRESHOLD_GAP, sweep_summary, threshold_gap
from affinitynet.errors import AffinityNetError, InputError
from affinitynet.evaluation import instance_summary
from affinitynet.stage_table import STAGE_BY_NAME, STAGE_TABLE, title_of
from affinitynet.visualize import Theme

GALLERY_IMAGES = 24  # default number of gallery images
THUMB_HEIGHT = 116  # px: the gallery's pictures on the page (each links to its full-size PNG); 7 in a row
THUMB_MAX_WIDTH = 360  # px: a very wide image gets a lower thumbnail instead of a wider one

# the evaluating stages' keys in metrics.json, in pipeline order, and their titles
EVALUATIONS = {s.name: s.title for s in STAGE_TABLE if s.evaluates}


@dataclass
class _Report:
    """What the page is built from, and the files written for it so far."""

    wd: WorkDir
    folder: ReportFolder
    metrics: dict[str, Any] | None = None
    cfg: C.RunConfig | None = None
    voc: VOCDataset | None = None
    made_in: Path | None = None  # the work folder where the run was made (config.yaml), if elsewhere now
    notes: list[str] = field(default_factory=list)  # why a part of the page is missing
    written: set[Path] = field(default_factory=set)

    def url(self, path: Path) -> str:
        """``path`` (inside the report folder) as an escaped relative URL for an attribute."""
        return esc(quote(path.relative_to(self.folder.root).as_posix()))


def esc(value: Any) -> str:
    """Any value as HTML text (quotes escaped too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def write_report(workdir: str | Path, images: int = GALLERY_IMAGES, seed: int = 0) -> Path:
    """Write ``<workdir>/report/index.html`` and its PNGs; returns the page's path.

    ``images``: gallery size (the best, the worst and random images of the evaluation split by
    random-walk IoU when there is ground truth, else random ones; the same for the same
    ``seed``). Works on any part of a work folder; only a missing folder is an error."""
    wd = WorkDir(workdir)
    if not wd.root.is_dir():
        raise InputError(f"{wd.root}: work folder does not exist")
    r = _Report(wd, wd.report)
    before = set(r.folder.root.rglob("*.png"))  # the pictures of an earlier report, if any
    r.metrics = _read_metrics(r)
    r.cfg = _read_config(r)
    r.voc = _dataset(r)
    body = [_header(r), _warnings(r), _scores(r), _training(r), _sweep(r), _gallery(r, images, seed), _run_facts(r)]
    artifacts.write_bytes(r.folder.index, _page(wd, body).encode())
    r.written.add(r.folder.index)
    # remove the earlier report's pictures that this one does not show (last: the old page keeps
    # working until the new one replaces it)
    for stale in before - r.written:
        stale.unlink(missing_ok=True)
    return r.folder.index


# -- inputs ------------------------------------------------------------------------------------
def _read_metrics(r: _Report) -> dict[str, Any] | None:
    path = r.wd.metrics
    if not path.is_file():
        r.notes.append(f"No {path.name} yet (each stage writes its scores there when it finishes): no scores.")
        return None
    try:
        metrics = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        r.notes.append(f"{path} is not readable JSON ({exc}): no scores.")
        return None
    if not isinstance(metrics, dict):
        r.notes.append(f"{path} does not hold a JSON object: no scores.")
        return None
    return metrics


def _read_config(r: _Report) -> C.RunConfig | None:
    """The settings the folder's outputs were made with (their records over config.yaml)."""
    path = r.wd.config
    if not path.is_file() and not records.recorded_stages(r.wd.root):
        r.notes.append(f"No {path.name} and no records: the dataset is unknown, so there is no gallery.")
        return None
    try:
        if path.is_file():
            r.made_in = Path(C.load_config(C.RunConfig, path).workdir)
        return records.recorded_config(r.wd.root)
    except AffinityNetError as exc:
        r.notes.append(f"{path} could not be read as a config ({exc}): no gallery.")
        return None


def _dataset(r: _Report) -> VOCDataset | None:
    """The run's dataset. A work folder copied elsewhere with its dataset inside it (as the
    demo's ``<workdir>/data``) finds the copy of its dataset, not the original."""
    if r.cfg is None:
        return None
    root = Path(r.cfg.dataset.root)
    settings = r.cfg.dataset
    try:
        inside = root.relative_to(r.made_in or r.wd.root)
        if (r.wd.root / inside).is_dir():
            settings = dataclasses.replace(settings, root=str(r.wd.root / inside))
            r.cfg = dataclasses.replace(r.cfg, dataset=settings)
    except ValueError:
        pass  # the dataset lies outside the work folder
    try:
        return open_dataset(settings)
    except AffinityNetError as exc:
        r.notes.append(f"The dataset could not be opened ({exc}): no gallery.")
        return None


def _stage(r: _Report, key: str) -> dict[str, Any]:
    value = (r.metrics or {}).get(key)
    return value if isinstance(value, dict) else {}


# -- parts of the page -------------------------------------------------------------------------
def _header(r: _Report) -> str:
    facts = [f"work folder <code>{esc(r.wd.root.resolve())}</code>"]
    if r.cfg is not None:
        facts.append(f"dataset <code>{esc(r.cfg.dataset.root)}</code>")
        facts.append(f"method <b>{esc(r.cfg.method)}</b>")
    if r.voc is not None:
        facts.append(f"{r.voc.num_classes} classes ({esc(', '.join(r.voc.classes))})")
    profile = (r.metrics or {}).get("dataset")
    if isinstance(profile, dict) and isinstance(profile.get("long_side"), dict):
        side = profile["long_side"]
        working = profile.get("working_long_side")
        facts.append(f"{esc(profile.get('images', '?'))} images, long side {esc(side.get('min'))}–"
                     f"{esc(side.get('max'))} px (median {esc(side.get('median'))})"
                     + (f", worked on at {esc(working)} px" if working else ", worked on at native size"))
    if r.metrics is not None and r.metrics.get("eval_split"):
        facts.append(f"evaluated on <b>{esc(r.metrics['eval_split'])}</b>")
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in r.notes)
    return (f'<header><h1>AffinityNet run report</h1><p class="facts">{" · ".join(facts)}</p>{notes}</header>')


def run_warnings(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(stage key, warning) of every stage in a run's metrics."""
    return [(key, str(w)) for key, m in metrics.items() if isinstance(m, dict) for w in (m.get("warnings") or [])]


def _warnings(r: _Report) -> str:
    if r.metrics is None:
        return ""
    items = run_warnings(r.metrics)
    if not items:
        return '<section id="warnings"><p class="ok">No warnings: the diagnostics found nothing suspicious.</p></section>'
    lis = "".join(f"<li><b>{esc(EVALUATIONS.get(key, key))}</b>: {esc(w)}</li>" for key, w in items)
    return (f'<section id="warnings" class="warnings" role="alert"><h2>⚠ {len(items)} warning'
            f'{"s" if len(items) > 1 else ""} of this run</h2><ul>{lis}</ul>'
            '<p class="note">Details under “diagnostics” below and in metrics.json.</p></section>')


def _scores(r: _Report) -> str:
    if r.metrics is None:
        return ""
    present = {k: _stage(r, k) for k in EVALUATIONS if _stage(r, k)}
    if not present:
        return '<section id="scores"><h2>Scores</h2><p class="note">No stage has been evaluated yet.</p></section>'
    rows = []
    for key, m in present.items():
        extra = []
        if key == "make_cam" and m.get("best_threshold") is not None:
            extra.append(f"best background threshold {_num(m['best_threshold'], 2)} "
                         f"(mIoU {_num(m.get('best_miou'))})")
            if threshold_gap(sweep_summary(m)) >= THRESHOLD_GAP:
                extra.append("run `affinitynet tune` (see the warnings)")
        if key == "aff_labels":
            extra.append(f"precision {_num(m.get('confident_precision'))} % at coverage "
                         f"{_num(m.get('confident_coverage'))} % of the labelled pixels")
            if m.get("cam_precision_on_confident") is not None:
                extra.append(f"the CAM prediction is right on {_num(m['cam_precision_on_confident'])} % of them")
        if key == "random_walk" and isinstance(m.get("instances"), dict):
            extra.append(instance_summary(m["instances"]))
        if key == "segment" and m.get("split"):
            extra.append(f"on the {esc(m['split'])} split")
        rows.append(f"<tr><th>{esc(EVALUATIONS[key])}</th><td>{_num(m.get('miou'))}</td>"
                    f"<td>{_num(m.get('pixel_accuracy'))}</td><td>{esc(m.get('num_images', '–'))}</td>"
                    f"<td class=\"text\">{esc('; '.join(extra))}</td></tr>")
    parts = ['<section id="scores"><h2>Scores</h2>',
             '<div class="wrap"><table><thead><tr><th>stage</th><th>mIoU %</th><th>pixel acc. %</th>'
             f'<th>images</th><th class="text">notes</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>']
    per_class = {k: m for k, m in present.items() if isinstance(m.get("per_class"), dict)}
    if per_class:
        classes = list(next(iter(per_class.values()))["per_class"])
        series = {_column_title(r, k): [m["per_class"].get(c) for c in classes] for k, m in per_class.items()}
        chart = _chart(r, "class-iou", "IoU per class of each stage",
                       lambda p, t: visualize.class_iou_chart(p, classes, series, t))
        parts.append(f'<div class="row">{_class_table(r, per_class, classes)}{chart}</div>')  # side by side when wide
    parts.append(_diagnostics(present))
    parts.append("</section>")
    return "".join(parts)


def _column_title(r: _Report, key: str) -> str:
    m = _stage(r, key)
    split = (r.metrics or {}).get("eval_split")
    if key == "segment" and m.get("split") and m.get("split") != split:
        return f"{EVALUATIONS[key]} ({m['split']})"
    return EVALUATIONS[key]


def _class_table(r: _Report, per_class: dict[str, dict[str, Any]], classes: list[str]) -> str:
    """Classes as rows, stages as columns, the best stage of each row in bold."""
    head = "".join(f"<th>{esc(_column_title(r, k))}</th>" for k in per_class)
    body = []
    for c in [*classes, None]:
        values = [(m.get("miou") if c is None else m["per_class"].get(c)) for m in per_class.values()]
        finite = [v for v in values if isinstance(v, (int, float))]
        best = max(finite) if finite else None
        cells = "".join(f"<td>{'<b>' + _num(v) + '</b>' if v is not None and v == best else _num(v)}</td>"
                        for v in values)
        title = "<b>mIoU</b>" if c is None else esc(c)
        body.append(f'<tr{" class=total" if c is None else ""}><th>{title}</th>{cells}</tr>')
    return (f'<div class="wrap"><table class="classes"><thead><tr><th>class (IoU %)</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _diagnostics(present: dict[str, dict[str, Any]]) -> str:
    """Every stage's scalar diagnostics (per-image lists left out) in a closed <details>."""
    blocks = []
    for key, m in present.items():
        flat = list(_flatten(m.get("diagnostics") or {}))
        if flat:
            rows = "".join(f"<tr><th>{esc(k)}</th><td>{_num(v)}</td></tr>" for k, v in flat)
            blocks.append(f"<h4>{esc(EVALUATIONS[key])}</h4><table class=\"diag\">{rows}</table>")
    if not blocks:
        return ""
    return f'<details><summary>Diagnostics (signs of bad labels without ground truth)</summary>{"".join(blocks)}</details>'


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            if len(v) <= 30:  # per-image dictionaries are too long to read
                yield from _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) or v is None:
            yield f"{prefix}{k}", v


def _training(r: _Report) -> str:
    parts = ['<section id="training"><h2>Training</h2>']
    for stage in (s for s in STAGE_TABLE if s.trains):
        attr, title = stage.folder, f"{title_of(stage.name, r.cfg.method if r.cfg else 'psa')} ({stage.cli})"
        folder: artifacts.TrainingFolder = r.wd.training(stage.name)
        records = artifacts.read_jsonl(folder.log)
        if not records:
            parts.append(f'<h3>{esc(title)}</h3><p class="note">No training log yet '
                         f'(<code>{esc(folder.log.relative_to(r.wd.root))}</code>).</p>')
            continue
        steps = {int(x["step"]): x for x in records if x.get("kind") == "step" and "step" in x}  # a resumed
        epochs = {int(x["epoch"]): x for x in records if x.get("kind") == "epoch" and "epoch" in x}  # run's last wins
        step_arrays = {k: np.array([_float(steps[s].get(k)) for s in sorted(steps)]) for k in ("loss", "lr")}
        step_arrays["step"] = np.array(sorted(steps), dtype=float)
        ep = [epochs[e] for e in sorted(epochs)]
        epoch_arrays = {k: np.array([_float(x.get(k)) for x in ep]) for k in ("step", "train_loss", "val_loss")}
        state = "finished" if folder.final.exists() else "not finished (no final.pth yet)"
        summary = [f"{len(ep)} epochs, {len(steps)} steps, {state}"]
        if ep:
            last = ep[-1]
            summary.append(f"last train loss {_num(last.get('train_loss'), 4)}")
            if last.get("val_loss") is not None:
                summary.append(f"val loss {_num(last.get('val_loss'), 4)}")
            summary.append(f"{_num(sum(_float(x.get('seconds')) for x in ep), 0)} s of epochs")
        parts.append(f'<h3>{esc(title)}</h3><p>{esc("; ".join(summary))}</p>')
        parts.append(_chart(r, f"training-{attr}", f"loss and learning rate of the {title}",
                            lambda p, t, title=title, sa=step_arrays, ea=epoch_arrays:
                            visualize.training_chart(p, title, sa, ea, t)))
    parts.append("</section>")
    return "".join(parts)


def _sweep(r: _Report) -> str:
    cam = _stage(r, "make_cam")
    sweep = cam.get("sweep")
    if not isinstance(sweep, dict) or not sweep.get("thresholds"):
        return ""
    used = r.cfg.make_cam.bg_score if r.cfg is not None else None
    text = (f"mIoU of the CAM prediction for each background threshold; the run used {_num(used, 2)}, "
            f"the best is {_num(cam.get('best_threshold'), 2)} (mIoU {_num(cam.get('best_miou'))}).")
    chart = _chart(r, "cam-sweep", "CAM mIoU against the background threshold",
                   lambda p, t: visualize.sweep_chart(p, sweep["thresholds"], sweep.get("miou", []), used, t))
    return f'<section id="sweep"><h2>CAM background threshold</h2><p>{esc(text)}</p>{chart}</section>'


def _run_facts(r: _Report) -> str:
    parts = ['<section id="run"><h2>Stage times and config</h2>']
    seconds = (r.metrics or {}).get("seconds")
    if isinstance(seconds, dict) and seconds:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{_duration(v)}</td></tr>" for k, v in seconds.items())
        total = sum(_float(v) for v in seconds.values())
        parts.append(f'<table class="times"><thead><tr><th>stage</th><th>time</th></tr></thead><tbody>{rows}'
                     f'<tr class="total"><th>total</th><td>{_duration(total)}</td></tr></tbody></table>')
    else:
        parts.append('<p class="note">No stage times yet (metrics.json).</p>')
    parts.append(_records(r))
    if r.wd.config.is_file():
        text = r.wd.config.read_text(errors="replace")
        parts.append(f"<details><summary>config.yaml of the last finished run ({len(text.splitlines())} lines)"
                     f"</summary><pre>{esc(text)}</pre></details>")
    parts.append("</section>")
    return "".join(parts)


def _records(r: _Report) -> str:
    """What made each stage's outputs: its fingerprint and the settings of its record."""
    found = records.recorded_stages(r.wd.root)
    if not found:
        return '<p class="note">No records of what made the outputs (records/).</p>'
    rows, behind = [], records.behind(found)
    for stage, record in found.items():
        if isinstance(record, str):
            rows.append(f"<tr><th>{esc(stage)}</th><td class=\"text\">–</td><td class=\"text\">{esc(record)}</td>"
                        "<td class=\"text\">not usable: the next run redoes it</td></tr>")
            continue
        section = records.recorded_section(record)
        settings = (f"given: {record.given}" if record.given else
                    "; ".join(f"{k} {v}" for k, v in _leaves(record.settings.get(section, {}) | record.derived)))
        state = (f"made from earlier outputs of {', '.join(behind[stage])}: the next run redoes it"
                 if stage in behind else "current")
        rows.append(f"<tr><th>{esc(stage)}</th><td class=\"text\"><code>{esc(record.fingerprint)}</code></td>"
                    f"<td class=\"text\">{esc(settings)}</td><td class=\"text\">{esc(state)}</td></tr>")
    return ('<h3>What made the outputs</h3><div class="wrap"><table class="records"><thead><tr><th>stage</th>'
            '<th class="text">fingerprint</th><th class="text">settings (records/)</th><th class="text">state</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _leaves(d: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# -- gallery -----------------------------------------------------------------------------------
def image_scores(voc: VOCDataset, names: Iterable[str], folder: Path) -> dict[str, float]:
    """mIoU (percent, over the classes in the prediction or the ground truth) of each image's
    label ``folder/<name>.png`` against its ground truth; images without either are left out."""
    out = {}
    for name in names:
        path = WorkDir.png(folder, name)
        if not voc.has_gt(name) or not path.is_file():
            continue
        try:
            iou = label_iou(load_label_png(path), voc.load_gt(name), voc.num_classes)
        except InputError:
            continue  # unreadable: the gallery shows the reason, the choice skips it
        if iou is not None:
            out[name] = iou
    return out


def label_iou(pred: np.ndarray | None, gt: np.ndarray | None, num_classes: int) -> float | None:
    """mIoU (percent) of one label map against its ground truth; None without either, for
    another shape or values out of range, or when no class occurs."""
    if pred is None or gt is None:
        return None
    try:
        iou = mean_iou(confusion_matrix(pred, gt, num_classes + 1))
    except ValueError:
        return None
    return iou if iou == iou else None


def choose_gallery(names: list[str], scores: dict[str, float], count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` images as (name, why): with scores, the best third and the worst third (each at
    most half the scored images) then random ones; without, random ones. Random ones keep the
    split's order. Deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    ranked = sorted((n for n in names if n in scores), key=lambda n: (-scores[n], n))
    ends = min(count // 3, len(ranked) // 2)
    best, worst = ranked[:ends], ranked[::-1][:ends]
    taken = set(best) | set(worst)
    rest = [n for n in names if n not in taken]
    picks = sorted(rng.choice(len(rest), size=min(count - 2 * ends, len(rest)), replace=False).tolist())
    return [(n, "best") for n in best] + [(n, "worst") for n in worst] + [(rest[i], "random") for i in picks]


def _gallery(r: _Report, count: int, seed: int) -> str:
    head = '<section id="gallery"><h2>Gallery</h2>'
    if r.voc is None or r.cfg is None:
        return head + '<p class="note">No gallery: the dataset is unknown (see the notes at the top).</p></section>'
    split = r.cfg.dataset.eval_split
    try:
        names = r.voc.split(split)
    except InputError as exc:
        return head + f'<p class="note">No gallery: {esc(exc)}</p></section>'
    walk_scores = image_scores(r.voc, names, r.wd.pseudo_labels)
    chosen = choose_gallery(names, walk_scores, count, seed)
    how = ("the best and the worst by random-walk IoU, then random ones" if walk_scores
           else "random ones (no random-walk labels with ground truth to rank them)")
    cards = [_card(r, i, name, why, walk_scores.get(name)) for i, (name, why) in enumerate(chosen)]
    return (f"{head}<p>{len(chosen)} images of the {esc(split)} split: {esc(how)}. Click a picture for its "
            f"full size.</p>{_legend(r.voc)}{''.join(cards)}</section>")


def _legend(voc: VOCDataset) -> str:
    entries = [(0, "background"), *((i + 1, c) for i, c in enumerate(voc.classes)),
               (IGNORE_INDEX, "ignore / unsure")]
    items = "".join(f'<span class="key"><span class="swatch" style="background:rgb{tuple(int(v) for v in VOC_COLORMAP[i])}">'
                    f'</span>{esc(name)}</span>' for i, name in entries)
    return f'<div class="legend" aria-label="class colours">{items}</div>'


def _card(r: _Report, index: int, name: str, why: str, walk_iou: float | None) -> str:
    """One gallery entry: the image, its CAMs and every label map that exists for it."""
    assert r.voc is not None
    stem = f"{index:03d}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"
    figures, problems = [], []

    def panel(title: str, slug: str, make: Callable[[], np.ndarray | None], label: bool = False) -> np.ndarray | None:
        """The picture of ``make()`` in the card; returns the array (None when unreadable)."""
        try:
            array = make()
        except InputError as exc:  # one unreadable file: say so, show the rest
            problems.append(str(exc))
            return None
        if array is not None:
            figures.append(_picture(r, f"{stem}-{slug}", title, array, label))
        return array

    rgb = panel("image", "image", lambda: r.voc.load_image(name))
    if rgb is not None and r.wd.cam_file(name).is_file():
        try:
            keys, maps = artifacts.load_cam(r.wd.cam_file(name), rgb.shape[:2], r.voc.num_classes)
            for key, cam in zip(keys.tolist(), maps):
                cls = r.voc.classes[key]
                panel(f"CAM {cls}", f"cam{key}", lambda cam=cam: visualize.cam_overlay(rgb, cam))
        except InputError as exc:
            problems.append(str(exc))
    labels = {}
    for slug, title, folder in r.wd.label_folders:
        path = WorkDir.png(folder, name)
        if path.is_file():
            labels[slug] = panel(title, slug, lambda path=path: load_label_png(path), label=True)
    gt = panel("ground truth", "gt", lambda: r.voc.load_gt(name), label=True) if r.voc.has_gt(name) else None
    if rgb is not None:
        _irn_panels(r, name, rgb, panel)

    facts = [f'<span class="tag {esc(why)}">{esc(why)}</span>']
    if walk_iou is not None:
        facts.append(f"{STAGE_BY_NAME['random_walk'].title} IoU {_num(walk_iou)}")
    seg = label_iou(labels.get("segment"), gt, r.voc.num_classes)
    if seg is not None:
        facts.append(f"{STAGE_BY_NAME['segment'].title} IoU {_num(seg)}")
    try:
        facts.append(f"classes: {esc(', '.join(r.voc.label_names(name)) or 'none')}")
    except InputError as exc:
        problems.append(str(exc))
    issues = "".join(f'<p class="note">{esc(p)}</p>' for p in problems)
    return (f'<article class="card"><h3>{esc(name)} {" · ".join(facts)}</h3>'
            f'<div class="panels">{"".join(figures)}</div>{issues}</article>')


def _irn_panels(r: _Report, name: str, rgb: np.ndarray, panel: Callable[..., np.ndarray | None]) -> None:
    """Method irn's pictures of an image: its class-boundary map, its instance pseudo labels and
    the ground-truth instances (SegmentationObject) beside them."""
    assert r.voc is not None
    boundary, instances = WorkDir.png(r.wd.boundary, name), r.wd.instance_file(name)
    if boundary.is_file():
        working = WorkImage(rgb, r.cfg.dataset.long_side if r.cfg else 0).size
        panel("class boundaries (IRN)", "boundary",
              lambda: visualize.boundary_picture(artifacts.load_boundary(boundary), working, rgb.shape[:2]))
    if instances.is_file():
        def instance_map() -> np.ndarray:
            masks, _, scores = artifacts.load_instances(instances, rgb.shape[:2], r.voc.num_classes)
            return visualize.instance_ids(masks, scores)

        panel("instances (IRN)", "instances", instance_map, label=True)
        if r.voc.has_objects(name):
            panel("ground-truth instances", "gt-objects", lambda: r.voc.load_objects(name), label=True)


def _picture(r: _Report, stem: str, title: str, array: np.ndarray, label: bool) -> str:
    """Save ``array`` ((H, W) label map or (H, W, 3) RGB) full size and as a thumbnail; a
    linked <figure> of the thumbnail."""
    full, thumb = r.folder.gallery / f"{stem}.png", r.folder.gallery / f"{stem}.thumb.png"
    height, width = array.shape[:2]
    scale = min(THUMB_HEIGHT / height, THUMB_MAX_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if label:  # palette PNGs (the dataset's colours, small files); nearest keeps labels exact
        save_label_png(full, array)
        save_label_png(thumb, np.asarray(Image.fromarray(array).resize(size, Image.NEAREST)))
    else:
        _save_rgb(full, array)
        _save_rgb(thumb, np.asarray(Image.fromarray(array).resize(size, Image.BILINEAR)))
    r.written |= {full, thumb}
    return (f'<figure><a href="{r.url(full)}"><img src="{r.url(thumb)}" width="{size[0]}" height="{size[1]}" '
            f'alt="{esc(title)}"></a><figcaption>{esc(title)}</figcaption></figure>')


def _save_rgb(path: Path, rgb: np.ndarray) -> None:
    with artifacts.atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(tmp, format="PNG")


# -- charts and formatting ---------------------------------------------------------------------
def _chart(r: _Report, name: str, alt: str, draw: Callable[[Path, Theme], Path]) -> str:
    """The chart drawn for a light and a dark page; the browser picks by its colour scheme."""
    light, dark = r.folder.charts / f"{name}.png", r.folder.charts / f"{name}-dark.png"
    draw(light, visualize.THEMES["light"])
    draw(dark, visualize.THEMES["dark"])
    r.written |= {light, dark}
    with Image.open(light) as im:
        width, height = im.size
    return (f'<picture><source srcset="{r.url(dark)}" media="(prefers-color-scheme: dark)">'
            f'<img class="chart" data-chart="{esc(name)}" src="{r.url(light)}" width="{width}" height="{height}" '
            f'alt="{esc(alt)}"></picture>')


def _float(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _num(v: Any, digits: int = 1) -> str:
    if not isinstance(v, (int, float)) or v != v:
        return "–"
    return f"{v:.{digits}f}"


def _duration(v: Any) -> str:
    s = _float(v)
    if s != s:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{int(s // 60)} min {s % 60:.0f} s"


_CSS = """
:root { color-scheme: light dark; --bg: #ffffff; --fg: #1f2328; --muted: #59636e; --border: #d0d7de;
  --card: #f6f8fa; --warn-bg: #fff8c5; --warn-border: #bf8700; --ok: #1a7f37; --link: #0969da; }
@media (prefers-color-scheme: dark) {
  :root { --bg: #0d1117; --fg: #e6edf3; --muted: #9198a1; --border: #3d444d; --card: #161b22;
    --warn-bg: #3a2d00; --warn-border: #d29922; --ok: #3fb950; --link: #4493f8; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
a { color: var(--link); }
nav { position: sticky; top: 0; z-index: 1; background: var(--bg); border-bottom: 1px solid var(--border);
  padding: 8px 24px; display: flex; flex-wrap: wrap; gap: 4px 18px; font-size: 14px; }
main { max-width: 1280px; margin: 0 auto; padding: 8px 24px 48px; }
h1 { font-size: 26px; margin: 16px 0 4px; }
h2 { font-size: 21px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--border); }
h3 { font-size: 16px; margin: 20px 0 6px; }
h4 { font-size: 14px; margin: 12px 0 4px; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
pre { background: var(--card); border: 1px solid var(--border); border-radius: 6px; padding: 10px 14px;
  overflow: auto; max-height: 480px; }
.facts { color: var(--muted); margin: 0; }
.note { color: var(--muted); font-style: italic; margin: 4px 0; }
.ok { color: var(--ok); font-weight: 600; }
.warnings { background: var(--warn-bg); border: 1px solid var(--warn-border); border-left-width: 6px;
  border-radius: 6px; padding: 4px 18px 8px; margin: 16px 0; }
.warnings h2 { border: 0; margin: 8px 0 4px; }
.warnings li { margin: 4px 0; }
.wrap { overflow-x: auto; }
.row { display: flex; flex-wrap: wrap; gap: 0 32px; align-items: flex-start; }
.row .wrap { flex: 0 1 auto; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid var(--border); text-align: right; }
th:first-child, td.text, th.text { text-align: left; }
thead th { border-bottom: 2px solid var(--border); white-space: nowrap; }
tr.total th, tr.total td { border-top: 2px solid var(--border); }
table.diag { font-size: 13px; }
img.chart { display: block; max-width: 100%; height: auto; border: 1px solid var(--border); border-radius: 6px;
  margin: 8px 0 16px; }
details { margin: 12px 0; }
summary { cursor: pointer; font-weight: 600; }
.legend { display: flex; flex-wrap: wrap; gap: 4px 16px; margin: 8px 0 12px; font-size: 14px; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid var(--border); border-radius: 3px;
  vertical-align: -2px; margin-right: 5px; }
.card { background: var(--card); border: 1px solid var(--border); border-radius: 8px; padding: 6px 14px 10px;
  margin: 12px 0; }
.card h3 { font-size: 15px; font-weight: 600; margin: 4px 0 8px; }
.tag { font-size: 12px; font-weight: 600; border-radius: 10px; padding: 1px 8px; border: 1px solid var(--border); }
.tag.best { color: var(--ok); border-color: var(--ok); }
.tag.worst { color: #cf222e; border-color: #cf222e; }
@media (prefers-color-scheme: dark) { .tag.worst { color: #ff7b72; border-color: #ff7b72; } }
.panels { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: min-content; }  /* the caption wraps to its picture's width */
figure img { display: block; border-radius: 4px; }  /* thumbnails: at most THUMB_MAX_WIDTH px wide */
figcaption { font-size: 12px; color: var(--muted); margin-top: 2px; }
"""


def _page(wd: WorkDir, body: list[str]) -> str:
    main = "".join(body)
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("warnings", "warnings"), ("scores", "scores"), ("training", "training"), ("sweep", "CAM threshold"),
        ("gallery", "gallery"), ("run", "times & config")) if f'id="{a}"' in main)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<meta name=\"color-scheme\" content=\"light dark\">"
        "<link rel=\"icon\" href=\"data:,\">"  # no favicon request (a file:// page would log a 404)
        f"<title>AffinityNet report: {esc(wd.root.resolve().name)}</title><style>{_CSS}</style></head>"
        f"<body><nav><b>AffinityNet report</b>{nav}</nav><main>{main}</main></body></html>\n")
