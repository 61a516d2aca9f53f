"""Other methods' CAMs in, ours out: ``import-cams`` and ``export-labels`` (psa, irn, npz).

A tiny classifier and make-cam run once (8 + 4 synthetic images); its CAMs are exported in each
format, imported into a new work folder, and must come back byte for byte, with the same
confident labels downstream. Hand-made files check each format's quirks, and a pickle that
would run code is never read without --trust-pickle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import artifacts, records
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.images import load_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset, inference_names
from affinitynet.inference import load_pseudo_labeler

from _helpers import TINY_RUN, single_torch_thread, write_config

FORMATS = ("psa", "irn", "npz")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A tiny classifier's CAMs and the confident labels made from them."""
    root = tmp_path_factory.mktemp("import")
    generate(root / "data", 8, 4, seed=3)
    cfg_file = root / "run.yaml"
    cfg = write_config(cfg_file, root / "work", root / "data", TINY_RUN)
    for command in ("train-cam", "make-cam", "make-aff-labels"):
        assert main([command, "--config", str(cfg_file)]) == 0
    voc = VOCDataset(root / "data")
    return {"root": root, "cfg": cfg_file, "work": WorkDir(root / "work"), "data": root / "data", "voc": voc,
            "names": inference_names(cfg.dataset, voc)}


def import_cams(made, work: Path, source: Path, fmt: str, *extra: str) -> int:
    return main(["import-cams", "--config", str(made["cfg"]), "--workdir", str(work), "--from", str(source),
                 "--format", fmt, *extra])


def same_files(a: Path, b: Path, pattern: str) -> bool:
    names = sorted(p.name for p in a.glob(pattern))
    return bool(names) and names == sorted(p.name for p in b.glob(pattern)) and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_then_import_gives_the_same_cams_and_labels(made, fmt, tmp_path, capsys):
    out, work = tmp_path / "out", WorkDir(tmp_path / "work")
    assert main(["export-labels", "--workdir", str(made["work"].root), "--out", str(out), "--cams", fmt,
                 "--labels", "make_cam", "--png", "gray"]) == 0
    suffix = ".npz" if fmt == "npz" else ".npy"
    assert len(list((out / "cams").glob(f"*{suffix}"))) == len(made["names"])
    assert (out / "classes.txt").read_text().split() == made["voc"].classes
    some = made["names"][0]
    gray = Image.open(out / "labels" / f"{some}.png")
    assert gray.mode == "L"
    assert np.array_equal(np.asarray(gray), load_label_png(made["work"].png(made["work"].cam_pred, some)))
    trust = () if fmt == "npz" else ("--trust-pickle",)
    assert import_cams(made, work.root, out / "cams", fmt, *trust) == 0
    assert same_files(made["work"].cam, work.cam, "*.npz")
    # make-cam predicts from the CAMs before their float16 rounding, an import after it
    agree = [np.mean(load_label_png(work.png(work.cam_pred, n)) == load_label_png(made["work"].png(made["work"].cam_pred, n)))
             for n in made["names"]]
    assert min(agree) > 0.999, agree
    record = records.read(work, "make_cam")
    assert record.given.startswith(f"imported {fmt} CAMs from {(out / 'cams').resolve()}, digest ")
    assert records.read(work, "train_cam").given.startswith("not trained")
    ours, theirs = (json.loads(w.metrics.read_text())["make_cam"] for w in (made["work"], work))
    assert abs(theirs["miou"] - ours["miou"]) < 0.05 and theirs["fingerprint"] == record.fingerprint
    assert main(["make-aff-labels", "--config", str(made["cfg"]), "--workdir", str(work.root)]) == 0
    assert same_files(made["work"].aff_labels, work.aff_labels, "*.png")
    assert same_files(made["work"].crf, work.crf, "*.npz")

    # imported back into (a copy of) the folder that made them: nothing downstream is redone
    copy = WorkDir(tmp_path / "copy")
    shutil.copytree(made["work"].root, copy.root)
    assert import_cams(made, copy.root, out / "cams", fmt, *trust) == 0
    assert records.read(copy, "make_cam") == records.read(made["work"], "make_cam")
    assert records.behind(records.recorded_stages(copy.root)) == {}
    assert same_files(made["work"].cam, copy.cam, "*.npz") and not copy.superseded.exists()


def test_run_continues_from_imported_cams(made, tmp_path, capsys):
    """run after import-cams: no classifier trained, no CAM recomputed; the same CAMs again
    change nothing; other CAMs redo everything after make-cam; the report says where they came
    from; the Python API takes an image's CAMs as numpy."""
    work = WorkDir(tmp_path / "work")
    assert import_cams(made, work.root, made["work"].cam, "npz") == 0
    capsys.readouterr()
    assert main(["run", "--config", str(made["cfg"]), "--workdir", str(work.root)]) == 0
    status = _status(capsys.readouterr().out)
    assert status["train_cam"] == "up to date (not trained: the CAMs were imported)"
    assert status["make_cam"].startswith("up to date (imported npz CAMs from")
    assert status["aff_labels"] == "new" and status["random_walk"] == "new"
    assert not work.classifier.final.exists() and len(list(work.pseudo_labels.glob("*.png"))) == len(made["names"])
    assert "imported npz CAMs from" in work.report.index.read_text()
    walk = dict((p.name, p.read_bytes()) for p in work.pseudo_labels.glob("*.png"))

    assert import_cams(made, work.root, made["work"].cam, "npz") == 0  # the same CAMs: nothing to redo
    assert main(["run", "--config", str(made["cfg"]), "--workdir", str(work.root)]) == 0
    assert all(s.startswith("up to date") for s in _status(capsys.readouterr().out).values())
    assert walk == dict((p.name, p.read_bytes()) for p in work.pseudo_labels.glob("*.png"))

    name = made["names"][0]
    image, classes = made["voc"].load_image(name), made["voc"].label_names(name)
    keys, maps = artifacts.load_cam(work.cam_file(name))
    labeler = load_pseudo_labeler(work.root)
    order = [made["voc"].classes.index(c) for c in classes]
    given = maps[[list(keys).index(k) for k in order]]
    assert np.array_equal(labeler.pseudo_label(image, classes, cams=given), load_label_png(work.png(work.pseudo_labels, name)))
    with pytest.raises(Exception, match="imported"):
        labeler.cams(image, classes)

    other = tmp_path / "other"
    other.mkdir()
    for n in made["names"]:
        keys, maps = artifacts.load_cam(made["work"].cam_file(n))
        np.savez(other / f"{n}.npz", keys=keys, maps=maps ** 2)
    assert import_cams(made, work.root, other, "npz") == 0
    assert _status(capsys.readouterr().out)["make_cam"].startswith("redone: imported npz CAMs from")
    assert main(["run", "--config", str(made["cfg"]), "--workdir", str(work.root), "--set", "make_cam.bg_score=0.3"]) == 0
    status = _status(capsys.readouterr().out)
    assert status["make_cam"].endswith("make_cam.bg_score 0.2 → 0.3: redone")
    assert status["aff_labels"] == "redone: the outputs of make_cam changed"
    assert status["train_aff"] == "redone: the outputs of aff_labels changed"
    assert status["random_walk"].startswith("redone: the outputs of make_cam changed")


def _status(out: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line.startswith("[")]
    return {line[1:line.index("]")]: line[line.index("]") + 2:] for line in lines}


# -- hand-made files -----------------------------------------------------------------------------
def _truth_cams(voc: VOCDataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """CAM-like maps from the ground truth: keys of the label, a blurred mask each."""
    keys = np.flatnonzero(voc.image_labels(name))
    gt = voc.load_gt(name)
    return keys, np.stack([(gt == k + 1).astype(np.float32) * 0.9 + 0.05 for k in keys])


def _write_all(made, folder: Path, fmt: str, change=None) -> None:
    """Every inference image's truth CAMs in ``fmt``; ``change(name, keys, maps)`` may return
    the object to save instead (psa / irn content, or an npz's arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in made["names"]:
        keys, maps = _truth_cams(made["voc"], n)
        content = change(n, keys, maps) if change else None
        if fmt == "npz":
            np.savez(folder / f"{n}.npz", **(content or {"keys": keys, "maps": maps}))
        else:
            plain = ({int(k): m for k, m in zip(keys, maps)} if fmt == "psa" else
                     {"keys": keys, "cam": maps[:, ::4, ::4], "high_res": maps})
            np.save(folder / f"{n}.npy", plain if content is None else content, allow_pickle=True)


def test_accepted_quirks_are_fixed_and_said(made, tmp_path, capsys):
    """psa: an extra class dropped, maps outside [0, 1] normalised; irn: torch tensors and only
    the stride-4 cam (upsampled)."""
    first = made["names"][0]

    def psa(n, keys, maps):
        content = {int(k): m * 7.0 for k, m in zip(keys, maps)}  # not normalised
        if n == first:
            content[int(np.setdiff1d(np.arange(len(made["voc"].classes)), keys)[0])] = maps[0]  # not in the label
        return content

    _write_all(made, tmp_path / "psa", "psa", psa)
    capsys.readouterr()
    assert import_cams(made, tmp_path / "w1", tmp_path / "psa", "psa", "--trust-pickle") == 0
    out = capsys.readouterr().out
    assert "dropped 1 maps of classes not in their image's label" in out
    assert f"{len(made['names'])} images had maps outside [0, 1]: normalised" in out
    keys, maps = artifacts.load_cam(WorkDir(tmp_path / "w1").cam_file(first))
    want_keys, want = _truth_cams(made["voc"], first)
    assert keys.tolist() == want_keys.tolist()
    assert np.allclose(maps, want / want.max(axis=(1, 2), keepdims=True), atol=2e-3)

    def irn(n, keys, maps):
        h, w = maps.shape[1:]
        strided = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(maps)[None], ((h + 3) // 4, (w + 3) // 4))
        return {"keys": torch.from_numpy(keys), "cam": strided[0]}

    _write_all(made, tmp_path / "irn", "irn", irn)
    assert import_cams(made, tmp_path / "w2", tmp_path / "irn", "irn", "--trust-pickle") == 0
    assert f"{len(made['names'])} images had only IRN's stride-4 cam: upsampled" in capsys.readouterr().out
    keys, maps = artifacts.load_cam(WorkDir(tmp_path / "w2").cam_file(first))
    assert maps.shape[1:] == made["voc"].load_gt(first).shape
    assert np.abs(maps - _truth_cams(made["voc"], first)[1]).mean() < 0.1  # a blurred copy of the truth


def _one_bad(name_bad, make_bad):
    def change(n, keys, maps):
        return make_bad(keys, maps) if n == name_bad else None
    return change


BAD = {
    "missing class": ("psa", lambda k, m: {int(k[0]): m[0]} if len(k) > 1 else {}, "no map for"),
    "wrong size": ("psa", lambda k, m: {int(c): x[:-3, :-5] for c, x in zip(k, m)}, "but the image is"),
    "not finite": ("npz", lambda k, m: {"keys": k, "maps": np.where(m > 0.5, np.nan, m)}, "NaN or infinite"),
    "no maps array": ("npz", lambda k, m: {"keys": k, "cams": m}, "has no maps array"),
    "not a dict": ("psa", lambda k, m: m, "not the dict of a psa CAM file"),
    "irn without cams": ("irn", lambda k, m: {"keys": k}, "expected keys and high_res or cam"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_are_one_line_errors(made, case, tmp_path, capsys):
    fmt, make_bad, message = BAD[case]
    bad = made["names"][1]
    _write_all(made, tmp_path / "cams", fmt, _one_bad(bad, make_bad))
    capsys.readouterr()
    assert import_cams(made, tmp_path / "w", tmp_path / "cams", fmt, "--trust-pickle") == 2
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the progress bar
    assert err.count("\n") == 0 and bad in err and message in err, err
    assert not WorkDir(tmp_path / "w").cam.exists()  # nothing half-imported


def test_missing_files_and_untrusted_pickles_are_refused(made, tmp_path, capsys):
    _write_all(made, tmp_path / "psa", "psa")
    capsys.readouterr()
    assert import_cams(made, tmp_path / "w", tmp_path / "psa", "psa") == 2
    err = capsys.readouterr().err
    assert "pickles" in err and "--trust-pickle" in err
    (tmp_path / "psa" / f"{made['names'][2]}.npy").unlink()
    assert import_cams(made, tmp_path / "w", tmp_path / "psa", "psa", "--trust-pickle") == 2
    assert f"1 of {len(made['names'])} images" in capsys.readouterr().err


class _RunsCode:
    """A pickle that creates a folder when it is read."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_malicious_pickle_is_never_run_without_the_flag(made, fmt, tmp_path, capsys):
    marker, source = tmp_path / "ran", tmp_path / "cams"
    source.mkdir()
    for n in made["names"]:
        if fmt == "npz":
            np.savez(source / f"{n}.npz", keys=np.array([0]), maps=np.array([_RunsCode(marker)], dtype=object))
        else:
            np.save(source / f"{n}.npy", {"keys": _RunsCode(marker)}, allow_pickle=True)
    assert import_cams(made, tmp_path / "w", source, fmt) == 2
    assert not marker.exists()
    shutil.rmtree(tmp_path / "w", ignore_errors=True)


def test_irn_files_keep_their_stride4_cam_for_irns_walk(made, tmp_path):
    """IRN's own stride-4 ``cam`` (here not the pooled ``high_res``) is kept in the CAM file,
    where method irn's walk starts from it; a ``cam`` off the image's stride-4 grid is not."""
    _write_all(made, tmp_path / "irn", "irn")
    assert import_cams(made, tmp_path / "w", tmp_path / "irn", "irn", "--trust-pickle") == 0
    for n in made["names"][:3]:
        keys, maps = _truth_cams(made["voc"], n)
        kept = artifacts.load_strided_cam(WorkDir(tmp_path / "w").cam_file(n))
        assert kept.shape == (len(keys), (maps.shape[1] + 3) // 4, (maps.shape[2] + 3) // 4)
        assert np.abs(kept - maps[:, ::4, ::4]).max() < 1e-3
    _write_all(made, tmp_path / "off", "irn", lambda n, keys, maps: {"keys": keys, "cam": maps[:, ::8, ::8],
                                                                     "high_res": maps})
    assert import_cams(made, tmp_path / "w2", tmp_path / "off", "irn", "--trust-pickle") == 0
    assert artifacts.load_strided_cam(WorkDir(tmp_path / "w2").cam_file(made["names"][0])) is None
