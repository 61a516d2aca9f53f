"""Every bad input gets one clear error line naming the file or value, exit status 2, and
leaves nothing half-written (the table in docs/RELIABILITY.md, row by row).

Runs the command line in-process (``affinitynet.cli.main``) on a copy of a tiny prepared work
folder (synthetic data, the tiny backbone, 64 px crops). About 25 s on 2 cores.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import artifacts
from affinitynet.artifacts import WorkDir
from affinitynet.data.images import load_label_png
from affinitynet.cli import main
from affinitynet.data.synthetic import generate

from _helpers import single_torch_thread, tiny_sets, write_config

SETS = tiny_sets(cam_epochs=1, crf_iterations=1, logt=2)
BAD = "train_00001"  # the image a test spoils


@dataclass
class Case:
    data: Path
    work: WorkDir
    cfg_file: Path

    def image(self, name: str = BAD) -> Path:
        return self.data / "JPEGImages" / f"{name}.jpg"

    def xml(self, name: str = BAD) -> Path:
        return self.data / "Annotations" / f"{name}.xml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the CPU is shared with other test processes (and far faster so)."""
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Case:
    """4 train + 2 val images, a trained tiny classifier, CAMs, untrained AffinityNet weights."""
    root = tmp_path_factory.mktemp("bad_inputs")
    generate(root / "data", 4, 2, seed=5)
    case = _write_case(root, root / "data", root / "work")
    assert main(["train-cam", "--config", str(case.cfg_file)]) == 0
    assert main(["make-cam", "--config", str(case.cfg_file)]) == 0
    from affinitynet.models import build_affinity_net

    artifacts.save_checkpoint(case.work.affinity.final, build_affinity_net("tiny").state_dict())
    return case


def _write_case(root: Path, data: Path, work: Path) -> Case:
    cfg_file = root / "config.yaml"
    write_config(cfg_file, work, data, SETS)
    return Case(data, WorkDir(work), cfg_file)


@pytest.fixture
def make_case(base, tmp_path):
    """A fresh copy of the dataset and of the named work-folder parts of ``base``."""

    def make(*parts: str) -> Case:
        shutil.copytree(base.data, tmp_path / "data")
        for part in parts:
            shutil.copytree(base.work.root / part, tmp_path / "work" / part)
        return _write_case(tmp_path, tmp_path / "data", tmp_path / "work")

    return make


def fail(capsys, *argv: str) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line; return its message."""
    capsys.readouterr()
    status = main(list(argv))
    err = capsys.readouterr().err
    assert status == 2, err[-2000:]
    assert "Traceback" not in err
    assert err.count("affinitynet: error: ") == 1 and err.endswith("\n")
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any progress bar
    assert line.startswith("affinitynet: error: "), repr(err[-2000:])
    return line[len("affinitynet: error: "):]


def stage(name: str, case: Case, *extra: str) -> list[str]:
    return [name, "--config", str(case.cfg_file), *extra]


def stray_tmp(root: Path) -> list[Path]:
    return list(root.rglob(artifacts.TMP_PREFIX + "*"))


def assert_no_partial_cams(case: Case, bad: str = BAD) -> None:
    """The bad image got no output; every output there is complete; no temporary files."""
    wd = case.work
    assert not wd.cam_file(bad).exists() and not wd.png(wd.cam_pred, bad).exists()
    for f in wd.cam.glob("*.npz"):
        artifacts.load_cam(f)
        assert wd.png(wd.cam_pred, f.stem).exists()
    assert stray_tmp(wd.root) == []


# ---------------------------------------------------------------------------------------------
# images and split lists
# ---------------------------------------------------------------------------------------------
def test_missing_image(make_case, capsys):
    case = make_case("classifier")
    case.image().unlink()
    msg = fail(capsys, *stage("make-cam", case))
    assert str(case.image()) in msg and "does not exist" in msg and "train.txt" in msg
    assert not case.work.cam.exists()  # caught before any work
    msg = fail(capsys, *stage("train-cam", case, "--workdir", str(case.work.root / "fresh")))
    assert str(case.image()) in msg
    assert not (case.work.root / "fresh").exists()


def test_split_list_names_missing_image(make_case, capsys):
    case = make_case()
    split = case.data / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "ghost_0007\n")
    msg = fail(capsys, *stage("train-cam", case))
    assert "ghost_0007" in msg and str(split) in msg
    assert not case.work.root.exists()


def test_missing_split_list_and_dataset(make_case, capsys):
    case = make_case()
    msg = fail(capsys, *stage("train-cam", case, "--set", "dataset.train_split=nosuch"))
    assert "nosuch.txt" in msg and "available: " in msg
    msg = fail(capsys, *stage("train-cam", case, "--dataset", str(case.data / "absent")))
    assert str(case.data / "absent") in msg
    assert not case.work.root.exists()


def _spoil(path: Path, kind: str) -> str:
    """Make image ``path`` bad in one way; returns the words the error must contain."""
    good = path.read_bytes()
    if kind == "zero-byte":
        path.write_bytes(b"")
        return "empty file"
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
        return "truncated"
    if kind == "corrupt":  # the header's tables overwritten
        path.write_bytes(good[:20] + bytes(255 - b for b in good[20:600]) + good[600:])
        return "not an image"
    if kind == "not-an-image":
        path.write_text("name,label\nimg1,cat\n")
        return "not an image"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated", "corrupt", "not-an-image"])
def test_bad_image_file_make_cam(make_case, capsys, kind):
    """Decoded in DataLoader workers: the worker's error still arrives as one line."""
    case = make_case("classifier")
    words = _spoil(case.image(), kind)
    msg = fail(capsys, *stage("make-cam", case, "--set", "make_cam.num_workers=2"))
    assert msg.startswith(str(case.image())) and words in msg
    assert_no_partial_cams(case)


def test_bad_image_file_train_cam_and_random_walk(make_case, capsys):
    case = make_case("cam", "affinity")
    _spoil(case.image(), "truncated")
    msg = fail(capsys, *stage("random-walk", case))  # 2 DataLoader workers
    assert msg.startswith(str(case.image())) and "truncated" in msg
    assert not case.work.png(case.work.pseudo_labels, BAD).exists()
    msg = fail(capsys, *stage("train-cam", case))
    assert msg.startswith(str(case.image())) and "truncated" in msg
    assert not (case.work.classifier.final).exists()
    assert stray_tmp(case.work.root) == []


def test_image_smaller_than_the_grid(make_case, capsys):
    case = make_case("classifier", "affinity")
    Image.fromarray(np.full((5, 6, 3), 120, np.uint8)).save(case.image())
    msg = fail(capsys, *stage("make-cam", case))
    assert msg.startswith(str(case.image())) and "6x5 px" in msg and "8x8" in msg
    assert_no_partial_cams(case)
    # training resizes every image (resize_long), so a small one is usable there
    assert main(stage("train-cam", case, "--workdir", str(case.work.root / "t"))) == 0


def test_image_too_small_for_the_random_walk(make_case, capsys):
    case = make_case("classifier", "affinity")
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(case.image())
    native = ("--set", "dataset.long_side=0")  # at its own size; the case's recipe works at 256 px
    assert main(stage("make-cam", case, *native)) == 0  # fine for CAMs
    msg = fail(capsys, *stage("random-walk", case, *native))
    assert msg.startswith(str(case.image())) and "48x40 px" in msg and "radius 5" in msg
    assert msg.endswith("set dataset.long_side to work at a larger size")
    assert not case.work.png(case.work.pseudo_labels, BAD).exists()
    assert stray_tmp(case.work.root) == []
    # at a working size the same image is walked (upscaled) and labelled at its own size
    assert main(stage("random-walk", case)) == 0
    assert load_label_png(case.work.png(case.work.pseudo_labels, BAD)).shape == (40, 48)


# ---------------------------------------------------------------------------------------------
# image-level labels
# ---------------------------------------------------------------------------------------------
def _drop_objects(xml: Path) -> None:
    text = xml.read_text()
    start, end = text.index("<object>"), text.rindex("</object>") + len("</object>")
    xml.write_text(text[:start] + text[end:])


def test_image_without_labels(make_case, capsys):
    case = make_case("classifier")
    _drop_objects(case.xml())
    with pytest.warns(UserWarning, match=f"without class labels skipped.*{BAD}"):
        assert main(stage("train-cam", case, "--workdir", str(case.work.root / "t"))) == 0
    msg = fail(capsys, *stage("make-cam", case))
    assert str(case.image()) in msg and "no class label" in msg
    assert_no_partial_cams(case)


def test_label_names_unknown_class(make_case, capsys):
    case = make_case()
    case.xml().write_text(case.xml().read_text().replace("<name>", "<name>unicorn", 1))
    msg = fail(capsys, *stage("train-cam", case))
    assert str(case.xml()) in msg and "unicorn" in msg and BAD in msg
    assert not case.work.root.exists()


# ---------------------------------------------------------------------------------------------
# work-folder files: CAMs, checkpoints, weights
# ---------------------------------------------------------------------------------------------
def test_cam_from_another_image_size_or_dataset(make_case, capsys):
    case = make_case("cam", "cam_pred", "affinity")
    cam = case.work.cam_file(BAD)
    artifacts.save_cam(cam, np.array([0]), np.zeros((1, 10, 12), np.float32), num_classes=5)
    msg = fail(capsys, *stage("make-aff-labels", case))
    assert msg.startswith(str(cam)) and "10x12" in msg
    assert not case.work.png(case.work.aff_labels, BAD).exists()
    msg = fail(capsys, *stage("random-walk", case))
    assert msg.startswith(str(cam)) and "10x12" in msg
    # the right size, but made for VOC's 20 classes
    h, w = np.asarray(Image.open(case.image())).shape[:2]
    artifacts.save_cam(cam, np.array([0]), np.zeros((1, h, w), np.float32), num_classes=20)
    msg = fail(capsys, *stage("make-aff-labels", case))
    assert msg.startswith(str(cam)) and "20 classes" in msg
    cam.write_bytes(b"not a zip file")
    msg = fail(capsys, *stage("make-aff-labels", case))
    assert msg.startswith(str(cam)) and "not a readable CAM file" in msg
    assert not case.work.png(case.work.aff_labels, BAD).exists()
    assert stray_tmp(case.work.root) == []


def test_checkpoint_for_another_network(make_case, capsys):
    case = make_case("classifier", "records")
    final = case.work.classifier.final
    msg = fail(capsys, *stage("make-cam", case, "--set", "train_cam.backbone=resnet50"))
    assert msg.startswith(str(final)) and "does not fit" in msg and "missing keys" in msg
    assert_no_partial_cams(case)
    # same backbone, another dataset (6 classes instead of 5): the head's shape is named
    classes = case.data / "classes.txt"
    classes.write_text(classes.read_text() + "extra\n")
    msg = fail(capsys, *stage("make-cam", case))
    assert msg.startswith(str(final)) and "fc8.weight" in msg and "shape" in msg
    # resuming training from a checkpoint of another network, put there by hand (its record says
    # these settings made it: another dataset would be redone, not resumed)
    classes.write_text(classes.read_text().replace("extra\n", ""))
    checkpoint = artifacts.load_checkpoint(case.work.classifier.checkpoint)
    checkpoint["model"]["fc8.weight"] = torch.zeros(6, *checkpoint["model"]["fc8.weight"].shape[1:])
    artifacts.save_checkpoint(case.work.classifier.checkpoint, checkpoint)
    final.unlink()
    msg = fail(capsys, *stage("train-cam", case))
    assert msg.startswith(str(case.work.classifier.checkpoint)) and "fc8.weight" in msg


class _Evil:
    """Unpickling this runs code (creates the marker file) unless weights_only stops it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["final weights", "checkpoint", "imagenet weights"])
def test_malicious_pickle_never_runs(make_case, capsys, tmp_path, where):
    case = make_case("classifier", "records")
    marker = tmp_path / "pwned"
    evil = {"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}
    if where == "final weights":
        path = case.work.classifier.final
        torch.save(evil, path)
        argv = stage("make-cam", case)
    elif where == "checkpoint":
        path = case.work.classifier.checkpoint
        torch.save(evil, path)
        case.work.classifier.final.unlink()  # so that training resumes from the checkpoint
        argv = stage("train-cam", case)
    else:
        path = tmp_path / "imagenet.pth"
        torch.save(evil, path)
        argv = stage("train-cam", case, "--set", f"train_cam.weights={path}",
                     "--workdir", str(case.work.root / "t"))
    assert not marker.exists()
    msg = fail(capsys, *argv)
    assert msg.startswith(str(path)) and "not a loadable" in msg
    assert not marker.exists()


def test_truncated_or_missing_checkpoint(make_case, capsys):
    case = make_case("classifier")
    final = case.work.classifier.final
    final.write_bytes(final.read_bytes()[:100])
    msg = fail(capsys, *stage("make-cam", case))
    assert msg.startswith(str(final)) and "not a loadable checkpoint" in msg
    final.unlink()
    msg = fail(capsys, *stage("make-cam", case))
    assert msg.startswith(str(final)) and "run the training stage first" in msg


# ---------------------------------------------------------------------------------------------
# faults while running
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,at_step", [(float("nan"), 2), (float("inf"), 0)])
def test_loss_becomes_nan_or_inf(make_case, capsys, monkeypatch, value, at_step):
    """2 steps per epoch; the bad loss at global step ``at_step``: training stops there, the
    checkpoint of the last finished epoch stays, final.pth is never written."""
    case = make_case()
    real = torch.nn.functional.multilabel_soft_margin_loss
    calls = {"train": 0}

    def loss(*args, **kwargs):
        out = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training steps only, not the validation loss
            calls["train"] += 1
            if calls["train"] == at_step + 1:
                return out * value
        return out

    monkeypatch.setattr(torch.nn.functional, "multilabel_soft_margin_loss", loss)
    msg = fail(capsys, *stage("train-cam", case, "--set", "train_cam.epochs=2"))
    ckpt = case.work.classifier.checkpoint
    assert f"loss became {value} at step {at_step}" in msg
    assert not (case.work.classifier.final).exists()
    if at_step == 0:
        assert "none (no epoch finished)" in msg and not ckpt.exists()
    else:
        assert str(ckpt) in msg and artifacts.load_checkpoint(ckpt)["epoch"] == 1
    assert stray_tmp(case.work.root) == []


def test_no_space_left_on_rename(make_case, capsys, monkeypatch):
    case = make_case("classifier")

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    msg = fail(capsys, *stage("make-cam", case))
    assert "no space left on the device" in msg and str(case.work.root) in msg
    monkeypatch.undo()
    for folder in (case.work.cam, case.work.cam_pred):  # nothing written (the record is the first write)
        assert not folder.exists() or list(folder.iterdir()) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_no_space_left_while_writing_checkpoint(make_case, capsys, monkeypatch):
    """Real ENOSPC: every temporary file of a checkpoint is a link to /dev/full, whose writes fail
    that way."""
    case = make_case()
    real_new_temp = artifacts.new_temp_file

    def temp_on_full_disk(path):
        name = real_new_temp(path)
        if path.suffix == ".pt":
            os.unlink(name)
            os.symlink("/dev/full", name)
        return name

    monkeypatch.setattr(artifacts, "new_temp_file", temp_on_full_disk)
    msg = fail(capsys, *stage("train-cam", case))
    ckpt = case.work.classifier.checkpoint
    assert msg.startswith(str(ckpt)) and "no space left on the device" in msg
    assert not ckpt.exists() and stray_tmp(case.work.root) == []


def test_no_space_left_outside_the_atomic_writers(make_case, capsys, monkeypatch):
    case = make_case()
    log = case.work.classifier.log

    def full(path, record):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(artifacts, "append_jsonl", full)
    msg = fail(capsys, *stage("train-cam", case))
    assert msg == f"{log}: {os.strerror(errno.ENOSPC)}"


# ---------------------------------------------------------------------------------------------
# configuration: rejected before any work, the key named
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("item,words", [
    ("train_cam.learning_rate=0.1", "train_cam.learning_rate"),
    ("train_cam.epochs=many", "train_cam.epochs"),
    ("train_cam.lr=-1", "train_cam.lr"),
    ("random_walk.beta=0", "random_walk.beta"),
    ("train_cam.backbone=resnet101", "train_cam.backbone"),
    ("train_aff.crop=64", "train_aff.crop"),
    ("random_walk.radius=1", "random_walk.radius"),
    ("make_cam.scales=[1.0,-0.5]", "make_cam.scales"),
])
def test_config_error_before_any_work(base, capsys, tmp_path, item, words):
    work = tmp_path / "work"
    for command in ("train-cam", "make-cam", "random-walk"):
        msg = fail(capsys, command, "--workdir", str(work), "--dataset", str(base.data), "--set", item)
        assert f"'{words}'" in msg
    assert not work.exists()


def test_config_file_errors(base, capsys, tmp_path):
    work = tmp_path / "work"
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_cam: [unclosed\n")
    msg = fail(capsys, "train-cam", "--config", str(bad), "--workdir", str(work))
    assert str(bad) in msg and "not valid YAML" in msg
    msg = fail(capsys, "train-cam", "--config", str(tmp_path / "absent.yaml"), "--workdir", str(work))
    assert "absent.yaml" in msg
    bad.write_text("train_cam:\n  epochs: 2\n  colour_jitter: [0, 0, 0, 0]\n")
    msg = fail(capsys, "train-cam", "--config", str(bad), "--workdir", str(work))
    assert "'train_cam.colour_jitter'" in msg
    assert not work.exists()
