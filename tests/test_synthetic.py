"""The synthetic dataset generator (affinitynet.data.synthetic, stage ``synth``)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from affinitynet.config import SynthConfig
from affinitynet.data.synthetic import class_names, make_sample
from affinitynet.data.voc import VOCDataset
from affinitynet.stages import synth


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    summary = synth.run(SynthConfig(out=str(out), train=12, val=5, seed=7))
    return out, summary


def _digest(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_summary(dataset):
    root, summary = dataset
    ds = VOCDataset(root)
    assert ds.classes == class_names(5) and len(set(ds.classes)) == 5
    assert summary["train"] == 12 and summary["val"] == 5
    assert ds.split("train_aug") == ds.split("train") and len(ds.split("train")) == 12
    assert len(ds.split("val")) == 5 and not set(ds.split("val")) & set(ds.split("train"))


def test_sizes_objects_and_labels_match_gt(dataset):
    root, _ = dataset
    ds = VOCDataset(root)
    shapes = set()
    for name in ds.split("train") + ds.split("val"):
        img, gt = ds.load_image(name), ds.load_gt(name)
        assert img.shape[:2] == gt.shape
        h, w = gt.shape
        shapes.add((h, w))
        assert 200 <= h <= 320 and 200 <= w <= 320 and h % 8 and w % 8
        present = sorted(set(np.unique(gt).tolist()) - {0})
        assert present and all(v <= ds.num_classes for v in present)
        # image labels (from the XML) are exactly the classes in the ground truth
        assert (np.flatnonzero(ds.image_labels(name)) + 1).tolist() == present
    assert len(shapes) > 5


@pytest.mark.parametrize("index", range(12))
def test_objects_and_cue_share(index):
    s = make_sample(seed=1, split="train", index=index)
    assert 1 <= len(s.object_classes) <= 3
    union = np.zeros(s.label.shape, bool)
    for c, mask, cue in zip(s.object_classes, s.object_masks, s.cue_masks):
        assert not (union & mask).any()  # non-overlapping objects
        union |= mask
        assert (s.label[mask] == c + 1).all()
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) + 1 >= 64  # large: many stride-8 cells
        assert not (cue & ~mask).any()
        share = cue.sum() / mask.sum()
        assert 0.30 <= share <= 0.60
    assert ((s.label > 0) == union).all()


def test_body_is_class_agnostic_and_differs_from_background():
    body_means, bg_means = {}, []
    for i in range(30):
        s = make_sample(seed=2, split="train", index=i)
        img = s.image.astype(np.float64)
        bg_means.append(img[s.label == 0].mean())
        for c, mask, cue in zip(s.object_classes, s.object_masks, s.cue_masks):
            body_means.setdefault(c, []).append(img[mask & ~cue].mean())
    per_class = [np.mean(v) for v in body_means.values()]
    assert max(per_class) - min(per_class) < 15  # no class evidence in the body
    assert min(per_class) - np.mean(bg_means) > 80  # strong object boundary


def test_deterministic_byte_identical(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    synth.run(SynthConfig(out=str(a), train=3, val=2, seed=11))
    synth.run(SynthConfig(out=str(b), train=3, val=2, seed=11))
    da, db = _digest(a), _digest(b)
    assert da == db and len(da) > 15
    c = tmp_path / "c"
    synth.run(SynthConfig(out=str(c), train=3, val=2, seed=12))
    assert _digest(c)["JPEGImages/train_00000.jpg"] != da["JPEGImages/train_00000.jpg"]
