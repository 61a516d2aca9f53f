"""Resumable stages and atomic outputs: SIGKILL a stage mid-way, rerun it, compare with a run
that was never interrupted.

The killed run is a subprocess (a small driver calling ``affinitynet.cli.main``) slowed down
per image / per training step so that the kill lands mid-way; the rerun and the uninterrupted
reference run in this process. Everything runs with one torch thread so that results are
bitwise reproducible. About 30 s on 2 cores.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from affinitynet import artifacts
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.synthetic import generate

from _helpers import single_torch_thread, tiny_sets, write_config

REPO = Path(__file__).resolve().parents[1]

# small and fast: 8 train + 2 val images, one scale, 4 training steps per epoch
SETS = tiny_sets(cam_epochs=2, crf_iterations=2, logt=3) + ["segment.split=train", "segment.num_workers=0"]

# The driver runs one command of the CLI; with a delay it sleeps before every output write and
# training step, so that the test can kill it mid-way. For make-cam the delay sits between the
# CAM-prediction PNG and the .npz that marks the image done: the worst moment for a kill.
DRIVER = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from affinitynet import artifacts, training
    from affinitynet.cli import main
    import affinitynet.stages.make_aff_labels as mal
    import affinitynet.stages.random_walk as rw
    import affinitynet.stages.segment as seg

    delay = float(sys.argv[1])

    def slow(fn):
        def wrapped(*a, **k):
            time.sleep(delay)
            return fn(*a, **k)
        return wrapped

    artifacts.save_cam = slow(artifacts.save_cam)
    mal.save_label_png = slow(mal.save_label_png)
    rw.save_label_png = slow(rw.save_label_png)
    seg.save_label_png = slow(seg.save_label_png)
    training.check_finite = slow(training.check_finite)
    sys.exit(main(sys.argv[2:]))
""")


@pytest.fixture(scope="module")
def one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """Dataset, config file and a work folder where every per-image stage ran uninterrupted."""
    root = tmp_path_factory.mktemp("reliability")
    data = root / "data"
    generate(data, 8, 2, seed=3)
    cfg_file = root / "config.yaml"
    cfg = write_config(cfg_file, root / "ref", data, SETS)
    wd = WorkDir(cfg.workdir)
    assert main(["train-cam", "--config", str(cfg_file)]) == 0
    assert main(["make-cam", "--config", str(cfg_file)]) == 0
    assert main(["make-aff-labels", "--config", str(cfg_file)]) == 0
    # the random walk needs some AffinityNet: untrained weights do (no need to train one here)
    from affinitynet.models import build_affinity_net

    torch.manual_seed(0)
    artifacts.save_checkpoint(wd.affinity.final, build_affinity_net("tiny").state_dict())
    assert main(["random-walk", "--config", str(cfg_file)]) == 0
    from affinitynet.models import build_segmentation_net

    torch.manual_seed(0)  # likewise an untrained segmentation network for segment
    artifacts.save_checkpoint(wd.segmentation.final, build_segmentation_net("tiny", 5).state_dict())
    assert main(["segment", "--config", str(cfg_file)]) == 0
    driver = root / "driver.py"
    driver.write_text(DRIVER)
    return {"root": root, "cfg": cfg, "cfg_file": cfg_file, "wd": wd, "driver": driver,
            "images": len(list(wd.cam.glob("*.npz")))}


def _config_for(ref: dict, workdir: Path) -> Path:
    path = workdir.parent / f"{workdir.name}.yaml"
    write_config(path, workdir, ref["cfg"].dataset.root, SETS)
    return path


def _start(ref: dict, delay: float, argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # own session: the kill reaches DataLoader workers and CRF processes too
    return subprocess.Popen([sys.executable, str(ref["driver"]), str(delay), *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _wait_for(proc: subprocess.Popen, cond, what: str, timeout: float = 60.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the stage ended (status {proc.returncode}) before {what}: "
                                 f"{proc.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            _kill(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _stray_tmp(root: Path) -> list[Path]:
    return [p for p in root.rglob(artifacts.TMP_PREFIX + "*")]


# stage -> (output folders compared, the folder whose files mark an image done, folders that the
# stage needs from the reference run)
PER_IMAGE = {
    "make-cam": (("cam", "cam_pred"), ("cam", ".npz"), ("classifier",)),
    "make-aff-labels": (("crf", "aff_labels"), ("crf", ".npz"), ("cam", "cam_pred")),
    "random-walk": (("pseudo_labels",), ("pseudo_labels", ".png"), ("cam", "affinity")),
    "segment": (("seg_pred",), ("seg_pred", ".png"), ("segmentation",)),
}


@pytest.mark.parametrize("stage", list(PER_IMAGE))
def test_killed_stage_resumes_to_identical_outputs(reference, tmp_path, stage):
    outputs, (done_dir, done_ext), needs = PER_IMAGE[stage]
    ref_wd: WorkDir = reference["wd"]
    work = tmp_path / "work"
    for folder in needs:
        shutil.copytree(ref_wd.root / folder, work / folder)
    cfg_file = _config_for(reference, work)
    total = reference["images"]
    done_folder = work / done_dir

    def done() -> list[Path]:
        return list(done_folder.glob(f"*{done_ext}")) if done_folder.is_dir() else []

    proc = _start(reference, 0.25, [stage, "--config", str(cfg_file)])
    try:
        _wait_for(proc, lambda: len(done()) >= 2, "two images were done")
        if stage == "make-cam":
            # kill while a CAM prediction PNG exists whose .npz is not written yet
            _wait_for(proc, lambda: len(list((work / "cam_pred").glob("*.png"))) > len(done()),
                      "a PNG ahead of its .npz")
    finally:
        _kill(proc)
    finished = len(done())
    assert 2 <= finished < total, f"the kill should land mid-way, {finished}/{total} images done"
    if stage == "make-cam":
        assert len(list((work / "cam_pred").glob("*.png"))) > finished  # the inconsistent moment
    # a temporary file as a kill during a write leaves it
    (done_folder / f"{artifacts.TMP_PREFIX}x.npz.abc123").write_bytes(b"half")

    assert main([stage, "--config", str(cfg_file)]) == 0
    for folder in outputs:
        got, want = _files(work / folder), _files(ref_wd.root / folder)
        assert sorted(got) == sorted(want)
        differ = [name for name in want if got[name] != want[name]]
        assert not differ, f"{folder}: files differ from the uninterrupted run: {differ}"
    assert _stray_tmp(work) == []


def test_rerun_skips_finished_images(reference, tmp_path):
    """A rerun of a finished stage computes nothing and leaves the files as they were."""
    work = tmp_path / "work"
    shutil.copytree(reference["wd"].root, work)
    cfg_file = _config_for(reference, work)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (work / "cam").iterdir()}
    assert main(["make-cam", "--config", str(cfg_file)]) == 0
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (work / "cam").iterdir()}
    assert after == before


def test_killed_training_resumes_to_identical_weights(reference, tmp_path):
    """train-cam killed in epoch 2 of 2, then run again: it resumes (its record says the
    checkpoint was made with these settings) to the same weights, optimizer state and log as the
    uninterrupted run of the reference fixture."""
    work = tmp_path / "work"
    cfg_file = _config_for(reference, work)
    folder = WorkDir(work).classifier
    ckpt, final, log_path = folder.checkpoint, folder.final, folder.log
    proc = _start(reference, 0.3, ["train-cam", "--config", str(cfg_file)])

    def in_epoch_2() -> bool:  # a step of epoch 2 is logged: a resume must repeat it
        return ckpt.exists() and any(r.get("step", 0) > 4 for r in artifacts.read_jsonl(log_path))

    try:
        _wait_for(proc, in_epoch_2, "a step of epoch 2")
    finally:
        _kill(proc)
    assert not final.exists(), "the kill should land before the end of training"
    state = artifacts.load_checkpoint(ckpt)
    assert state["epoch"] == 1 and state["step"] == 4

    assert main(["train-cam", "--config", str(cfg_file)]) == 0
    ref_dir = reference["wd"].classifier
    want, got = artifacts.load_checkpoint(ref_dir.final), artifacts.load_checkpoint(final)
    assert sorted(got) == sorted(want)
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"weights differ from the uninterrupted run: {differ}"
    want_ck, got_ck = artifacts.load_checkpoint(ref_dir.checkpoint), artifacts.load_checkpoint(ckpt)
    assert (got_ck["epoch"], got_ck["step"]) == (want_ck["epoch"], want_ck["step"]) == (2, 8)
    for k, v in want_ck["optimizer"]["state"].items():
        assert torch.equal(got_ck["optimizer"]["state"][k]["momentum_buffer"], v["momentum_buffer"])
    # every step logged once, with the uninterrupted run's losses
    log = [r for r in artifacts.read_jsonl(log_path) if r["kind"] == "step"]
    ref_log = [r for r in artifacts.read_jsonl(ref_dir.log) if r["kind"] == "step"]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    assert _stray_tmp(work) == []


def test_resume_without_checkpoint_starts_from_scratch(reference, tmp_path, capsys):
    """Killed before its first checkpoint: the record is there, the checkpoint is not."""
    from affinitynet import config as C, records

    work = tmp_path / "work"
    cfg_file = _config_for(reference, work)
    records.start(C.load_config(C.RunConfig, cfg_file, ["train_cam.epochs=1"]), "train_cam")
    assert main(["train-cam", "--config", str(cfg_file), "--set", "train_cam.epochs=1"]) == 0
    assert "no checkpoint" in capsys.readouterr().out
    assert artifacts.load_checkpoint(WorkDir(work).classifier.checkpoint)["epoch"] == 1


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A checkpoint write that fails half-way (here: the rename) keeps the previous checkpoint."""
    path = tmp_path / "checkpoint.pt"
    artifacts.save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    good = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        artifacts.save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert list(tmp_path.iterdir()) == [path]
