"""Confusion matrix / mIoU (algorithms.metrics) and the ``evaluate`` stage."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from affinitynet import artifacts, evaluation
from affinitynet.algorithms.metrics import confusion_matrix, scores_from_confusion
from affinitynet.config import EvaluateConfig
from affinitynet.data.images import save_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError
from affinitynet.stages import evaluate


def test_confusion_matrix_counts_and_ignore():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 7]])  # 7 sits on an ignored pixel: fine
    conf = confusion_matrix(pred, gt, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    with pytest.raises(ValueError):
        confusion_matrix(np.array([[3]]), np.array([[0]]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)


def test_scores_by_hand():
    conf = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])  # class 'b' absent from gt and pred
    s = scores_from_confusion(conf, ["background", "a", "b"])
    assert s["per_class"]["background"] == pytest.approx(75.0)
    assert s["per_class"]["a"] == pytest.approx(200 / 3)
    assert math.isnan(s["per_class"]["b"])
    assert s["miou"] == pytest.approx((75.0 + 200 / 3) / 2)  # NaN class left out
    assert s["pixel_accuracy"] == pytest.approx(500 / 6)
    assert s["precision"]["background"] == pytest.approx(100.0)
    assert s["precision"]["a"] == pytest.approx(200 / 3)
    assert s["recall"]["background"] == pytest.approx(75.0)
    assert s["recall"]["a"] == pytest.approx(100.0)
    assert math.isnan(s["recall"]["b"])


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_eval")
    generate(root, n_train=4, n_val=6, seed=3)
    return root


def test_gt_as_prediction_gives_100(synth_root, tmp_path, capsys):
    pred = tmp_path / "gt_pred"
    pred.mkdir()
    for p in (synth_root / "SegmentationClass").glob("val_*.png"):
        shutil.copy(p, pred / p.name)
    out = tmp_path / "scores.json"
    res = evaluate.run(EvaluateConfig(pred=str(pred), dataset=str(synth_root), split="val", out=str(out)))
    assert res["miou"] == pytest.approx(100.0) and res["pixel_accuracy"] == pytest.approx(100.0)
    assert res["num_images"] == 6
    saved = json.loads(out.read_text())
    assert saved["miou"] == pytest.approx(100.0)
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "background" in printed


def test_all_background_prediction(synth_root, tmp_path):
    ds = VOCDataset(synth_root)
    names = ds.split("val")
    pred = tmp_path / "bg"
    counts = np.zeros(ds.num_classes + 1, np.int64)
    for n in names:
        gt = ds.load_gt(n)
        save_label_png(pred / f"{n}.png", np.zeros_like(gt))
        counts += np.bincount(gt[gt != 255].ravel(), minlength=ds.num_classes + 1)
    # all-background: IoU(bg) = bg pixels / all pixels; every class present in the gt has IoU 0;
    # classes absent from the gt are 0/0 and left out of the mean.
    present = counts[1:] > 0
    expected = 100.0 * counts[0] / counts.sum() / (1 + present.sum())
    res = evaluation.evaluate_folder(pred, ds, names)
    assert res["miou"] == pytest.approx(expected)
    assert res["pixel_accuracy"] == pytest.approx(100.0 * counts[0] / counts.sum())
    for cname, is_present in zip(ds.classes, present):
        assert (res["per_class"][cname] == 0.0) if is_present else math.isnan(res["per_class"][cname])
    # the JSON writer turns NaN into null: strict JSON
    path = tmp_path / "x.json"
    artifacts.write_json(path, res)
    data = json.loads(path.read_text(), parse_constant=_reject)
    absent = [c for c, is_present in zip(ds.classes, present) if not is_present]
    assert all(data["per_class"][c] is None for c in absent)


def _reject(token: str):
    raise ValueError(f"not JSON: {token}")


def test_missing_prediction_and_bad_prediction(synth_root, tmp_path):
    ds = VOCDataset(synth_root)
    names = ds.split("val")
    pred = tmp_path / "partial"
    for n in names[:2]:
        save_label_png(pred / f"{n}.png", ds.load_gt(n))
    with pytest.raises(InputError) as err:
        evaluate.run(EvaluateConfig(pred=str(pred), dataset=str(synth_root), split="val"))
    msg = str(err.value)
    assert names[2] in msg and "4 of 6" in msg
    res = evaluation.evaluate_folder(pred, ds, names[:2])
    assert res["miou"] == pytest.approx(100.0)
    gt = ds.load_gt(names[0])
    save_label_png(pred / f"{names[0]}.png", gt[:-1])
    with pytest.raises(InputError, match=names[0]):
        evaluation.evaluate_folder(pred, ds, names[:1])
    save_label_png(pred / f"{names[0]}.png", np.full_like(gt, 99))
    with pytest.raises(InputError, match=names[0]):
        evaluation.evaluate_folder(pred, ds, names[:1])


def test_default_json_path(synth_root, tmp_path):
    pred = tmp_path / "labels_rw"
    pred.mkdir()
    for p in (synth_root / "SegmentationClass").glob("val_*.png"):
        shutil.copy(p, pred / p.name)
    res = evaluate.run(EvaluateConfig(pred=str(pred), dataset=str(synth_root), split="val"))
    assert (tmp_path / "eval_labels_rw_val.json").is_file() and res["json"].endswith("eval_labels_rw_val.json")
