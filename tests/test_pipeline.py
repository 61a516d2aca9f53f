"""End to end: the whole pipeline on a small synthetic dataset through the command line.

A reduced version of ``affinitynet demo`` (60 train / 20 val images, small crops, fewer epochs)
runs once per session (~1 min on 2 cores); the tests check the numbers are sane and the paper's
claim holds on it: the random walk beats the CAMs. The full demo is the slow test at the end.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _report_checks import ALL_CHARTS, assert_self_contained, browser, charts, inspect_page, page_tags
from affinitynet import artifacts
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.images import load_label_png
from affinitynet.data.synthetic import blurred_truth_cams
from affinitynet.data.voc import VOCDataset

# the CPU recipe (configs/demo.yaml), reduced: fewer images and epochs, smaller crops
REDUCED = {
    "train_cam": {"batch_size": 12, "epochs": 15, "crop": 192, "resize_long": [180, 260]},
    "make_cam": {"scales": [1.0, 0.5]},
    "train_aff": {"batch_size": 8, "epochs": 16, "crop": 192, "resize_long": [180, 260]},
    "train_seg": {"batch_size": 12, "epochs": 10, "crop": 192, "resize_long": [180, 260]},
}
DEMO_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def reduced_run(root, family: str, train: int = 60, extra: tuple[str, ...] = ()) -> dict:
    """``affinitynet run --config configs/demo.yaml --dataset DIR`` (reduced) on a VOC-layout
    folder of ``train`` train and 20 val images of a synthetic ``family``."""
    data, work = root / "data", root / "work"
    assert main(["synth", str(data), "--train", str(train), "--val", "20", "--seed", "1", "--family", family]) == 0
    sets = [f"--set={section}.{key}={json.dumps(value)}" for section, values in REDUCED.items()
            for key, value in values.items()]
    argv = ["run", "--config", str(DEMO_RECIPE), "--workdir", str(work), "--dataset", str(data), *sets, *extra]
    assert main(argv) == 0
    metrics = json.loads((work / "metrics.json").read_text())
    return {"data": data, "work": work, "metrics": metrics, "argv": argv}


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    return reduced_run(tmp_path_factory.mktemp("pipeline"), "shapes")


def all_background_miou(voc: VOCDataset, names: list[str]) -> float:
    """mIoU of predicting background everywhere, computed by hand from the ground truth."""
    bg = total = 0
    present = set()
    for n in names:
        gt = voc.load_gt(n)
        valid = gt != 255
        bg += int((gt[valid] == 0).sum())
        total += int(valid.sum())
        present |= set(np.unique(gt[valid]).tolist())
    # background IoU = bg / total; every object class present in the GT has IoU 0
    return 100.0 * (bg / total) / len(present)


def test_metrics_have_every_stage(pipeline_run):
    m = pipeline_run["metrics"]
    for key in ("make_cam", "random_walk", "segment"):
        assert 0 <= m[key]["miou"] <= 100
        assert set(m[key]["per_class"]) == {"background", "stripes", "dots", "checker", "rings", "waves"}
    assert 0 < m["make_cam"]["best_threshold"] < 1
    # the sweep includes the default background score 0.2: its best is at least the CAM's mIoU
    assert m["make_cam"]["miou"] - 1e-9 <= m["make_cam"]["best_miou"] <= 100 and max(m["make_cam"]["sweep"]["miou"]) <= 100
    assert set(m["seconds"]) == {"train_cam", "make_cam", "aff_labels", "train_aff", "random_walk",
                                 "train_seg", "segment"}
    assert m["eval_split"] == "val" and m["segment"]["split"] == "val"


def test_cam_is_far_above_all_background(pipeline_run):
    voc = VOCDataset(pipeline_run["data"])
    floor = all_background_miou(voc, voc.split("val"))
    assert pipeline_run["metrics"]["make_cam"]["miou"] > 2 * floor


def test_confident_labels_beat_cam_on_same_pixels(pipeline_run):
    a = pipeline_run["metrics"]["aff_labels"]
    assert a["confident_precision"] > 90
    assert 30 < a["confident_coverage"] < 100
    # the CRF-refined confident labels are right more often than the CAM prediction there
    assert a["confident_precision"] > a["cam_precision_on_confident"]


def test_random_walk_beats_cam(pipeline_run):
    m = pipeline_run["metrics"]
    assert m["random_walk"]["miou"] > m["make_cam"]["miou"] + 3, (m["make_cam"]["miou"], m["random_walk"]["miou"])


def test_segmentation_net_learns_from_pseudo_labels(pipeline_run):
    """Stage 5: the network trained on the pseudo labels alone (no image labels at test time)
    segments the held-out images far better than predicting background everywhere, and its
    training loss fell."""
    m, voc = pipeline_run["metrics"], VOCDataset(pipeline_run["data"])
    assert m["segment"]["miou"] > 2 * all_background_miou(voc, voc.split("val")), m["segment"]["miou"]
    log = artifacts.read_jsonl(WorkDir(pipeline_run["work"]).segmentation.log)
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert len(epochs) == 10 and epochs[-1]["train_loss"] < 0.7 * epochs[0]["train_loss"]
    # the loss on the val ground truth is reported every epoch and fell too
    assert all("val_loss" in r for r in epochs) and epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    for n in voc.split("val"):
        label = load_label_png(pipeline_run["work"] / "seg_pred" / f"{n}.png")
        assert label.shape == voc.load_image(n).shape[:2]
        assert set(np.unique(label).tolist()) <= set(range(voc.num_classes + 1))


def test_outputs_and_formats(pipeline_run):
    work, voc = pipeline_run["work"], VOCDataset(pipeline_run["data"])
    names = voc.split("train") + voc.split("val")
    for n in names:
        image = voc.load_image(n)
        keys, maps = artifacts.load_cam(work / "cam" / f"{n}.npz", image.shape[:2], voc.num_classes)
        assert keys.tolist() == np.flatnonzero(voc.image_labels(n)).tolist()
        assert maps.min() >= 0 and maps.max() <= 1.001
        for folder in ("cam_pred", "aff_labels", "pseudo_labels"):
            label = load_label_png(work / folder / f"{n}.png")
            assert label.shape == image.shape[:2]
            assert set(np.unique(label).tolist()) <= {0, 255, *(keys + 1).tolist()}
    log = artifacts.read_jsonl(WorkDir(work).classifier.log)
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert len(epochs) == 15 and all("val_loss" in r for r in epochs)
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert (work / "config.yaml").exists() and WorkDir(work).affinity.final.exists()
    pictures = sorted((work / "vis").glob("*.png"))
    assert len(pictures) == 6 and all(p.stat().st_size > 1000 for p in pictures)
    assert not list(work.rglob(artifacts.TMP_PREFIX + "*"))


def test_run_writes_the_report(pipeline_run):
    """`affinitynet run` ends with the HTML report (tests/test_report.py checks it in detail)."""
    m, index = pipeline_run["metrics"], WorkDir(pipeline_run["work"]).report.index
    assert charts(page_tags(index)) == ALL_CHARTS
    assert_self_contained(index)
    page = index.read_text()
    for key in ("make_cam", "random_walk", "segment"):
        assert f"<td>{m[key]['miou']:.1f}</td>" in page, key
    assert f"{m['aff_labels']['confident_precision']:.1f} % at coverage" in page
    assert page.count('<article class="card">') == 20  # every val image: fewer than the 24 shown by default


def test_report_of_the_run_in_a_browser(pipeline_run, tmp_path):
    """The run's report in headless Chromium: no console error, every picture and chart loaded.
    Screenshot: pipeline-report.png (copied to $AFFINITYNET_ARTIFACTS)."""
    with browser() as b:
        found = inspect_page(b, WorkDir(pipeline_run["work"]).report.index, "light", tmp_path / "pipeline-report.png")
    assert not found["errors"], found["errors"]
    assert all(i["complete"] and i["width"] > 0 for i in found["images"])
    assert {i["chart"] for i in found["images"] if i["chart"]} == ALL_CHARTS
    assert found["scrollWidth"] <= found["innerWidth"]


def test_every_json_the_pipeline_writes_is_strict(pipeline_run):
    """metrics.json, the logs and any other JSON in the work folder parse with a parser that
    refuses NaN / Infinity (undefined scores are null)."""
    work = pipeline_run["work"]
    files = sorted(work.rglob("*.json"))
    assert work / "metrics.json" in files
    for path in files:
        json.loads(path.read_text(), parse_constant=_not_json)
    logs = sorted(work.rglob("*.jsonl"))
    assert len(logs) == 3
    for path in logs:
        for line in path.read_text().splitlines():
            json.loads(line, parse_constant=_not_json)


def _not_json(token: str):
    raise ValueError(f"{token} is not JSON")


def test_evaluate_command_agrees(pipeline_run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--pred", str(pipeline_run["work"] / "pseudo_labels"),
            "--dataset", str(pipeline_run["data"]), "--split", "val", "--out", str(out)]
    assert main(argv) == 0
    assert "mIoU" in capsys.readouterr().out
    assert json.loads(out.read_text())["miou"] == pytest.approx(pipeline_run["metrics"]["random_walk"]["miou"])


def test_rerun_skips_finished_stages(pipeline_run):
    work = pipeline_run["work"]
    outputs = [*work.glob("*/*.png"), *work.glob("*/*.npz"), *work.glob("*/final.pth")]
    stamp = {p: os.stat(p).st_mtime_ns for p in outputs if p.parent.name != "vis"}
    assert main(pipeline_run["argv"]) == 0
    assert {p: os.stat(p).st_mtime_ns for p in stamp} == stamp
    again = json.loads((work / "metrics.json").read_text())
    assert again["random_walk"]["miou"] == pytest.approx(pipeline_run["metrics"]["random_walk"]["miou"])
    assert again["make_cam"]["miou"] == pytest.approx(pipeline_run["metrics"]["make_cam"]["miou"])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["shapes", "clutter"])
def test_full_demo(tmp_path, family):
    """The README's main job: ``affinitynet demo`` (3-4 minutes on 2 cores), on both families
    (clutter: 96-640 px images, so the working size rule matters)."""
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--family", family]) == 0
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert m["random_walk"]["miou"] >= m["make_cam"]["miou"] + 10
    assert m["segment"]["miou"] > m["make_cam"]["miou"] + 5
    if family == "clutter":
        assert m["dataset"]["long_side"]["min"] < 150 < 400 < m["dataset"]["long_side"]["max"]


@pytest.mark.slow
def test_full_demo_with_irn(tmp_path):
    """``affinitynet demo --set method=irn`` (README, "IRN"; about 10 minutes on 2 cores): IRN's
    labels, network and walk on the demo's CAMs (measured: CAM 55.0, IRN's labels 88.3, the
    segmentation network 84.1)."""
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--set", "method=irn"]) == 0
    m = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert m["random_walk"]["miou"] >= m["make_cam"]["miou"] + 20
    assert m["segment"]["miou"] > m["make_cam"]["miou"] + 15


def test_tune_finds_settings_at_least_as_good_on_held_out_images(pipeline_run, capsys):
    """`affinitynet tune` on 40 train images (chooses on 20, confirms on the other 20) writes a
    fragment `run` accepts; on the 20 val images it never saw, the tuned settings are at least as
    good as the current ones."""
    argv = ["tune", *pipeline_run["argv"][1:], "--set", "tune.split=train", "--set", "tune.images=40"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "make_cam.bg_score" in out and "random_walk (alpha, beta, logt)" in out
    work = pipeline_run["work"]
    result = json.loads((work / "tune" / "tune.json").read_text())
    assert result["images"] == 40
    # the fragment is a config layer: `run --config RUN --config tuned.yaml`
    from affinitynet import config as C
    from affinitynet.stages import tune

    cfg = C.load_config(C.RunConfig, [DEMO_RECIPE, work / "tune" / "tuned.yaml"],
                        values={"workdir": str(work), "dataset": {"root": str(pipeline_run["data"])}})
    chosen = result["chosen"]
    assert cfg.make_cam.bg_score == chosen["make_cam"]["bg_score"]
    assert (cfg.random_walk.alpha, cfg.random_walk.beta, cfg.random_walk.logt) == tuple(
        chosen["random_walk"][k] for k in ("alpha", "beta", "logt"))
    assert cfg.aff_labels.low_alpha == chosen["aff_labels"]["low_alpha"] and cfg.train_cam.backbone == "tiny"
    held_out = VOCDataset(pipeline_run["data"]).split("val")
    before = tune.score_settings(cfg, held_out, result["current"])
    after = tune.score_settings(cfg, held_out, chosen)
    for group in before:
        assert after[group] >= before[group], (group, before, after)


def test_readme_python_api_example_runs(pipeline_run, tmp_path, monkeypatch):
    """The README's Python API example, as written, on a run laid out as the demo's
    (work/demo with its data inside)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Python API"):]
    code = section[section.index("```python") + len("```python"):section.index("```", section.index("```python") + 9)]
    demo = tmp_path / "work" / "demo"
    demo.mkdir(parents=True)
    for entry in pipeline_run["work"].iterdir():
        (demo / entry.name).symlink_to(entry)
    (demo / "data").symlink_to(pipeline_run["data"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    label, pseudo, cams = namespace["label"], namespace["pseudo"], namespace["cams"]
    image_hw = Image.open(demo / "data" / "JPEGImages" / "val_00000.jpg").size[::-1]
    assert label.shape == pseudo.shape == image_hw and cams.shape == (1, *image_hw)
    # the API gives what the stages wrote for the same image
    assert (label == load_label_png(pipeline_run["work"] / "seg_pred" / "val_00000.png")).all()
    assert (tmp_path / "pseudo.png").is_file()


def test_imported_cams_of_another_quality_are_refined(pipeline_run, tmp_path, capsys):
    """import-cams with CAMs that spill over the objects (blurred ground truth), then `run`:
    no classifier, and the random walk still improves them."""
    voc = VOCDataset(pipeline_run["data"])
    source = tmp_path / "cams"
    source.mkdir()
    for name in voc.split("train") + voc.split("val"):
        keys, maps = blurred_truth_cams(voc, name)
        np.savez(source / f"{name}.npz", keys=keys, maps=maps)
    argv = list(pipeline_run["argv"][1:])
    argv[argv.index("--workdir") + 1] = str(tmp_path / "work")
    assert main(["import-cams", *argv, "--from", str(source), "--format", "npz"]) == 0
    assert main(["run", *argv, "--set", "train_seg.epochs=1"]) == 0
    m = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert not (tmp_path / "work" / "classifier" / "final.pth").exists()
    assert m["random_walk"]["miou"] > m["make_cam"]["miou"] + 3, (m["make_cam"]["miou"], m["random_walk"]["miou"])
