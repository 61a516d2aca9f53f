"""Instance ground truth and instance evaluation: the synthetic families' SegmentationObject maps,
the instance file format (COCO results with RLE) and ``affinitynet evaluate --instances``."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from affinitynet import artifacts
from affinitynet.algorithms.metrics import voc_instances
from affinitynet.cli import main
from affinitynet.data.images import save_label_png
from affinitynet.data.synthetic import generate
from affinitynet.data.voc import VOCDataset
from affinitynet.errors import InputError
from affinitynet.evaluation import evaluate_instances


@pytest.fixture(scope="module", params=["shapes", "clutter"])
def synth_root(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"synth_objects_{request.param}")
    generate(root, n_train=2, n_val=5, seed=4, family=request.param)
    return root


def _xml_objects(root, name) -> list[str]:
    tree = ET.parse(root / "Annotations" / f"{name}.xml")
    return [o.findtext("name") for o in tree.getroot().iter("object")]


def test_synthetic_object_maps_match_classes_and_annotations(synth_root):
    voc = VOCDataset(synth_root)
    for name in voc.split("train") + voc.split("val"):
        gt, objects = voc.load_gt(name), voc.load_objects(name)
        assert objects.shape == gt.shape and objects.dtype == np.uint8
        # every object pixel is a class pixel and the other way round
        assert np.array_equal(objects > 0, gt > 0)
        masks, labels = voc_instances(gt, objects)
        assert sorted(np.unique(objects[objects > 0]).tolist()) == list(range(1, len(masks) + 1))
        # one class under each object, the one the annotation lists for it, in drawing order
        assert [voc.classes[c] for c in labels] == _xml_objects(synth_root, name)
        for mask, label in zip(masks, labels):
            assert set(np.unique(gt[mask]).tolist()) == {label + 1}


def test_scaled_dataset_keeps_object_maps(tmp_path):
    generate(tmp_path, n_train=0, n_val=3, seed=2, scale=0.5)
    voc = VOCDataset(tmp_path)
    for name in voc.split("val"):
        gt, objects = voc.load_gt(name), voc.load_objects(name)
        assert objects.shape == gt.shape and np.array_equal(objects > 0, gt > 0)
        assert len(voc_instances(gt, objects)[0]) == len(_xml_objects(tmp_path, name))


def test_instance_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    masks = rng.random((3, 37, 53)) > 0.6
    masks[2] = False  # an empty mask survives too
    path = tmp_path / "a.json"
    artifacts.save_instances(path, "a", masks, np.array([4, 0, 2]), np.array([0.9, 0.25, 1e-3]))
    entries = json.loads(path.read_text())
    assert [e["category_id"] for e in entries] == [5, 1, 3] and entries[0]["image_id"] == "a"
    assert entries[0]["segmentation"]["size"] == [37, 53] and isinstance(entries[0]["segmentation"]["counts"], str)
    got_masks, labels, scores = artifacts.load_instances(path, (37, 53), num_classes=5)
    assert np.array_equal(got_masks, masks) and labels.tolist() == [4, 0, 2]
    assert scores.tolist() == [0.9, 0.25, 1e-3]
    artifacts.save_instances(tmp_path / "none.json", "none", np.zeros((0, 4, 6), bool), [], [])
    empty = artifacts.load_instances(tmp_path / "none.json", (4, 6), num_classes=5)
    assert empty[0].shape == (0, 4, 6) and empty[1].size == 0 and json.loads((tmp_path / "none.json").read_text()) == []


@pytest.mark.parametrize("content, message", [
    ("{", "not a valid JSON instance file"),
    ('{"a": 1}', "expected a JSON list"),
    ('[{"category_id": 1, "score": 1}]', "RLE 'segmentation'"),
    ('[{"category_id": 1, "score": 1, "segmentation": {"size": [5, 5], "counts": "x"}}]', r"has size \[5, 5\]"),
    ('[{"category_id": 9, "score": 1, "segmentation": {"size": [4, 6], "counts": "0"}}]', "category_id 9"),
    ('[{"category_id": 1, "score": 1, "segmentation": {"size": [4, 6], "counts": "0`h9"}}]', "Invalid RLE"),
])
def test_bad_instance_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        artifacts.load_instances(path, (4, 6), num_classes=5)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def _tiny_dataset(root) -> None:
    """Two 20x30 images, classes a and b: image 0 holds two a's, image 1 one a and one b."""
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("i0\ni1\n")
    for name, objects in (("i0", [(1, 0, 10), (1, 15, 25)]), ("i1", [(1, 2, 8), (2, 20, 28)])):
        gt, obj = np.zeros((20, 30), np.uint8), np.zeros((20, 30), np.uint8)
        for i, (c, x0, x1) in enumerate(objects):
            gt[5:15, x0:x1], obj[5:15, x0:x1] = c, i + 1
        gt[5:15, objects[0][2]] = obj[5:15, objects[0][2]] = 255  # a VOC border: no instance
        for folder, array in (("SegmentationClass", gt), ("SegmentationObject", obj)):
            save_label_png(root / folder / f"{name}.png", array)
        (root / "JPEGImages").mkdir(exist_ok=True)
        Image.new("RGB", (30, 20)).save(root / "JPEGImages" / f"{name}.jpg")


def _box(x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((20, 30), bool)
    mask[5:15, x0:x1] = True
    return mask


def test_evaluate_instances_by_hand(tmp_path, capsys):
    data, pred = tmp_path / "data", tmp_path / "pred"
    _tiny_dataset(data)
    # class a: 3 instances; detections by score: hit (0.9), miss (0.8, off every object),
    # hit (0.7), duplicate of the first (0.6) -> precision 1, 1/2, 2/3, 2/4 at recall 1/3, 1/3, 2/3, 2/3
    # -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9. Class b: its one instance found first -> AP 1.
    artifacts.save_instances(pred / "i0.json", "i0", np.stack([_box(0, 10), _box(11, 14), _box(1, 10)]),
                             [0, 0, 0], [0.9, 0.8, 0.6])
    # the 0.7 hit also covers the border column 8 next to its object: IoU 60/70
    artifacts.save_instances(pred / "i1.json", "i1", np.stack([_box(2, 9), _box(20, 28)]), [0, 1], [0.7, 0.95])
    scores = evaluate_instances(pred, VOCDataset(data), ["i0", "i1"])
    assert scores["per_class"]["a"] == pytest.approx(100 * 5 / 9) and scores["per_class"]["b"] == pytest.approx(100)
    assert scores["map"] == pytest.approx(100 * (5 / 9 + 1) / 2)
    assert scores["num_instances"] == 4 and scores["num_detections"] == 5 and scores["iou_threshold"] == 0.5
    # at IoU 0.9 the 0.7 detection misses: precision 1, 1/2, 1/3, 1/4 at recall 1/3 -> AP 1/3
    strict = evaluate_instances(pred, VOCDataset(data), ["i0", "i1"], iou_threshold=0.9)
    assert strict["per_class"]["a"] == pytest.approx(100 / 3) and strict["per_class"]["b"] == pytest.approx(100)

    out = tmp_path / "scores.json"
    main(["evaluate", "--instances", "--pred", str(pred), "--dataset", str(data), "--split", "val", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "AP@0.5" in printed and "mAP" in printed and "77.78" in printed
    assert json.loads(out.read_text())["map"] == pytest.approx(100 * 7 / 9)


def test_evaluate_instances_missing_inputs(tmp_path):
    data, pred = tmp_path / "data", tmp_path / "pred"
    _tiny_dataset(data)
    artifacts.save_instances(pred / "i0.json", "i0", np.zeros((0, 20, 30), bool), [], [])
    with pytest.raises(InputError, match="no instance file for 1 of 2 images"):
        evaluate_instances(pred, VOCDataset(data), ["i0", "i1"])
    (data / "SegmentationObject" / "i0.png").unlink()
    with pytest.raises(InputError, match="instance ground truth"):
        evaluate_instances(pred, VOCDataset(data), ["i0"])


def _truth_inputs(voc: VOCDataset, name: str, stride: int = 4):
    """IRN's per-image inputs made from the ground truth on the stride-4 grid: CAMs (blurred
    class masks), a boundary map (1 on cells next to another label) and the displacement of
    every object cell to its object's centroid."""
    from affinitynet.algorithms.cam import strided_cams, strided_size
    from affinitynet.algorithms.resize import resize_label
    from affinitynet.data.synthetic import blurred_truth_cams

    keys, maps = blurred_truth_cams(voc, name, blur=0.03)
    cams = strided_cams(maps, stride)
    grid = strided_size(maps.shape[1:], stride)
    label, objects = resize_label(voc.load_gt(name), grid), resize_label(voc.load_objects(name), grid)
    edge = np.zeros(label.shape, np.float32)
    for axis in (0, 1):
        step = np.diff(label.astype(np.int16), axis=axis) != 0
        lo = [slice(None)] * 2
        lo[axis] = slice(0, -1)
        hi = [slice(None)] * 2
        hi[axis] = slice(1, None)
        edge[tuple(lo)] += step
        edge[tuple(hi)] += step
    displacement = np.zeros((2,) + label.shape, np.float32)
    ys, xs = np.mgrid[:label.shape[0], :label.shape[1]]
    for i in np.unique(objects[(objects > 0) & (objects < 255)]):
        inside = objects == i
        displacement[0][inside] = ys[inside].mean() - ys[inside]
        displacement[1][inside] = xs[inside].mean() - xs[inside]
    return keys, cams, np.minimum(edge, 1), displacement


def test_irn_instances_from_truth_inputs_are_found(tmp_path):
    """The instance chain end to end: IRN's instance procedure on inputs made from the ground
    truth, written as instance files and scored against SegmentationObject, finds the objects."""
    import torch

    from affinitynet.algorithms.instances import instance_pseudo_labels

    root = tmp_path / "data"
    generate(root, n_train=0, n_val=4, seed=5)
    voc, pred = VOCDataset(root), tmp_path / "instances"
    for name in voc.split("val"):
        keys, cams, edge, displacement = _truth_inputs(voc, name)
        gt = voc.load_gt(name)
        found = instance_pseudo_labels(torch.from_numpy(cams), keys, torch.from_numpy(edge), displacement, gt.shape,
                                       beta=10, exp_times=8, radius=5, stride=4, bg_threshold=0.25,
                                       centroid_iterations=300, weak_threshold=2.5, min_area_fraction=0.01)
        d = found.detections
        artifacts.save_instances(pred / f"{name}.json", name, d.masks, d.classes, d.scores)
    scores = evaluate_instances(pred, voc, voc.split("val"))
    assert scores["num_instances"] >= 4 and scores["map"] >= 90.0, scores
