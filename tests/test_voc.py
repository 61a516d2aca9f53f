"""Datasets in VOC layout (affinitynet.data.voc)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet.data import voc as voc_mod
from affinitynet.data.images import save_label_png
from affinitynet.data.transforms import ClassificationTransform, SegmentationTransform
from affinitynet.data.voc import (
    VOC_CLASSES,
    LabelMapDataset,
    ClassificationDataset,
    VOCDataset,
)
from affinitynet.errors import InputError


def _xml(objects: list[str]) -> str:
    objs = "".join(f"<object><name>{o}</name><difficult>0</difficult></object>" for o in objects)
    return f"<annotation><filename>x.jpg</filename>{objs}</annotation>"


def make_tree(root, images: dict[str, list[str]], split: str = "train", size=(24, 32)):
    """A tiny VOC-layout folder: one random JPEG, XML and GT per image."""
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, objects in images.items():
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(_xml(objects))
        gt = np.zeros(size, np.uint8)
        gt[4:10, 4:10] = 1
        save_label_png(root / "SegmentationClass" / f"{name}.png", gt)
    (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in images))
    return root


def test_defaults_split_labels_gt(tmp_path):
    make_tree(tmp_path, {"a": ["cat", "dog", "cat"], "b": ["person"]})
    ds = VOCDataset(tmp_path)
    assert ds.classes == list(VOC_CLASSES) and ds.num_classes == 20
    assert ds.split("train") == ["a", "b"]
    lab = ds.image_labels("a")
    assert lab.dtype == np.float32 and lab.shape == (20,)
    assert np.flatnonzero(lab).tolist() == [VOC_CLASSES.index("cat"), VOC_CLASSES.index("dog")]
    assert ds.label_names("b") == ["person"]
    assert ds.has_gt("a") and not ds.has_gt("zzz")
    gt = ds.load_gt("a")
    assert gt.dtype == np.uint8 and gt.shape == (24, 32) and gt[5, 5] == 1
    assert ds.load_image("a").shape == (24, 32, 3)


def test_xml_parsed_once(tmp_path, monkeypatch):
    make_tree(tmp_path, {"a": ["cat"]})
    calls = []
    real = voc_mod.read_annotation
    monkeypatch.setattr(voc_mod, "read_annotation", lambda p: calls.append(p) or real(p))
    ds = VOCDataset(tmp_path)
    for _ in range(3):
        ds.image_labels("a")
    assert len(calls) == 1


def test_classes_txt_and_unknown_class(tmp_path):
    make_tree(tmp_path, {"a": ["square"], "b": ["blob"]})
    (tmp_path / "classes.txt").write_text("background\nsquare\ncircle\n")
    ds = VOCDataset(tmp_path)
    assert ds.classes == ["square", "circle"]
    assert ds.image_labels("a").tolist() == [1.0, 0.0]
    with pytest.raises(InputError) as err:
        ds.image_labels("b")
    assert "'b'" in str(err.value) and "blob" in str(err.value) and "b.xml" in str(err.value)


def test_missing_split_and_missing_image(tmp_path):
    make_tree(tmp_path, {"a": ["cat"]})
    ds = VOCDataset(tmp_path)
    with pytest.raises(InputError, match="val.txt"):
        ds.split("val")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\nghost\n")
    with pytest.raises(InputError, match="ghost"):
        ds.split("train")
    assert ds.split("train", check_images=False) == ["a", "ghost"]
    with pytest.raises(InputError, match="ghost.xml"):
        ds.image_labels("ghost")


def test_psa_style_list_lines(tmp_path):
    make_tree(tmp_path, {"2007_000032": ["cat"]})
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n\n")
    assert VOCDataset(tmp_path).split("train") == ["2007_000032"]


def test_json_and_csv_label_files(tmp_path):
    make_tree(tmp_path, {"a": [], "b": [], "c": []})
    (tmp_path / "lab.json").write_text(json.dumps({"a": ["cat", "dog"], "b": [], "c": ["car"]}))
    ds = VOCDataset(tmp_path, labels_file=tmp_path / "lab.json")
    assert ds.label_names("a") == ["cat", "dog"] and ds.label_names("b") == []
    (tmp_path / "lab.csv").write_text("image,labels\na,cat dog\nb,\nc,car;bus\n")
    ds = VOCDataset(tmp_path, labels_file=tmp_path / "lab.csv")
    assert ds.label_names("a") == ["cat", "dog"]
    assert ds.label_names("c") == ["bus", "car"]
    (tmp_path / "labels.csv").write_text("a,horse\n")  # auto-detected
    ds = VOCDataset(tmp_path)
    assert ds.label_names("a") == ["horse"]
    with pytest.raises(InputError, match="'b'"):
        ds.image_labels("b")
    (tmp_path / "bad.json").write_text(json.dumps({"a": ["unicorn"]}))
    with pytest.raises(InputError) as err:
        VOCDataset(tmp_path, labels_file=tmp_path / "bad.json").image_labels("a")
    assert "unicorn" in str(err.value) and "'a'" in str(err.value)


def test_corrupt_empty_and_cmyk_images(tmp_path):
    make_tree(tmp_path, {"good": ["cat"], "corrupt": ["cat"], "empty": ["cat"], "cmyk": ["cat"]})
    jpg = (tmp_path / "JPEGImages/good.jpg").read_bytes()
    (tmp_path / "JPEGImages/corrupt.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "JPEGImages/empty.jpg").write_bytes(b"")
    Image.new("CMYK", (32, 24), (0, 0, 255, 0)).save(tmp_path / "JPEGImages/cmyk.jpg")
    ds = VOCDataset(tmp_path)
    for name in ("corrupt", "empty"):
        with pytest.raises(InputError) as err:
            ds.load_image(name)
        assert f"{name}.jpg" in str(err.value)
    rgb = ds.load_image("cmyk")
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    assert rgb[..., 2].mean() < 60 < rgb[..., 0].mean()  # yellow


def test_gt_with_invalid_values(tmp_path):
    make_tree(tmp_path, {"a": ["cat"]})
    bad = np.full((24, 32), 77, np.uint8)
    save_label_png(tmp_path / "SegmentationClass/a.png", bad)
    with pytest.raises(InputError, match="a.png"):
        VOCDataset(tmp_path).load_gt("a")


def test_classification_dataset_skips_unlabelled(tmp_path):
    make_tree(tmp_path, {"a": ["cat"], "b": [], "c": ["dog", "cat"]})
    ds = VOCDataset(tmp_path)
    with pytest.warns(UserWarning, match="b"):
        cls = ClassificationDataset(ds, ds.split("train"), ClassificationTransform(crop=16, resize_long=(256, 512), color_jitter=(0.3, 0.3, 0.3, 0.1)))
    assert cls.names == ["a", "c"] and cls.skipped == ["b"] and len(cls) == 2
    x, y, name = cls[1]
    assert x.shape == (3, 16, 16) and name == "c"
    assert y.dtype == torch.float32 and y.sum() == 2


def test_label_map_dataset(tmp_path):
    make_tree(tmp_path, {"a": ["cat"], "b": ["dog"]})
    ds = VOCDataset(tmp_path)
    labels = tmp_path / "pseudo"
    lab = np.full((24, 32), 255, np.uint8)
    lab[:12] = 0
    lab[12:, :16] = 1
    save_label_png(labels / "a.png", lab)
    with pytest.raises(InputError, match="b.png"):
        LabelMapDataset(ds, ["a", "b"], labels)
    seg = LabelMapDataset(ds, ["a"], labels, SegmentationTransform(crop=32, resize_long=(32, 32),
                                                                   color_jitter=(0.3, 0.3, 0.3, 0.1)))
    x, y, name = seg[0]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32) and y.dtype == torch.uint8 and name == "a"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y, _ = LabelMapDataset(ds, ["a"], labels)[0]
    assert torch.equal(y, torch.from_numpy(lab))
    save_label_png(labels / "b.png", lab[:-1])
    with pytest.raises(InputError, match="b.png"):
        LabelMapDataset(ds, ["b"], labels)[0]


def test_training_without_rescale_sees_the_working_size(tmp_path):
    """A transform without ``resize_long`` gets image and label at dataset.long_side; one that
    rescales gets the native image (its random long side replaces the working size)."""
    make_tree(tmp_path, {"a": ["cat"]})
    ds = VOCDataset(tmp_path)
    seen = []

    def record(image, label=None, generator=None):
        seen.append(image.shape[:2] if label is None else (image.shape[:2], label.shape))
        return torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.uint8)

    record.rescales = False
    save_label_png(tmp_path / "pseudo" / "a.png", np.zeros((24, 32), np.uint8))
    LabelMapDataset(ds, ["a"], tmp_path / "pseudo", record, long_side=64)[0]
    # a transform that does not say is taken to resize the image itself (the native image)
    ClassificationDataset(ds, ["a"], lambda im, generator=None: record(im), long_side=16)[0]
    ClassificationDataset(ds, ["a"], record, long_side=16)[0]
    assert seen == [((48, 64), (48, 64)), (24, 32), (12, 16)]
