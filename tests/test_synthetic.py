"""The synthetic dataset generator (affinitynet.data.synthetic, stage ``synth``)."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
import pytest

from affinitynet.config import SynthConfig
from affinitynet.data.synthetic import class_names, make_sample
from affinitynet.data.synthetic_clutter import clutter_class_names, clutter_cue_color, make_clutter_sample
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


# -- the second family: "clutter" --------------------------------------------------------------
CLUTTER = [make_clutter_sample(seed=3, split="train", index=i) for i in range(40)]


def test_clutter_sizes_are_small_and_large_and_not_square():
    long_sides = [max(s.label.shape) for s in CLUTTER]
    assert 96 <= min(long_sides) and max(long_sides) <= 640
    assert min(long_sides) < 150 and max(long_sides) > 400  # both ends of the range occur
    assert sum(s.label.shape[0] != s.label.shape[1] for s in CLUTTER) >= 35
    assert any(s.label.shape[0] > s.label.shape[1] for s in CLUTTER)  # portrait ones too


def test_clutter_objects_cues_and_instances():
    thin = several_of_a_class = 0
    for s in CLUTTER:
        assert 1 <= len(s.object_classes) <= 3
        union = np.zeros(s.label.shape, bool)
        for c, mask, cue in zip(s.object_classes, s.object_masks, s.cue_masks):
            assert not (union & mask).any()
            union |= mask
            assert (s.label[mask] == c + 1).all() and not (cue & ~mask).any()
            assert 0.25 <= cue.sum() / mask.sum() <= 0.70  # class evidence on part of the object only
            ys, xs = np.nonzero(mask)
            cov = np.cov(np.stack([ys, xs]).astype(float))
            eig = np.sqrt(np.linalg.eigvalsh(cov))
            thin += eig[1] > 3 * eig[0]  # elongated: a bar
        several_of_a_class += len(set(s.object_classes)) < len(s.object_classes)
        assert ((s.label > 0) == union).all()
    assert thin >= 5 and several_of_a_class >= 3


def test_clutter_background_is_cluttered_with_cue_like_distractors():
    """The background is far from plain, and it holds patches that look like a class's cue
    (its hue, or its texture in grey) which the ground truth marks background."""
    kinds = set()
    spread = [s.image.astype(np.float64)[s.label == 0].std(axis=0).mean() for s in CLUTTER]
    plain = [make_sample(seed=3, split="train", index=i) for i in range(len(CLUTTER))]
    plain_spread = [s.image.astype(np.float64)[s.label == 0].std(axis=0).mean() for s in plain]
    assert np.median(spread) > np.median(plain_spread) + 3  # busier than the first family's
    for s in CLUTTER:
        img = s.image.astype(np.float64)
        for c, kind, mask in s.distractors:
            kinds.add(kind)
            visible = mask & (s.label == 0)
            assert (s.label[mask & ~visible] != 0).all()  # only an object drawn over it hides it
            if kind == "color" and visible.sum() > 50:
                hue = colorsys.rgb_to_hsv(*img[visible].mean(0) / 255)[0]
                cue_hue = colorsys.rgb_to_hsv(*clutter_cue_color(c) / 255)[0]
                assert min(abs(hue - cue_hue), 1 - abs(hue - cue_hue)) < 0.07  # the cue's hue, within 25 degrees
    assert kinds == {"color", "texture"}
    assert sum(bool(s.distractors) for s in CLUTTER) >= 20


def test_clutter_family_through_the_command(tmp_path):
    summary = synth.run(SynthConfig(out=str(tmp_path), train=4, val=2, seed=1, family="clutter"))
    ds = VOCDataset(tmp_path)
    assert summary["family"] == "clutter" and ds.classes == clutter_class_names(6)
    for name in ds.split("train") + ds.split("val"):
        present = sorted(set(np.unique(ds.load_gt(name)).tolist()) - {0})
        assert (np.flatnonzero(ds.image_labels(name)) + 1).tolist() == present
    again = tmp_path / "again"
    synth.run(SynthConfig(out=str(again), train=4, val=2, seed=1, family="clutter"))
    assert _digest(again) == {k: v for k, v in _digest(tmp_path).items() if not k.startswith("again/")}
