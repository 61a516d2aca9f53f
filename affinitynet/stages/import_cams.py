"""``affinitynet import-cams``: another method's CAMs become a work folder's make-cam outputs.

Reads one file per image of the inference splits from ``ImportCamsConfig.source`` (formats:
``artifacts.read_exchange_cams``), checks each against the dataset and writes our CAM files,
the CAM predictions and their scores follow as make-cam makes them (``pipeline.import_cams``
calls ``make_cam.finish``). The make-cam record then says where
the CAMs came from (``records.imported``), and train-cam's says it was not trained, so ``run``
continues from make-aff-labels. Importing CAMs equal to those in the folder (the same import
again, or the folder's own CAMs exported and imported) changes nothing downstream; other CAMs
redo every stage after make-cam.

Checks, per file: every class of the image label has a map (else an error); maps of classes not
in the label are dropped (counted, and said once); maps are at the image size (IRN's stride-4
``cam`` without ``high_res`` is upsampled); values are finite; maps not in [0, 1] are normalised
the way PSA normalises its CAMs (counted, and said once). IRN's stride-4 ``cam``, when it is
on the image's stride-4 grid with values in [0, 1], is kept beside the maps, so ``method: irn``
walks from it as IRN does.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from affinitynet import artifacts, records
from affinitynet.algorithms.cam import conform_cams, strided_cams, strided_size
from affinitynet.artifacts import WorkDir
from affinitynet.config import ImportCamsConfig, RunConfig
from affinitynet.conventions import IRN_STRIDE
from affinitynet.data.voc import VOCDataset, inference_names, open_dataset
from affinitynet.errors import InputError


def run(cfg: RunConfig, spec: ImportCamsConfig) -> dict[str, Any]:
    """Import ``spec.source``'s CAMs into ``cfg.workdir`` for ``cfg.dataset``; returns the
    make-cam decision (``records.Start``), the images and the import's counts."""
    source, suffix = Path(spec.source), artifacts.EXCHANGE_SUFFIX[spec.format]
    if not spec.source or not source.is_dir():
        raise InputError(f"import-cams: {spec.source or '(no --from)'} is not a folder of CAM files")
    if spec.format in artifacts.PICKLED_FORMATS and not spec.trust_pickle:
        raise InputError(f"import-cams: {spec.format} CAM files are Python pickles, and reading a pickle can run any "
                         f"code it holds; pass --trust-pickle if you trust {source} (or write the CAMs as npz)")
    wd, voc = WorkDir(cfg.workdir), open_dataset(cfg.dataset)
    names = inference_names(cfg.dataset, voc)
    missing = [n for n in names if not (source / f"{n}{suffix}").is_file()]
    if missing:
        raise InputError(f"import-cams: {len(missing)} of {len(names)} images of {', '.join(cfg.dataset.infer_splits)} "
                         f"+ {cfg.dataset.eval_split} have no {suffix} file in {source} (e.g. {missing[0]}{suffix})")
    staging = wd.root / "cam.importing"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    counts = {"images": len(names), "dropped_maps": 0, "normalised": 0, "upsampled": 0}
    for name in tqdm(names, desc="import-cams", unit="img", leave=False):
        keys, maps, strided = import_one(voc, name, source / f"{name}{suffix}", spec, counts)
        artifacts.save_cam(staging / f"{name}.npz", keys, maps, voc.num_classes, strided)
    given = f"imported {spec.format} CAMs from {source.resolve()}, digest {_digest(staging, names)}"
    decision = records.imported(cfg, "make_cam", given, lambda: os.replace(staging, wd.cam),
                                same_outputs=_same_files(staging, wd.cam, names))
    shutil.rmtree(staging, ignore_errors=True)  # the same CAMs as before: the folder there stays
    if records.read(wd, "train_cam") is None and not wd.classifier.final.exists():
        records.imported(cfg, "train_cam", "not trained: the CAMs were imported", lambda: None)
    _say(counts, source)
    return {"decision": decision, "names": names, "import": counts}


def import_one(voc: VOCDataset, name: str, path: Path, spec: ImportCamsConfig,
               counts: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One image's CAMs from ``path``, checked against its label and size: (keys (k,), maps
    (k, H, W) in [0, 1], IRN's stride-4 maps (k, ceil(H/4), ceil(W/4)) when the file has them in
    [0, 1] on that grid, else None) for the classes of its label; updates ``counts``."""
    cams = artifacts.read_exchange_cams(path, spec.format, spec.trust_pickle)
    label = np.flatnonzero(voc.image_labels(name))
    if label.size == 0:
        raise InputError(f"{path}: image '{name}' has no class label, so it has no CAM to import (label it or "
                         "remove it from the inference splits)")
    if len(set(cams.keys.tolist())) != len(cams.keys) or len(cams.keys) != len(cams.maps):
        raise InputError(f"{path}: {len(cams.maps)} maps for class indices {cams.keys.tolist()}")
    absent = [int(c) for c in label if c not in cams.keys]
    if absent:
        raise InputError(f"{path}: no map for {', '.join(voc.classes[c] for c in absent)} (class index "
                         f"{', '.join(map(str, absent))}, counting from 0 without the background), which the "
                         f"image's label has")
    keep = np.isin(cams.keys, label)
    counts["dropped_maps"] += int((~keep).sum())
    try:
        conformed = conform_cams(cams.maps[keep], voc.image_size(name), stride=cams.stride)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    counts["normalised"] += conformed.normalised
    counts["upsampled"] += conformed.upsampled
    order = np.argsort(cams.keys[keep])
    strided = None
    if cams.strided is not None and cams.strided.ndim == 3 and len(cams.strided) == len(cams.keys):
        grid = strided_size(voc.image_size(name), IRN_STRIDE)
        kept = cams.strided[keep][order]
        maps = conformed.maps[order]
        # IRN's own stride-4 maps, as IRN's walk starts from them; not when they are just the
        # maps pooled (what the walk does without them, e.g. our own CAMs exported as irn)
        if kept.shape[1:] == grid and kept.min() >= 0 and kept.max() <= 1 and not np.allclose(
                kept, strided_cams(maps, IRN_STRIDE), rtol=0, atol=1e-3):
            strided = kept
    return cams.keys[keep][order], conformed.maps[order], strided


def _digest(folder: Path, names: list[str]) -> str:
    """sha256 of the CAM files written, in image order: equal CAMs, equal digest."""
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + (folder / f"{name}.npz").read_bytes())
    return digest.hexdigest()[:16]


def _same_files(new: Path, current: Path, names: list[str]) -> bool:
    """Whether ``current`` holds exactly the CAM files of ``new``, byte for byte (e.g. this
    folder's own CAMs exported and imported again)."""
    if sorted(p.name for p in current.glob("*.npz")) != sorted(f"{n}.npz" for n in names):
        return False
    return all((new / f"{n}.npz").read_bytes() == (current / f"{n}.npz").read_bytes() for n in names)


def _say(counts: dict[str, int], source: Path) -> None:
    """The import's adjustments, once each."""
    print(f"import-cams: {counts['images']} images from {source}")
    if counts["dropped_maps"]:
        print(f"import-cams: dropped {counts['dropped_maps']} maps of classes not in their image's label")
    if counts["normalised"]:
        print(f"import-cams: {counts['normalised']} images had maps outside [0, 1]: normalised as PSA does (ReLU, "
              "then each map divided by its maximum + 1e-5)")
    if counts["upsampled"]:
        print(f"import-cams: {counts['upsampled']} images had only IRN's stride-4 cam: upsampled to the image size")
