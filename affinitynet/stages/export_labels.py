"""``affinitynet export-labels``: a work folder's label maps and CAMs where other toolkits read them.

Writes into ``ExportLabelsConfig.out``:

- ``labels/<image>.png``: the label maps of one stage (default: the random walk's pseudo labels),
  as palette PNGs (VOC's) or plain grey index PNGs (``png: gray``, as PSA and IRN write theirs);
  0 background, c + 1 object class c, 255 unsure;
- ``cams/<image>.npy`` (``psa``, ``irn``) or ``.npz`` (``npz``): the CAMs in that format
  (``artifacts.write_exchange_cams``); IRN's stride-4 ``cam`` is the mean of each 4x4 cell of
  the CAMs (``algorithms.cam.strided_cams``), ``high_res`` the CAMs themselves, so an import
  of the export gives back the same CAM files;
- ``classes.txt``: the object classes in index order (index 0 = the first line), from the
  stages' records.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tqdm import tqdm

from affinitynet import artifacts, records
from affinitynet.algorithms.cam import strided_cams, strided_size
from affinitynet.artifacts import WorkDir
from affinitynet.config import ExportLabelsConfig
from affinitynet.conventions import IRN_STRIDE
from affinitynet.data.images import load_label_png, save_label_png
from affinitynet.errors import InputError
from affinitynet.stage_table import STAGE_BY_NAME



def run(cfg: ExportLabelsConfig) -> dict[str, Any]:
    wd, out = WorkDir(cfg.workdir), Path(cfg.out)
    if not cfg.workdir or not wd.root.is_dir():
        raise InputError(f"export-labels: {cfg.workdir or '(no --workdir)'} is not a work folder")
    if not cfg.out:
        raise InputError("export-labels: no output folder given (--out DIR)")
    if not cfg.labels and not cfg.cams:
        raise InputError("export-labels: nothing to export (--labels none and no --cams)")
    behind = records.behind(records.recorded_stages(wd.root))
    result: dict[str, Any] = {"out": str(out)}
    if cfg.labels:
        folder = getattr(wd, STAGE_BY_NAME[cfg.labels].folder)
        pngs = sorted(folder.glob("*.png"))
        if not pngs:
            raise InputError(f"export-labels: {folder} has no label maps of {cfg.labels} (run that stage first)")
        _warn_behind(cfg.labels, behind)
        for path in tqdm(pngs, desc="export-labels", unit="img", leave=False):
            target = out / "labels" / path.name
            if cfg.png == "palette":  # ours are VOC palette PNGs already
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
            else:
                save_label_png(target, load_label_png(path), palette=False)
        result["labels"] = len(pngs)
    if cfg.cams:
        result["cams"] = _export_cams(wd, out / "cams", cfg.cams)
    _write_classes(wd, out)
    print(f"export-labels: {', '.join(f'{result[k]} {k}' for k in ('labels', 'cams') if k in result)} in {out}")
    return result


def _export_cams(wd: WorkDir, folder: Path, fmt: str) -> int:
    files = sorted(wd.cam.glob("*.npz"))
    if not files:
        raise InputError(f"export-labels: {wd.cam} has no CAM files (run make-cam or import-cams first)")
    suffix = artifacts.EXCHANGE_SUFFIX[fmt]
    for path in tqdm(files, desc="export-cams", unit="img", leave=False):
        keys, maps = artifacts.load_cam(path)
        strided = None
        if fmt == "irn":  # the stride-4 maps make-cam kept (fusion irn) if on the image's grid, else pooled
            strided = artifacts.load_strided_cam(path)
            if strided is None or strided.shape[1:] != strided_size(maps.shape[1:], IRN_STRIDE):
                strided = strided_cams(maps, IRN_STRIDE)
        artifacts.write_exchange_cams(folder / f"{path.stem}{suffix}", fmt, keys, maps, strided)
    return len(files)


def _warn_behind(stage: str, behind: dict[str, list[str]]) -> None:
    if stage in behind:
        print(f"export-labels: warning: {stage}'s outputs were made from earlier outputs of "
              f"{', '.join(behind[stage])}; `affinitynet run` redoes them")


def _write_classes(wd: WorkDir, out: Path) -> None:
    """classes.txt: the dataset's classes as the stages' records hold them."""
    for record in records.recorded_stages(wd.root).values():
        if isinstance(record, records.Record) and "data" in record.settings:
            artifacts.write_lines(out / "classes.txt", record.settings["data"]["classes"])
            return
