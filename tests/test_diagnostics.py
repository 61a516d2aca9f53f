"""Diagnostics of bad labels: the measurements on hand-made outputs, and the warnings on a
deliberately mismatched run (small images used at their native size with a classifier trained
at larger sizes, a background score, CRF alpha and walk alpha set to fail)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _helpers import single_torch_thread, tiny_sets, write_config
from PIL import Image

from affinitynet import artifacts, diagnostics
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.images import load_label_png, save_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset


def test_cam_coverage_per_image_and_class(tmp_path):
    generate(tmp_path / "data", 2, 0, seed=1)
    voc = VOCDataset(tmp_path / "data")
    wd = WorkDir(tmp_path / "work")
    maps = np.zeros((2, 10, 20), np.float32)
    maps[0, :, :5] = 0.9  # class 0: a quarter of the image
    maps[1, :, :10] = 0.5  # class 3: half of it, overlapping
    artifacts.save_cam(wd.cam_file("a"), np.array([0, 3]), maps, voc.num_classes)
    artifacts.save_cam(wd.cam_file("b"), np.array([1]), np.full((1, 10, 20), 0.95, np.float32), voc.num_classes)
    d = diagnostics.cam_coverage(wd.cam_file, voc, ["a", "b"], bg_score=0.2)
    assert d["per_image"] == {"a": pytest.approx(50.0), "b": pytest.approx(100.0)}
    assert d["coverage"]["mean"] == pytest.approx(75.0) and d["images_mostly_covered"] == pytest.approx(50.0)
    assert d["coverage_per_class"][voc.classes[0]] == pytest.approx(25.0)
    assert d["coverage_per_class"][voc.classes[3]] == pytest.approx(50.0)
    assert d["coverage_per_class"][voc.classes[2]] is None  # in no image
    warnings = diagnostics.cam_warnings(d, "", None, 0.2)
    assert len(warnings) == 1 and "make_cam.bg_score" in warnings[0]


def test_confident_regions_and_walk_growth(tmp_path):
    classes = ["cat", "dog"]
    conf, before, after = tmp_path / "conf", tmp_path / "before", tmp_path / "after"
    label = np.full((10, 10), 255, np.uint8)
    label[:, :1] = 0  # 10 % confident background
    label[:, 5:] = 2  # 50 % dog
    save_label_png(conf / "a.png", label)
    d = diagnostics.confident_regions(conf, ["a"], classes)
    assert d["background"]["mean"] == pytest.approx(10.0) and d["objects"]["mean"] == pytest.approx(50.0)
    assert d["unsure"]["mean"] == pytest.approx(40.0) and d["objects_per_class"] == {"cat": None, "dog": 50.0}
    assert not diagnostics.confident_warnings(d)
    label[:, :1] = 255  # no background at all
    save_label_png(conf / "a.png", label)
    assert "high_alpha" in diagnostics.confident_warnings(diagnostics.confident_regions(conf, ["a"], classes))[0]

    cam = np.zeros((10, 10), np.uint8)
    cam[2:5, 2:5] = 1  # the CAM found 9 % cat
    save_label_png(before / "a.png", cam)
    save_label_png(after / "a.png", np.ones((10, 10), np.uint8))  # the walk: all cat
    g = diagnostics.walk_growth(after, before, ["a"], classes)
    assert g["coverage_before"]["mean"] == pytest.approx(9.0) and g["coverage_after"]["mean"] == pytest.approx(100.0)
    assert g["images_flooded"] == pytest.approx(100.0) and g["growth_per_class"]["cat"] == pytest.approx(91.0)
    assert "random_walk.alpha" in diagnostics.walk_warnings(g)[0]


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """A tiny synthetic set shrunk to ~90 px images; the classifier trains at 200-320 px crops
    and inference uses the images' native size (dataset.long_side 0)."""
    root = tmp_path_factory.mktemp("mismatch")
    data = root / "data"
    generate(data, 6, 4, seed=4)
    for path in (data / "JPEGImages").glob("*.jpg"):
        image = Image.open(path)
        size = (image.width * 2 // 5, image.height * 2 // 5)
        image.resize(size, Image.BICUBIC).save(path, quality=95)
        gt = data / "SegmentationClass" / f"{path.stem}.png"
        save_label_png(gt, np.asarray(Image.fromarray(load_label_png(gt)).resize(size, Image.NEAREST)))
    cfg_file = root / "config.yaml"
    sets = tiny_sets(cam_epochs=1, crf_iterations=2, logt=2) + [
        "train_cam.crop=224", "train_cam.resize_long=[200,320]", "dataset.long_side=0"]
    write_config(cfg_file, root / "work", data, sets)
    with single_torch_thread():
        assert main(["train-cam", "--config", str(cfg_file)]) == 0
    return root, cfg_file


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("affinitynet: warning:")]


def test_warnings_fire_on_a_mismatched_run(mismatched, capsys):
    root, cfg_file = mismatched
    work = WorkDir(root / "work")
    # the scale mismatch, and CAMs that cover everything with a background score near 0
    with single_torch_thread():
        assert main(["make-cam", "--config", str(cfg_file), "--set", "make_cam.bg_score=0.001",
                     "--set", "make_cam.sweep=true"]) == 0
    lines = _warnings(capsys)
    assert any("used at their native size: set dataset.long_side=260" in line for line in lines), lines
    assert any("CAMs cover most of the image" in line and "background-threshold warning" in line for line in lines), lines
    assert any("best CAM background threshold" in line and "`affinitynet tune`" in line
               and "set make_cam.bg_score=" in line for line in lines), lines
    # confident background nearly absent: the high-alpha CRF keeps no background
    assert main(["make-aff-labels", "--config", str(cfg_file), "--set", "aff_labels.high_alpha=1000",
                 "--set", "aff_labels.low_alpha=1000"]) == 0
    assert any("confident background is nearly absent" in line for line in _warnings(capsys))
    # the walk floods: no background power at all, on an untrained AffinityNet
    from affinitynet.models import build_affinity_net

    torch.manual_seed(0)
    artifacts.save_checkpoint(work.affinity.final, build_affinity_net("tiny").state_dict())
    for folder in (work.cam, work.cam_pred):  # CAM predictions of a usual background score
        for path in folder.iterdir():
            path.unlink()
    with single_torch_thread():
        assert main(["make-cam", "--config", str(cfg_file), "--set", "make_cam.bg_score=0.5"]) == 0
        assert main(["random-walk", "--config", str(cfg_file), "--set", "random_walk.alpha=1000"]) == 0
    assert any("grows a class over most of the image" in line for line in _warnings(capsys))


def test_diagnostics_are_in_the_results_and_quiet_when_all_is_well(mismatched, capsys, tmp_path):
    root, cfg_file = mismatched
    work = tmp_path / "work"
    # the same classifier at the working size it trained at, the paper's settings otherwise
    (work / "classifier").mkdir(parents=True)
    (work / "classifier" / "final.pth").write_bytes((root / "work" / "classifier" / "final.pth").read_bytes())
    from affinitynet import config as C
    from affinitynet.stages import make_cam

    cfg = C.load_config(C.RunConfig, cfg_file, ["dataset.long_side=260", f"workdir={work}"])
    with single_torch_thread():
        result = make_cam.run(cfg)
    assert not any("native size" in w for w in result["warnings"])
    d = result["diagnostics"]
    assert set(d["per_image"]) == set(VOCDataset(cfg.dataset.root).split("train") + VOCDataset(cfg.dataset.root).split("val"))
    assert 0 <= d["coverage"]["mean"] <= 100
    json.dumps(result, default=float)  # the results go into metrics.json


COVERED = {"coverage": {"mean": 90.0}, "images_mostly_covered": 80.0}  # CAMs that do not localise
LOCALISED = {"coverage": {"mean": 20.0}, "images_mostly_covered": 0.0}
NO_BACKGROUND = {"background": {"mean": 1.0}, "images_without_background": 90.0}
BACKGROUND = {"background": {"mean": 40.0}, "images_without_background": 0.0}


def test_warnings_refer_to_each_other_only_when_the_other_fires():
    """A warning names another as a cause only when that one fires too (they come from one
    place, with one predicate each)."""
    with_cams = diagnostics.confident_warnings(NO_BACKGROUND, COVERED)[0]
    without = diagnostics.confident_warnings(NO_BACKGROUND, LOCALISED)[0]
    assert "see the CAM coverage warning" in with_cams and "CAM" not in without
    assert diagnostics.cam_warnings(COVERED, "", None, 0.2)  # the CAM coverage warning does fire there
    assert not diagnostics.cam_warnings(LOCALISED, "", None, 0.2)
    flooded = {"images_flooded": 50.0}
    assert "confident-background warning" in diagnostics.walk_warnings(flooded, NO_BACKGROUND)[0]
    assert "confident" not in diagnostics.walk_warnings(flooded, BACKGROUND)[0]
    assert diagnostics.confident_warnings(NO_BACKGROUND) and not diagnostics.confident_warnings(BACKGROUND)


def test_a_gap_to_the_best_threshold_is_a_warning_that_names_tune():
    """The issue's case: best threshold 0.50 (50.4 mIoU) against the 0.20 used (36.2)."""
    sweep = {"best_threshold": 0.5, "best_miou": 50.4, "miou_at_bg_score": 36.2}
    warnings = diagnostics.cam_warnings(LOCALISED, "", sweep, 0.2)
    assert len(warnings) == 1 and "`affinitynet tune`" in warnings[0] and "make_cam.bg_score=0.50" in warnings[0]
    assert "0.50 (50.4 mIoU) against the 0.20 used (36.2)" in warnings[0]
    close = {"best_threshold": 0.25, "best_miou": 37.0, "miou_at_bg_score": 36.2}  # under THRESHOLD_GAP
    assert diagnostics.cam_warnings(LOCALISED, "", close, 0.2) == []
    both = diagnostics.cam_warnings(COVERED, "", sweep, 0.2)
    assert len(both) == 2 and "see the background-threshold warning" in both[1]
