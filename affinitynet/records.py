"""What made a work folder's outputs: one record per stage, and the one comparison every stage
makes before it starts.

A stage's record (``records/<stage>.json``) holds the settings that can change its outputs (its
config section and the dataset keys it reads, without the ones that only change speed: loader
workers, CRF processes, memory format, ``torch.compile``, the device), the fingerprints of the
stages whose outputs it reads, the package version and the record format. Its fingerprint is
the digest of all that. Before a stage produces anything, ``start`` compares the record the
current config asks for with the one on disk:

- the same: the outputs are reused as they are (finished images are skipped, training resumes
  from its checkpoint or is done already);
- different (or no record, or another package version or record format): the old outputs are
  set aside in one move per folder, the record going first, so no output is ever taken for one
  of the new settings, and the stage starts from scratch; with ``changed: refuse`` the stage
  stops instead, naming the keys that changed. Every stage that reads these outputs then sees a
  changed input fingerprint and is redone too.

A setting that only changes a derived output (``derived``: make-cam's background score gives
the CAM predictions) redoes just that output. ``redo`` forces a stage (and, through the
fingerprints, every stage after it).

Outputs made elsewhere are *given*: a training stage's ``final.pth`` put there by hand (e.g. the
authors' released weights: no checkpoint, no log, no record), or CAMs of another method
(``affinitynet import-cams``, ``imported``). Their record says where they came from instead of
settings; they are kept whatever the settings (only their derived outputs follow them) until
another file is given or the stage is redone on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affinitynet import __version__, artifacts, distributed
from affinitynet.artifacts import WorkDir
from affinitynet.config import RunConfig, apply_overrides, load_config, to_dict, validate
from affinitynet.data.voc import open_dataset
from affinitynet.errors import InputError
from affinitynet.stage_table import METHOD_SECTIONS, RECORDED_BY_NAME, StageInfo, section_of

RECORD_FORMAT = 1
#: how the record of a final.pth put there by hand begins (then its sha256)
GIVEN_WEIGHTS = "its final.pth was given, not trained here; sha256 "
#: settings that change only how fast a stage runs, never what it writes
SPEED_KEYS = frozenset({"num_workers", "processes", "channels_last", "compile"})
#: the dataset's settings every stage's outputs depend on; its location (root, labels file) is
#: not one of them: the dataset's identity is (data.voc.VOCDataset.identity)
DATASET_KEYS = ("long_side", "exif_transpose")


@dataclass(frozen=True)
class Record:
    """What made one stage's outputs."""

    stage: str
    settings: dict[str, Any]  # {"dataset": {...}, "<section>": {...}}
    derived: dict[str, Any] = field(default_factory=dict)  # settings of the derived outputs only
    inputs: dict[str, str] = field(default_factory=dict)  # stage -> fingerprint of the outputs read
    package: str = __version__
    generation: int = 0  # counts forced redos with unchanged settings
    given: str = ""  # outputs made elsewhere: where they came from (a final.pth's sha256, imported CAMs' digest)
    format: int = RECORD_FORMAT

    @property
    def fingerprint(self) -> str:
        """Digest of everything above but the derived settings (they do not change what the
        stages after it read)."""
        body = {"stage": self.stage, "settings": self.settings, "inputs": self.inputs, "package": self.package,
                "generation": self.generation, "given": self.given, "format": self.format}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "stage": self.stage, "package": self.package, "settings": self.settings,
                "derived": self.derived, "inputs": self.inputs, "generation": self.generation, "given": self.given,
                "fingerprint": self.fingerprint}


def stage_settings(cfg: RunConfig, info: StageInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, derived settings) of ``cfg`` that can change the outputs of stage ``info``:
    its section (the method's, for a stage the method does its own way, with the method's name),
    the dataset keys and the dataset's identity."""
    section = section_of(info.name, cfg.method)
    own = {k: v for k, v in to_dict(getattr(cfg, section)).items() if k not in SPEED_KEYS}
    derived = {k: own.pop(k) for k in info.derived}
    for key in info.ignored:
        own.pop(key, None)
    if "backbone" in own:  # "" means the classifier's: record the backbone itself
        own["backbone"] = cfg.backbone_of(getattr(cfg, section))
    dataset = {k: v for k, v in to_dict(cfg.dataset).items() if k in DATASET_KEYS}
    # which images a per-image stage covers does not change any image's output; the images a
    # network trains on do
    identity = open_dataset(cfg.dataset).identity([cfg.dataset.train_split] if info.trains else [])
    settings = {"data": identity, "dataset": dataset, section: own}
    if section != info.section:  # PSA's records stay as they were before methods existed
        settings["method"] = cfg.method
    return settings, derived


def wanted(cfg: RunConfig, stage: str) -> Record:
    """The record the config asks for: its settings, and the fingerprints of the records of
    the stages it reads, as they are on disk now (empty for one that has none)."""
    info = RECORDED_BY_NAME[stage]
    settings, derived = stage_settings(cfg, info)
    wd = WorkDir(cfg.workdir)
    inputs = {}
    for name in info.reads:
        record = read(wd, name)
        inputs[name] = record.fingerprint if isinstance(record, Record) else ""
    return Record(stage, settings, derived, inputs)


def read(wd: WorkDir, stage: str) -> Record | str | None:
    """The record on disk: a Record, None when there is none, or (a str) why it cannot be used
    (unreadable, or of another record format)."""
    path = wd.record(stage)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != RECORD_FORMAT:
            return (f"its record has format {data.get('format')} (affinitynet {data.get('package', '?')}), this "
                    f"affinitynet {__version__} writes format {RECORD_FORMAT}")
        return Record(data["stage"], data["settings"], data.get("derived", {}), data.get("inputs", {}),
                      data["package"], int(data.get("generation", 0)), data.get("given", ""), data["format"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"its record {path} is not readable ({type(exc).__name__})"


def differences(old: Record, new: Record) -> list[str]:
    """What changed, as "section.key old → new" (and "X's outputs changed", "affinitynet a → b")."""
    out = [f"{key} {_show(a)} → {_show(b)}" for key, a, b in _changed(old.settings, new.settings)]
    out += [f"the outputs of {name} changed" for name in sorted(set(old.inputs) | set(new.inputs))
            if old.inputs.get(name) != new.inputs.get(name)]
    if old.package != new.package:
        out.append(f"affinitynet {old.package} → {new.package}")
    return out


def _changed(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append((f"{prefix}{key}", x, y))
    return out


def _show(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# -- the one comparison ------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """How a stage starts: ``status`` "new" (no outputs yet), "continued" (the outputs on disk
    were made with these settings: finished work is kept), "redone" (old outputs set aside,
    ``reasons`` say why) or "given" (a final.pth put there by hand); ``derived`` lists the
    derived settings that changed (their outputs were set aside and are made again)."""

    status: str
    record: Record
    reasons: tuple[str, ...] = ()
    derived: tuple[str, ...] = ()

    def line(self, stage: str, done_now: int | None = None) -> str:
        """The one line ``run`` prints for the stage; ``done_now``: the images or epochs this run did."""
        if self.status == "redone":
            return f"[{stage}] redone: {'; '.join(self.reasons)}"
        if self.status == "given":
            derived = f"; {', '.join(self.derived)}: redone" if self.derived else ""
            return f"[{stage}] up to date ({self.record.given}){derived}"
        if self.status == "new":
            return f"[{stage}] new"
        state = "up to date" if not done_now else "resumed"
        return f"[{stage}] {state}" + (f"; {', '.join(self.derived)}: redone" if self.derived else "")


def outcome(decision: Start, stage: str, done_now: int | None) -> dict[str, str]:
    """What a stage's result says of its outputs: their fingerprint and how they came about
    (printed: the stage's one status line)."""
    line = decision.line(stage, done_now)
    if distributed.current().is_main:
        print(line)
    return {"fingerprint": decision.record.fingerprint, "status": line}


def start(cfg: RunConfig, stage: str) -> Start:
    """Compare the record ``cfg`` asks for with the one on disk and make the work folder agree
    (module docstring); rank 0 decides, every rank gets the decision. Raises InputError with
    ``changed: refuse`` when the settings differ."""
    decision: Start | None = None
    if distributed.current().is_main:
        decision = _decide(cfg, stage, WorkDir(cfg.workdir))
    distributed.barrier()
    if decision is None:  # another rank: the record rank 0 wrote
        record = read(WorkDir(cfg.workdir), stage)
        assert isinstance(record, Record)
        decision = Start("continued", record)
    return decision


def _decide(cfg: RunConfig, stage: str, wd: WorkDir) -> Start:
    info, new = RECORDED_BY_NAME[stage], wanted(cfg, stage)
    old, outputs = read(wd, stage), _outputs(wd, info)
    forced = stage in cfg.redo
    if not forced and info.trains and _given(wd, info) and (old is None or isinstance(old, Record) and old.given):
        given = f"{GIVEN_WEIGHTS}{_sha256(wd.training(stage).final)[:16]}"
        if isinstance(old, Record) and old.given == given:
            return Start("given", old)
        return _write(wd, Start("given", Record(stage, {}, given=given)))
    if not forced and isinstance(old, Record) and old.given and not old.given.startswith(GIVEN_WEIGHTS):
        return _keep_given(wd, info, old, new)
    if isinstance(old, Record) and not old.given and not forced and _same(old, new):
        if old.derived == new.derived:
            return Start("continued", old)
        changed = [f"{info.section}.{k} {a} → {b}" for k, a, b in _changed(old.derived, new.derived)]
        _set_aside(wd, stage, old.fingerprint, info.derived_outputs)
        return _write(wd, Start("continued", new, derived=tuple(changed)))
    if old is None and not outputs:
        return _write(wd, Start("new", new))
    reasons = _reasons(old, new, forced)
    if cfg.changed == "refuse":
        raise InputError(f"{stage}: the outputs in {wd.root} were made with other settings ({'; '.join(reasons)}); "
                         "rerun without refusing changes (changed: redo) to redo them, or use another work folder")
    if forced and isinstance(old, Record) and _same(old, new):
        new = Record(new.stage, new.settings, new.derived, new.inputs, generation=old.generation + 1)
    _set_aside(wd, stage, old.fingerprint if isinstance(old, Record) else "unrecorded", info.folders)
    return _write(wd, Start("redone", new, tuple(reasons)))


def _keep_given(wd: WorkDir, info: StageInfo, old: Record, new: Record) -> Start:
    """Imported outputs stay; derived outputs of other derived settings are made again."""
    if old.derived == new.derived:
        return Start("given", old)
    changed = [f"{info.section}.{k} {a} → {b}" for k, a, b in _changed(old.derived, new.derived)]
    _set_aside(wd, info.name, old.fingerprint, info.derived_outputs)
    kept = Record(old.stage, old.settings, new.derived, old.inputs, old.package, old.generation, old.given)
    return _write(wd, Start("given", kept, derived=tuple(changed)))


def imported(cfg: RunConfig, stage: str, given: str, place: Callable[[], None], same_outputs: bool = False) -> Start:
    """Outputs of ``stage`` made elsewhere (``import-cams``), described by ``given`` (where they
    came from, with a digest of their content). The same ``given`` as on disk, or
    ``same_outputs`` (the new outputs equal those on disk byte for byte, wherever they came
    from): nothing changes, so nothing downstream is redone. Otherwise the stage's outputs on
    disk are set aside, ``place()`` puts the new ones in its folder, and the record is written
    last (outputs without a record are never reused)."""
    wd, info = WorkDir(cfg.workdir), RECORDED_BY_NAME[stage]
    old, (_, derived) = read(wd, stage), stage_settings(cfg, info)
    if isinstance(old, Record) and (old.given == given or same_outputs) and _outputs(wd, info):
        return Start("given" if old.given else "continued", old)
    if old is not None or _outputs(wd, info):
        _set_aside(wd, stage, old.fingerprint if isinstance(old, Record) else "unrecorded", info.folders)
    place()
    before = (old.given or "outputs of its settings") if isinstance(old, Record) else "unrecorded outputs"
    record = Record(stage, {}, derived, given=given)
    return _write(wd, Start("given" if old is None else "redone", record, () if old is None else (f"{before} → {given}",)))


def _same(old: Record, new: Record) -> bool:
    return old.settings == new.settings and old.inputs == new.inputs and old.package == new.package


def _reasons(old: Record | str | None, new: Record, forced: bool) -> list[str]:
    if forced:
        return ["asked for (redo)"]
    if old is None:
        return ["no record of the settings that made the outputs there (written by an affinitynet without "
                "records, or put there by hand)"]
    if isinstance(old, str):
        return [old]
    return differences(old, new) or ["its final.pth was given; this run trains it"]


def _write(wd: WorkDir, decision: Start) -> Start:
    artifacts.write_json(wd.record(decision.record.stage), decision.record.to_json())
    return decision


def _outputs(wd: WorkDir, info: StageInfo) -> bool:
    """Whether any output of the stage is on disk."""
    return any(_has_files(getattr(wd, folder) if isinstance(getattr(wd, folder), Path) else getattr(wd, folder).root)
               for folder in info.folders)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(True for _ in folder.iterdir())


def _given(wd: WorkDir, info: StageInfo) -> bool:
    """A training stage's final.pth put there by hand: no checkpoint and no log beside it."""
    out = wd.training(info.name)
    return out.final.is_file() and not out.checkpoint.exists() and not out.log.exists()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _set_aside(wd: WorkDir, stage: str, fingerprint: str, folders: tuple[str, ...]) -> None:
    """Move the stage's output ``folders`` to ``superseded/<stage>-<fingerprint>/``, the record
    first: outputs without a record are never reused, so a kill half-way leaves nothing mixed."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(wd.record(stage))
    target = wd.superseded / f"{stage}-{fingerprint}"
    if target.exists():
        target = wd.superseded / f"{stage}-{fingerprint}-{uuid.uuid4().hex[:6]}"
    _forget_scores(wd, stage)
    moved = []
    for name in folders:
        folder = getattr(wd, name)
        folder = folder if isinstance(folder, Path) else folder.root
        if folder.exists():
            target.mkdir(parents=True, exist_ok=True)
            os.replace(folder, target / folder.name)
            moved.append(folder.name)
    if moved:
        print(f"{stage}: outputs of other settings set aside in {target} ({', '.join(moved)}; delete it when "
              "you no longer need them)")


def _forget_scores(wd: WorkDir, stage: str) -> None:
    """metrics.json never keeps the scores of outputs that were set aside."""
    metrics = artifacts.read_metrics(wd.metrics)
    if stage in metrics or stage in metrics.get("fingerprints", {}):
        metrics.pop(stage, None)
        metrics.get("fingerprints", {}).pop(stage, None)
        artifacts.write_json(wd.metrics, metrics)


# -- what the outputs were made with -----------------------------------------------------------
def recorded_config(workdir: str | Path, base: RunConfig | None = None,
                    stages: tuple[str, ...] | None = None) -> RunConfig:
    """The settings a work folder's outputs were made with: ``base`` (default: the folder's
    config.yaml, else the defaults) with the settings of every stage's record (or of ``stages``)
    laid over it, and ``workdir`` as its work folder. Readers of the outputs (the report, tune,
    the Python API, predict) use this, not the config of the last run."""
    wd = WorkDir(workdir)
    if base is None:
        base = load_config(RunConfig, wd.config) if wd.config.is_file() else RunConfig()
    cfg = apply_overrides(base, {"workdir": str(workdir)})
    for stage in stages if stages is not None else tuple(RECORDED_BY_NAME):
        record = read(wd, stage)
        if isinstance(record, Record) and not record.given:
            section = recorded_section(record)
            # a stage some method does its own way: its record says which (none: PSA's)
            method = ({"method": record.settings.get("method", "psa")}
                      if any(stage in sections for sections in METHOD_SECTIONS.values()) else {})
            cfg = apply_overrides(cfg, {**method, "dataset": record.settings["dataset"],
                                        section: {**record.settings[section], **record.derived}})
    validate(cfg)
    return cfg


def recorded_section(record: Record) -> str:
    """The config section whose settings ``record`` holds (the stage's, or its method's; the
    stage's for a record of given outputs, which holds none)."""
    return next((k for k in record.settings if k not in ("data", "dataset", "method")), record.stage)


def recorded_stages(workdir: str | Path) -> dict[str, Record | str]:
    """Every stage's record in a work folder (a str says why one cannot be used)."""
    wd = WorkDir(workdir)
    return {stage: record for stage in RECORDED_BY_NAME if (record := read(wd, stage)) is not None}


def behind(found: dict[str, Record | str]) -> dict[str, list[str]]:
    """The stages (of ``recorded_stages``) whose outputs were made from other outputs of a stage
    they read than those in the folder now (that stage was redone by a command of its own since):
    stage -> the stages whose outputs changed. The next run of the stage redoes it."""
    out = {}
    for stage, record in found.items():
        if isinstance(record, Record):
            changed = [name for name, fingerprint in record.inputs.items()
                       if not (isinstance(now := found.get(name), Record) and now.fingerprint == fingerprint)]
            if changed:
                out[stage] = changed
    return out
