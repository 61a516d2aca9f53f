"""A work folder never mixes results of different settings: every stage keeps a record of what
made its outputs and compares it with the config before it starts (affinitynet/records.py).

One tiny pipeline (8 + 4 synthetic images, the tiny backbone, one epoch per training stage) runs
once; every test works on a copy of its work folder. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from affinitynet import artifacts, records
from affinitynet.algorithms.cam import cam_prediction
from affinitynet.algorithms.resize import WorkImage
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.images import load_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset

from _helpers import TINY_RUN, single_torch_thread, write_config

REPO = Path(__file__).resolve().parents[1]
SETS = TINY_RUN
STAGES = ("train_cam", "make_cam", "aff_labels", "train_aff", "random_walk", "train_seg", "segment")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_torch_thread():
        yield


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("records")
    generate(root / "data", 8, 4, seed=3)
    cfg_file = root / "run.yaml"
    write_config(cfg_file, root / "work", root / "data", SETS)
    assert main(["run", "--config", str(cfg_file)]) == 0
    return {"root": root, "work": root / "work", "data": root / "data"}


@pytest.fixture
def folder(first, tmp_path) -> tuple[WorkDir, Path]:
    """A copy of the finished work folder, with its own config file."""
    shutil.copytree(first["work"], tmp_path / "work")
    cfg_file = tmp_path / "run.yaml"
    write_config(cfg_file, tmp_path / "work", first["data"], SETS)
    return WorkDir(tmp_path / "work"), cfg_file


def run(capsys, *argv: str) -> dict[str, str]:
    """``affinitynet run`` (or another command): exit 0; the status line of every stage."""
    capsys.readouterr()
    assert main(list(argv)) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    return {line[1:line.index("]")]: line[line.index("]") + 2:] for line in lines}


def outputs(wd: WorkDir, *folders: str) -> dict[Path, int]:
    """Every output file (of ``folders``, default all stages') and its modification time."""
    folders = folders or ("classifier", "cam", "cam_pred", "crf", "aff_labels", "affinity", "pseudo_labels",
                          "segmentation", "seg_pred")
    return {p: p.stat().st_mtime_ns for f in folders for p in (wd.root / f).rglob("*") if p.is_file()}


def fresh_walk(first, tmp_path, *sets: str) -> WorkDir:
    """random-walk alone in a new folder holding the first run's CAMs and AffinityNet."""
    wd = WorkDir(tmp_path / "fresh")
    for part in ("cam", "affinity"):
        shutil.copytree(first["work"] / part, wd.root / part)
    cfg_file = tmp_path / "fresh.yaml"
    write_config(cfg_file, wd.root, first["data"], SETS)
    assert main(["random-walk", "--config", str(cfg_file), *sets]) == 0
    return wd


def same_labels(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.glob("*.png"))
    return names == sorted(p.name for p in b.glob("*.png")) and len(names) == 12 and all(
        np.array_equal(load_label_png(a / n), load_label_png(b / n)) for n in names)


def test_first_run_records_every_stage(first):
    wd = WorkDir(first["work"])
    metrics = json.loads(wd.metrics.read_text())
    for stage in STAGES:
        record = records.read(wd, stage)
        assert isinstance(record, records.Record) and record.package and record.format == records.RECORD_FORMAT
        assert metrics["fingerprints"][stage] == record.fingerprint
    assert metrics["random_walk"]["fingerprint"] == records.read(wd, "random_walk").fingerprint
    walk = records.read(wd, "random_walk")
    assert walk.settings["random_walk"]["beta"] == 8.0 and "num_workers" not in walk.settings["random_walk"]
    assert walk.inputs == {"make_cam": records.read(wd, "make_cam").fingerprint,
                           "train_aff": records.read(wd, "train_aff").fingerprint}


def test_unchanged_rerun_redoes_nothing(folder, capsys):
    wd, cfg_file = folder
    before = outputs(wd)
    status = run(capsys, "run", "--config", str(cfg_file))
    assert status == {stage: "up to date" for stage in STAGES}
    assert outputs(wd) == before


def test_changing_beta_redoes_the_walk_and_what_follows(first, folder, capsys, tmp_path):
    wd, cfg_file = folder
    kept = outputs(wd, "classifier", "cam", "cam_pred", "crf", "aff_labels", "affinity")
    status = run(capsys, "run", "--config", str(cfg_file), "--set", "random_walk.beta=4")
    assert [status[s] for s in STAGES[:4]] == ["up to date"] * 4
    assert status["random_walk"] == "redone: random_walk.beta 8.0 → 4.0"
    assert status["train_seg"] == "redone: the outputs of random_walk changed"
    assert status["segment"] == "redone: the outputs of train_seg changed"
    assert outputs(wd, "classifier", "cam", "cam_pred", "crf", "aff_labels", "affinity") == kept
    # the labels are those of a fresh walk with beta 4, none of beta 8
    assert same_labels(wd.pseudo_labels, fresh_walk(first, tmp_path, "--set", "random_walk.beta=4").pseudo_labels)
    old = next(wd.superseded.glob("random_walk-*"))
    assert same_labels(old / "pseudo_labels", WorkDir(first["work"]).pseudo_labels)
    metrics = json.loads(wd.metrics.read_text())
    assert metrics["random_walk"]["fingerprint"] == records.read(wd, "random_walk").fingerprint
    assert records.read(wd, "random_walk").settings["random_walk"]["beta"] == 4.0


def test_changing_train_cam_lr_redoes_everything(folder, capsys):
    wd, cfg_file = folder
    status = run(capsys, "run", "--config", str(cfg_file), "--set", "train_cam.lr=0.03")
    assert status["train_cam"] == "redone: train_cam.lr 0.02 → 0.03"
    assert all(status[s].startswith("redone: the outputs of") for s in STAGES[1:]), status


def test_a_changed_derived_setting_redoes_only_its_output(folder, capsys):
    """make_cam.bg_score changes the CAM predictions (and their score), not the CAMs."""
    wd, cfg_file = folder
    cams = outputs(wd, "cam", "crf", "aff_labels", "affinity", "pseudo_labels")
    status = run(capsys, "run", "--config", str(cfg_file), "--set", "make_cam.bg_score=0.5")
    assert status["make_cam"] == "up to date; make_cam.bg_score 0.2 → 0.5: redone"
    assert all(status[s] == "up to date" for s in STAGES if s != "make_cam")
    assert outputs(wd, "cam", "crf", "aff_labels", "affinity", "pseudo_labels") == cams
    for path in wd.cam.glob("*.npz"):
        keys, maps = artifacts.load_cam(path)
        assert np.array_equal(load_label_png(wd.png(wd.cam_pred, path.stem)), cam_prediction(keys, maps, 0.5))


def test_refuse_names_the_changed_keys_and_keeps_everything(folder, capsys):
    wd, cfg_file = folder
    before = outputs(wd)
    capsys.readouterr()
    assert main(["run", "--config", str(cfg_file), "--set", "random_walk.beta=4", "--refuse-changes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("affinitynet: error: random_walk: ") and "random_walk.beta 8.0 → 4.0" in err
    assert outputs(wd) == before and not wd.superseded.exists()


def test_redo_forces_a_stage_and_what_follows(folder, capsys):
    wd, cfg_file = folder
    status = run(capsys, "run", "--config", str(cfg_file), "--redo", "train_aff")
    assert [status[s] for s in STAGES[:3]] == ["up to date"] * 3
    assert status["train_aff"] == "redone: asked for (redo)"
    assert all(status[s].startswith("redone: the outputs of") for s in STAGES[4:]), status
    assert records.read(wd, "train_aff").generation == 1
    # the next plain run keeps all of it
    assert set(run(capsys, "run", "--config", str(cfg_file)).values()) == {"up to date"}


def test_an_older_record_format_is_redone_with_a_clear_message(folder, capsys):
    wd, cfg_file = folder
    record = json.loads(wd.record("segment").read_text())
    wd.record("segment").write_text(json.dumps({**record, "format": 0, "package": "0.0.9"}))
    status = run(capsys, "segment", "--config", str(cfg_file))
    assert status["segment"] == ("redone: its record has format 0 (affinitynet 0.0.9), this affinitynet "
                                 f"{records.__version__} writes format {records.RECORD_FORMAT}")
    # outputs with no record at all (an affinitynet from before records): redone, saying so
    wd.record("segment").unlink()
    assert "no record of the settings" in run(capsys, "segment", "--config", str(cfg_file))["segment"]


def test_given_weights_are_used_as_they_are(first, tmp_path, capsys):
    """A final.pth put there by hand (e.g. released weights: no checkpoint, no log) is not retrained."""
    wd = WorkDir(tmp_path / "work")
    shutil.copytree(first["work"] / "cam", wd.cam)
    wd.affinity.root.mkdir(parents=True)
    shutil.copy(WorkDir(first["work"]).affinity.final, wd.affinity.final)
    cfg_file = tmp_path / "run.yaml"
    write_config(cfg_file, wd.root, first["data"], SETS)
    status = run(capsys, "train-aff", "--config", str(cfg_file))
    assert status["train_aff"].startswith("up to date (its final.pth was given")
    assert records.read(wd, "train_aff").given  # nothing trained, the file kept
    assert not wd.affinity.checkpoint.exists()
    status = run(capsys, "random-walk", "--config", str(cfg_file))
    assert records.read(wd, "random_walk").inputs["train_aff"] == records.read(wd, "train_aff").fingerprint


def test_readers_use_the_records_not_the_last_config(folder, capsys):
    """random-walk alone with another beta: config.yaml still says 8, the outputs were made with 4,
    and the API, predict's settings and the report say 4."""
    from affinitynet import report
    from affinitynet.inference import load_pseudo_labeler, run_config

    wd, cfg_file = folder
    before = json.loads(wd.metrics.read_text())
    capsys.readouterr()
    assert main(["random-walk", "--config", str(cfg_file), "--set", "random_walk.beta=4"]) == 0
    out = capsys.readouterr().out
    assert "train_seg: made from earlier outputs of random_walk; `affinitynet run`" in out
    assert "beta: 8.0" in wd.config.read_text()
    assert run_config(wd.root).random_walk.beta == 4.0
    assert load_pseudo_labeler(wd.root).cfg.random_walk.beta == 4.0
    # metrics.json holds the score of the labels on disk, and keeps the others with their fingerprints
    metrics = json.loads(wd.metrics.read_text())
    walk = records.read(wd, "random_walk").fingerprint
    assert metrics["random_walk"]["fingerprint"] == metrics["fingerprints"]["random_walk"] == walk
    assert walk != before["fingerprints"]["random_walk"] and metrics["segment"] == before["segment"]
    page = report.write_report(wd.root, images=1).read_text()
    assert "What made the outputs" in page and "beta 4.0" in page
    assert page.count("the next run redoes it") == 1  # train_seg: made from the beta-8 labels


DRIVER = """
import sys, time
import torch
torch.set_num_threads(1)
import affinitynet.stages.random_walk as rw
from affinitynet.cli import main
save = rw.save_label_png
def slow(*a, **k):
    time.sleep(0.3)
    return save(*a, **k)
rw.save_label_png = slow
sys.exit(main(sys.argv[1:]))
"""


def test_a_stage_killed_halfway_then_changed_leaves_no_old_image(first, folder, capsys, tmp_path):
    """The walk redone with beta 2 is killed halfway (its beta-8 labels already set aside, their
    score gone from metrics.json), then run with beta 4: only beta-4 labels remain."""
    wd, cfg_file = folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, "random-walk", "--config", str(cfg_file), "--set",
                             "random_walk.beta=2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.time()
        while not (wd.superseded.exists() and len(list(wd.pseudo_labels.glob("*.png"))) >= 3) \
                and time.time() - t0 < 120 and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert 3 <= len(list(wd.pseudo_labels.glob("*.png"))) < 12
    metrics = json.loads(wd.metrics.read_text())
    assert "random_walk" not in metrics and "random_walk" not in metrics["fingerprints"] and "segment" in metrics
    status = run(capsys, "random-walk", "--config", str(cfg_file), "--set", "random_walk.beta=4")
    assert status["random_walk"] == "redone: random_walk.beta 2.0 → 4.0"
    assert same_labels(wd.pseudo_labels, fresh_walk(first, tmp_path, "--set", "random_walk.beta=4").pseudo_labels)


def test_tune_is_kept_or_redone_like_a_stage(folder, capsys):
    wd, cfg_file = folder
    small = ["--set", "tune.split=val", "--set", "tune.bg_scores=[0.2,0.4]", "--set", "tune.low_alphas=[4]",
             "--set", "tune.high_alphas=[32]", "--set", "tune.alphas=[4]", "--set", "tune.betas=[8]",
             "--set", "tune.logts=[2]"]
    assert run(capsys, "tune", "--config", str(cfg_file), *small)["tune"] == "new"
    stamp = outputs(wd, "tune")
    capsys.readouterr()
    assert main(["tune", "--config", str(cfg_file), *small]) == 0
    assert "tune: up to date" in capsys.readouterr().out and outputs(wd, "tune") == stamp
    # the walk it read was redone with another beta: tune follows
    run(capsys, "random-walk", "--config", str(cfg_file), "--set", "random_walk.beta=4")
    status = run(capsys, "tune", "--config", str(cfg_file), *small)  # the config still says beta 8
    assert status["tune"] == "redone: the outputs of random_walk changed"
    # its "current" settings are those the outputs were made with (the records), not the config's
    assert json.loads((wd.tune / "tune.json").read_text())["current"]["random_walk"]["beta"] == 4.0


#: method irn at its smallest: IRN's labels, network and walk on the tiny run's CAMs
IRN_SETS = ["method=irn", "ir_labels.processes=1", "ir_labels.crf_iterations=1", "train_irn.epochs=1",
            "train_irn.batch_size=2", "train_irn.crop=80", "train_irn.num_workers=0", "irn_labels.exp_times=2",
            "irn_labels.crop=96", "irn_labels.num_workers=0"]


def test_switching_the_method_redoes_stages_2b_to_5_only(first, folder, capsys):
    from affinitynet.api import load_irn_labeler, load_pseudo_labeler

    wd, cfg_file = folder
    kept = outputs(wd, "classifier", "cam", "cam_pred")
    sets = [a for s in IRN_SETS for a in ("--set", s)]
    status = run(capsys, "run", "--config", str(cfg_file), *sets)
    assert [status[s] for s in STAGES[:2]] == ["up to date"] * 2
    assert all(status[s].startswith("redone") for s in STAGES[2:]), status
    assert outputs(wd, "classifier", "cam", "cam_pred") == kept
    for stage, section in (("aff_labels", "ir_labels"), ("train_aff", "train_irn"), ("random_walk", "irn_labels")):
        record = records.read(wd, stage)
        assert record.settings["method"] == "irn" and section in record.settings
    assert "method" not in records.read(wd, "make_cam").settings  # PSA's records are as before
    # IRN's outputs: confident labels without CRF score files, its network with the mean shift
    assert len(list(wd.aff_labels.glob("*.png"))) == 12 and not list(wd.crf.glob("*.npz"))
    state = artifacts.load_checkpoint(wd.affinity.final)
    assert "fc_edge1.0.weight" in state and float(state["mean_shift.running_mean"].abs().sum()) > 0
    assert len(list(wd.pseudo_labels.glob("*.png"))) == 12
    assert records.recorded_config(wd.root).method == "irn"
    # beside each label its boundary map and instance file; the instances scored on val
    assert len(list(wd.boundary.glob("*.png"))) == len(list(wd.instances.glob("*.json"))) == 12
    walk = json.loads(wd.metrics.read_text())["random_walk"]
    assert walk["instances"]["num_images"] == 4 and walk["instances"]["num_instances"] > 0
    assert 0 <= walk["instances"]["map"] <= 100
    # the API gives the stage's labels (given the image and CAMs at the run's working size)
    labeler = load_irn_labeler(wd.root)
    assert labeler.settings.exp_times == 2
    voc = VOCDataset(first["data"])
    name = voc.split("val")[0]
    work = WorkImage(voc.load_image(name), 256)
    keys, maps = artifacts.load_cam(wd.cam_file(name), work.native_size, voc.num_classes)
    made = labeler.labels(work.image, keys, work.maps(maps))
    stage_label = load_label_png(wd.png(wd.pseudo_labels, name))
    assert np.array_equal(work.label_to_native(made.semantic), stage_label)
    assert np.abs(artifacts.load_boundary(wd.png(wd.boundary, name)) - made.boundary).max() <= 0.5 / 255 + 1e-6
    # and so does the run's pseudo labeler, from the image and its class names
    pseudo = load_pseudo_labeler(wd.root)
    class_names = voc.label_names(name)
    assert np.array_equal(pseudo.pseudo_label(voc.load_image(name), class_names), stage_label)
    found = pseudo.instances(voc.load_image(name), class_names)
    masks, classes, scores = artifacts.load_instances(wd.instance_file(name), work.native_size, voc.num_classes)
    assert np.array_equal(found.masks, masks) and np.array_equal(found.classes, classes)
    assert np.allclose(found.scores, scores)
    # the report shows the boundary maps and instances beside the ground-truth instances
    page = (wd.report.root / "index.html").read_text()
    assert "class boundaries (IRN)" in page and "instances (IRN)" in page and "ground-truth instances" in page
    assert "IRN&#x27;s network (train-aff)" in page and "instance pseudo labels: mask mAP@0.5" in page
    # tune searches IRN's settings
    small = ["--set", "tune.split=val", "--set", "tune.bg_scores=[0.3]", "--set", "tune.fg_thresholds=[0.2,0.3]",
             "--set", "tune.bg_thresholds=[0.05]", "--set", "tune.sem_seg_bg_thresholds=[0.2,0.3]",
             "--set", "tune.irn_betas=[10]", "--set", "tune.exp_times=[1,2]"]
    capsys.readouterr()
    assert main(["tune", "--config", str(cfg_file), *sets, *small]) == 0
    out = capsys.readouterr().out
    assert "ir_labels (fg_threshold, bg_threshold)" in out and "irn_labels (sem_seg_bg_thres, beta, exp_times)" in out
    tuned = json.loads((wd.tune / "tune.json").read_text())
    assert tuned["method"] == "irn" and set(tuned["chosen"]) == {"make_cam", "ir_labels", "irn_labels"}
    assert tuned["current"]["irn_labels"] == {"sem_seg_bg_thres": 0.25, "beta": 10.0, "exp_times": 2}
    assert len(tuned["search"]["irn_walk"]) == 3 * 1 * 2  # thresholds (with the current 0.25) x betas x exp_times
    # its walk is the stage's: the current settings score on val what the stage's labels score
    from affinitynet.stages import tune

    cfg = records.recorded_config(wd.root)
    assert tune.score_settings(cfg, voc.split("val"), tuned["current"])["irn_walk"] == pytest.approx(walk["miou"])
    # and back: PSA's stages again, the classifier and CAMs still kept
    status = run(capsys, "run", "--config", str(cfg_file))
    assert [status[s] for s in STAGES[:2]] == ["up to date"] * 2
    assert all(status[s].startswith("redone") for s in STAGES[2:]), status
    assert len(list(wd.crf.glob("*.npz"))) == 12 and "method" not in records.read(wd, "train_aff").settings


def test_irn_fusion_keeps_the_stride4_cams_the_walk_starts_from(first, folder, capsys):
    """``make_cam.fusion: irn``: make-cam fuses as IRN's make_cam.py and keeps IRN's stride-4
    maps (at the working size) in the CAM files; IRN's walk, the pseudo labeler and
    export-labels start from them."""
    from affinitynet.algorithms.cam import strided_size
    from affinitynet.api import load_pseudo_labeler
    from affinitynet.inference import irn_cams_of_image

    wd, cfg_file = folder
    sets = [a for s in [*IRN_SETS, "make_cam.fusion=irn"] for a in ("--set", s)]
    status = run(capsys, "run", "--config", str(cfg_file), *sets)
    assert status["train_cam"] == "up to date" and status["make_cam"].startswith("redone: make_cam.fusion psa → irn")
    voc = VOCDataset(first["data"])
    name = voc.split("val")[0]
    work = WorkImage(voc.load_image(name), 256)
    keys, maps = artifacts.load_cam(wd.cam_file(name), work.native_size, voc.num_classes)
    strided = artifacts.load_strided_cam(wd.cam_file(name))
    assert strided.shape == (len(keys), *strided_size(work.size, 4))
    pseudo = load_pseudo_labeler(wd.root)
    again = irn_cams_of_image(pseudo.classifier, work, voc.image_labels(name), pseudo.cfg.make_cam)
    assert np.array_equal(again[0], keys)
    assert np.abs(again[1] - strided).max() < 1e-3 and np.abs(again[2] - maps).max() < 1e-3
    # the stage's label is the pseudo labeler's, which walks from the stride-4 maps (the stage
    # from their float16 copy in the CAM file)
    agree = np.mean(pseudo.pseudo_label(voc.load_image(name), voc.label_names(name))
                    == load_label_png(wd.png(wd.pseudo_labels, name)))
    assert agree > 0.999, agree
    # a PSA-fused folder has none
    assert artifacts.load_strided_cam(first["work"] / "cam" / f"{name}.npz") is None
