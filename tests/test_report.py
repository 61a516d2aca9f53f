"""``affinitynet report``: the HTML page of a work folder, complete or partial, and the same page
in a real browser (headless Chromium).

The work folders here are made by hand in a second: a synthetic dataset of 2 train + 8 val
images, and the files of each stage written with the formats of ``affinitynet.artifacts``
(CAMs from blurred ground truth, label maps from shifted ground truth, short training logs, a
metrics.json). ``tests/test_pipeline.py`` checks the report of a real run.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from _report_checks import ALL_CHARTS, assert_self_contained, browser, charts, inspect_page, page_tags
from affinitynet import artifacts, config as C, report
from affinitynet.artifacts import WorkDir
from affinitynet.cli import main
from affinitynet.data.images import load_label_png, load_rgb, save_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset

# a warning with markup in it: the page must show it as text
WARNING = 'the walk flooded 3 of 8 images <script>alert("x")</script> & more'
EVERYTHING = ("config", "cam", "labels", "seg", "logs", "metrics")
SEG_IMAGES = 4  # the first val images get a segmentation-net label (a `segment` on part of them)


def build_workdir(work: Path, parts: tuple[str, ...] = EVERYTHING) -> WorkDir:
    """A work folder with its dataset inside (``work/data``, as the demo's) and the given parts:
    config (config.yaml), cam (cam/*.npz), labels (cam_pred, aff_labels, pseudo_labels), seg
    (seg_pred for the first SEG_IMAGES val images), logs (the three training logs; classifier and
    affinity finished) and metrics (metrics.json of every stage, one warning)."""
    wd = WorkDir(work)
    generate(work / "data", 2, 8, seed=0)
    voc = VOCDataset(work / "data")
    names = voc.split("val")
    if "config" in parts:
        cfg = C.load_config(C.RunConfig, "demo", values={"workdir": str(work), "dataset": {"root": str(work / "data")}})
        artifacts.write_bytes(wd.config, C.dump_yaml(cfg).encode())
    for i, name in enumerate(names):
        gt = voc.load_gt(name)
        keys = np.flatnonzero(voc.image_labels(name))
        if "cam" in parts:
            maps = np.stack([ndimage.gaussian_filter((gt == k + 1).astype(np.float32), 6) for k in keys])
            artifacts.save_cam(wd.cam_file(name), keys, maps / maps.max(axis=(1, 2), keepdims=True), voc.num_classes)
        clean = np.where(gt == 255, 0, gt).astype(np.uint8)
        # val_00000 exact, each later image shifted further: a known best and worst
        pseudo = np.roll(clean, 6 * i, axis=1)
        if "labels" in parts:
            objects = clean > 0
            unsure = ndimage.binary_dilation(objects, iterations=5) & ~ndimage.binary_erosion(objects, iterations=5)
            save_label_png(wd.png(wd.aff_labels, name), np.where(unsure, 255, clean).astype(np.uint8))
            save_label_png(wd.png(wd.cam_pred, name), np.roll(clean, 3, axis=0))
            save_label_png(wd.png(wd.pseudo_labels, name), pseudo)
        if "seg" in parts and i < SEG_IMAGES:
            save_label_png(wd.png(wd.seg_pred, name), np.roll(clean, 2, axis=1))
    if "logs" in parts:
        for folder, val in ((wd.classifier, True), (wd.affinity, False), (wd.segmentation, True)):
            step = 0
            for epoch in range(3):
                for _ in range(4):
                    step += 1
                    artifacts.append_jsonl(folder.log, {"kind": "step", "epoch": epoch, "step": step,
                                                        "loss": 1.0 / step, "lr": 0.01 * (1 - step / 13)})
                record = {"kind": "epoch", "epoch": epoch, "step": step, "train_loss": 1.0 / step, "seconds": 2.0}
                artifacts.append_jsonl(folder.log, {**record, "val_loss": 1.2 / step} if val else record)
        for folder in (wd.classifier, wd.affinity):
            artifacts.write_bytes(folder.final, b"weights")
    if "metrics" in parts:
        artifacts.write_json(wd.metrics, _metrics(voc))
    return wd


def _metrics(voc: VOCDataset) -> dict:
    classes = ["background", *voc.classes]

    def scores(base: float) -> dict:
        per_class = {c: base + 2 * i for i, c in enumerate(classes)}
        per_class[classes[-1]] = float("nan")  # a class that occurs nowhere: null in JSON
        return {"miou": base + 3, "pixel_accuracy": base + 20, "per_class": per_class, "num_images": 8,
                "diagnostics": {"coverage": {"mean": 30.5, "median": 29.0}, "per_image": {"val_00000": 1.0}},
                "warnings": []}

    thresholds = [round(0.05 * i, 2) for i in range(1, 20)]
    return {
        "make_cam": {**scores(50.0), "sweep": {"thresholds": thresholds, "miou": [60 - 100 * (t - 0.3) ** 2 for t in thresholds]},
                "best_threshold": 0.3, "best_miou": 60.0},
        "aff_labels": {"confident_precision": 99.5, "confident_coverage": 71.0, "cam_precision_on_confident": 97.5,
                       "diagnostics": {"unsure": {"mean": 27.0}}, "warnings": []},
        "random_walk": {**scores(75.0), "warnings": [WARNING]},
        "segment": {**scores(72.0), "split": "val"},
        "seconds": {"train_cam": 34.0, "make_cam": 11.0, "aff_labels": 19.3, "train_aff": 116.0, "random_walk": 7.1,
                    "train_seg": 37.9, "segment": 1.0},
        "eval_split": "val",
        "dataset": {"images": 10, "measured": 10, "long_side": {"min": 214, "p10": 220, "median": 280, "p90": 300,
                                                                  "max": 307}, "working_long_side": 256},
    }


def _cards(page: str) -> dict[str, str]:
    """Gallery entries by image name -> their HTML."""
    return {re.search(r"<h3>(\S+) ", c).group(1): c for c in page.split('<article class="card">')[1:]}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> WorkDir:
    """A complete hand-made work folder and its report (6 gallery images)."""
    wd = build_workdir(tmp_path_factory.mktemp("report") / "work")
    assert main(["report", str(wd.root), "--images", "6"]) == 0
    return wd


def test_complete_folder_shows_every_part(full):
    index = full.report.index
    page, tags = index.read_text(), page_tags(index)
    assert {a.get("id") for _, a in tags} >= {"warnings", "scores", "training", "sweep", "gallery", "run"}
    assert charts(tags) == ALL_CHARTS
    referenced = assert_self_contained(index)
    assert all(p.suffix == ".png" for p in referenced)
    # each chart for a light and a dark page
    dark = [a["srcset"] for t, a in tags if t == "source"]
    assert len(dark) == len(ALL_CHARTS) and all(s.endswith("-dark.png") for s in dark)
    # the warning is shown, as text
    assert "1 warning of this run" in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert "<script" not in page
    # scores: every stage, a class nobody predicted as "–", the CRF's precision and coverage
    for text in ("CAM", "confident labels (CRF)", "random walk", "segmentation net", "precision 99.5 % at coverage 71.0 %",
                 "best background threshold 0.30", "the run used 0.20, the best is 0.30"):
        assert text in page, text
    assert "<td>–</td>" in page
    # legend: background, every class, ignore
    voc = VOCDataset(full.root / "data")
    assert page.count('class="swatch"') == voc.num_classes + 2 and "ignore / unsure" in page
    # stage times and the config
    assert "116 s" in page and "3 min 46 s" in page and "bg_score: 0.2" in page and "total" in page


def test_gallery_best_worst_random_and_full_size_links(full):
    page = full.report.index.read_text()
    cards = _cards(page)
    assert len(cards) == 6
    why = {name: re.search(r'class="tag (\w+)"', html).group(1) for name, html in cards.items()}
    assert sorted(why.values()) == ["best", "best", "random", "random", "worst", "worst"]
    # shifted further = worse: val_00000 is exact, val_00007 the most shifted
    assert why["val_00000"] == "best" and why["val_00001"] == "best"
    assert why["val_00007"] == "worst" and why["val_00006"] == "worst"
    assert "random walk IoU 100.0" in cards["val_00000"]
    for name, html in cards.items():
        has_seg = int(name.split("_")[1]) < SEG_IMAGES
        assert ("segmentation net</figcaption>" in html) == has_seg, name
        for caption in ("image", "CAM prediction", "confident (CRF)", "random walk", "ground truth"):
            assert f">{caption}</figcaption>" in html, (name, caption)
        assert html.count(">CAM ") - html.count(">CAM prediction") >= 1  # a heat map per present class
    # each picture links to its full-size file: the image at its size, label maps exactly
    root = full.report.root
    links = dict(re.findall(r'<a href="([^"]+)"><img src="([^"]+)"', cards["val_00001"]))
    assert len(links) >= 7
    image = next(root / href for href in links if href.endswith("-image.png"))
    assert load_rgb(image).shape == load_rgb(full.root / "data" / "JPEGImages" / "val_00001.jpg").shape
    pseudo = next(root / href for href in links if href.endswith("-random_walk.png"))
    assert np.array_equal(load_label_png(pseudo), load_label_png(full.pseudo_labels / "val_00001.png"))
    for href, thumb in links.items():
        assert load_rgb(root / thumb).shape[0] == report.THUMB_HEIGHT
        assert load_rgb(root / href).shape[0] > report.THUMB_HEIGHT


def test_same_folder_same_page(full):
    before = full.report.index.read_bytes()
    report.write_report(full.root, images=6)
    assert full.report.index.read_bytes() == before


def test_choose_gallery():
    names = [f"im{i}" for i in range(10)]
    scores = {n: float(i) for i, n in enumerate(names) if i != 4}  # im4 has no score
    chosen = report.choose_gallery(names, scores, 7, seed=3)
    assert chosen[:4] == [("im9", "best"), ("im8", "best"), ("im0", "worst"), ("im1", "worst")]
    assert [w for _, w in chosen[4:]] == ["random"] * 3 and len({n for n, _ in chosen}) == 7
    assert chosen == report.choose_gallery(names, scores, 7, seed=3)
    # without scores: random ones in the split's order; more than there are: all of them
    plain = report.choose_gallery(names, {}, 4)
    assert [n for n, _ in plain] == sorted((n for n, _ in plain), key=names.index) and {w for _, w in plain} == {"random"}
    assert sorted(n for n, _ in report.choose_gallery(names, scores, 50)) == sorted(names)
    assert report.choose_gallery(names, scores, 0) == []
    # best and worst never overlap when few images are scored
    few = report.choose_gallery(names, {"im2": 5.0, "im5": 1.0, "im7": 3.0}, 9)
    assert few[:2] == [("im2", "best"), ("im5", "worst")]


def test_folder_without_metrics_yet(tmp_path, capsys):
    """Training has just begun: the config and part of the classifier's log."""
    wd = build_workdir(tmp_path / "work", ("config",))
    artifacts.append_jsonl(wd.classifier.log, {"kind": "step", "epoch": 0, "step": 1, "loss": 0.7, "lr": 0.02})
    assert main(["report", str(wd.root)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {wd.report.index}"
    page = wd.report.index.read_text()
    assert "No metrics.json yet" in page and "not finished (no final.pth yet)" in page
    assert charts(page_tags(wd.report.index)) == {"training-classifier"}
    assert page.count("No training log yet") == 2
    assert_self_contained(wd.report.index)
    # the gallery: 8 val images (fewer than 24), random ones, images and ground truth only
    cards = _cards(page)
    assert len(cards) == 8 and all('class="tag random"' in c and c.count("<figure>") == 2 for c in cards.values())


def test_partial_folder(tmp_path):
    """CAMs and their scores only (an interrupted run after make-cam; no sweep in it)."""
    wd = build_workdir(tmp_path / "work", ("config", "cam"))
    metrics = _metrics(VOCDataset(wd.root / "data"))
    artifacts.write_json(wd.metrics, {"make_cam": {k: v for k, v in metrics["make_cam"].items() if k != "sweep"},
                                      "seconds": {"train_cam": 30.0, "make_cam": 10.0}})
    index = report.write_report(wd.root, images=3)
    page, tags = index.read_text(), page_tags(index)
    assert charts(tags) == {"class-iou"} and "No warnings" in page
    assert "random walk" not in page.split('id="gallery"')[0] and 'id="sweep"' not in page
    cards = _cards(page)
    assert len(cards) == 3 and all(">CAM prediction<" not in c and ">CAM " in c for c in cards.values())
    assert_self_contained(index)


def test_empty_folder_and_copied_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = report.write_report(empty).read_text()
    assert "No metrics.json yet" in page and "No config.yaml" in page and "No gallery" in page
    # a work folder moved elsewhere finds the dataset inside it, not at the old place
    wd = build_workdir(tmp_path / "before", ("config", "labels"))
    moved = Path(shutil.move(wd.root, tmp_path / "after"))
    page = report.write_report(moved, images=2).read_text()
    header = page.split("</header>")[0]
    assert len(_cards(page)) == 2 and str(moved / "data") in header and "before" not in header


def test_fewer_images_remove_the_old_pictures_and_a_bad_file_is_named(tmp_path):
    wd = build_workdir(tmp_path / "work", ("config", "labels"))
    report.write_report(wd.root, images=6)
    many = len(list(wd.report.gallery.glob("*.png")))
    report.write_report(wd.root, images=2)
    assert len(list(wd.report.gallery.glob("*.png"))) < many
    assert_self_contained(wd.report.index)
    # an unreadable label file: the page names it and shows the rest
    bad = wd.png(wd.aff_labels, "val_00000")
    bad.write_bytes(b"not a png")
    page = report.write_report(wd.root, images=8).read_text()
    assert f"{bad}: not an image file" in _cards(page)["val_00000"]
    assert_self_contained(wd.report.index)


def test_command_line_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert f"{tmp_path / 'absent'}: work folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path), "--images", "-1"])


def test_report_in_a_browser(full, tmp_path):
    """Headless Chromium at laptop size, light and dark: no console error or failed request,
    every picture loaded, every chart shown in the scheme's version, nothing wider than the
    screen. Screenshots: report-light.png / report-dark.png (copied to $AFFINITYNET_ARTIFACTS)."""
    with browser() as b:
        seen = {scheme: inspect_page(b, full.report.index, scheme, tmp_path / f"report-{scheme}.png")
                for scheme in ("light", "dark")}
    for scheme, found in seen.items():
        assert not found["errors"], (scheme, found["errors"])
        images = found["images"]
        assert len(images) > 40 and all(i["complete"] and i["width"] > 0 for i in images), scheme
        shown = {i["chart"]: i["src"] for i in images if i["chart"]}
        assert set(shown) == ALL_CHARTS
        assert all(src.endswith("-dark.png") == (scheme == "dark") for src in shown.values()), shown
        assert found["scrollWidth"] <= found["innerWidth"], scheme
        assert (tmp_path / f"report-{scheme}.png").stat().st_size > 50_000
    assert seen["light"]["background"] != seen["dark"]["background"]


def test_instance_pictures_number_instances_by_score_the_best_on_top():
    from affinitynet import visualize

    masks = np.zeros((3, 6, 8), bool)
    masks[0, :, :4] = True  # score 0.2
    masks[1, :, 3:] = True  # score 0.9: overlaps the first at column 3 and wins there
    masks[2, 0, 0] = True   # score 0.5: inside the first, on top of it
    ids = visualize.instance_ids(masks, np.array([0.2, 0.9, 0.5]))
    assert ids.dtype == np.uint8 and ids[0, 0] == 2 and ids[1, 0] == 3 and (ids[:, 3:] == 1).all()
    assert (visualize.instance_ids(np.zeros((0, 6, 8), bool), np.zeros(0)) == 0).all()
    # the boundary map drawn at the image size: stride-4 cells cropped to the working size, then scaled
    boundary = np.zeros((3, 4), np.float32)
    boundary[:, 1] = 1.0  # cells of column 1: pixels 4-7 of the working size
    picture = visualize.boundary_picture(boundary, (10, 14), (20, 28))
    assert picture.shape == (20, 28, 3) and picture[..., 0].max() == 255
    assert picture[:, 10:14, 0].min() == 255 and picture[:, :6, 0].max() == 0 and picture[:, 18:, 0].max() == 0
