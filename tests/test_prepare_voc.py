"""``prepare-voc`` on a small fake VOC 2012 + SBD tree (affinitynet.data.prepare_voc)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from affinitynet.config import PrepareVOCConfig
from affinitynet.data.images import load_label_png, save_label_png
from affinitynet.data.prepare_voc import read_sbd_mask
from affinitynet.data.voc import VOC_CLASSES, VOCDataset
from affinitynet.errors import InputError
from affinitynet.stages import prepare_voc as stage

VOC_TRAIN = ["2007_a", "2007_b", "2008_c"]
VOC_VAL = ["2008_d", "2009_e"]
SBD_TRAIN = ["2008_c", "2008_d", "2010_f", "2010_g"]
SBD_VAL = ["2009_e", "2011_h", "2011_i"]
ALL = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
OBJECTS = {n: [VOC_CLASSES[i % 20], VOC_CLASSES[(3 * i + 5) % 20]] for i, n in enumerate(ALL)}
SIZE = (12, 16)


def _sbd_mask(i: int) -> np.ndarray:
    m = np.zeros(SIZE, np.uint8)
    m[2:8, 3:10] = (i % 20) + 1
    return m


def _write_mat(path, seg):
    bounds = np.empty((20, 1), dtype=object)
    for k in range(20):
        bounds[k, 0] = scipy.sparse.csc_matrix(seg == k + 1)
    struct = {"Boundaries": bounds, "Segmentation": seg, "CategoriesPresent": np.unique(seg[seg > 0])}
    scipy.io.savemat(path, {"GTcls": struct})


@pytest.fixture()
def tree(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    (sbd / "cls").mkdir(parents=True)
    for i, n in enumerate(ALL):
        Image.fromarray(np.full((*SIZE, 3), 100, np.uint8)).save(voc / "JPEGImages" / f"{n}.jpg")
        objs = "".join(f"<object><name>{o}</name></object>" for o in OBJECTS[n])
        (voc / "Annotations" / f"{n}.xml").write_text(f"<annotation>{objs}</annotation>")
    for n in VOC_TRAIN + VOC_VAL:  # VOC's own masks: a distinctive 255 border
        gt = np.full(SIZE, 255, np.uint8)
        gt[1:-1, 1:-1] = 0
        save_label_png(voc / "SegmentationClass" / f"{n}.png", gt)
    (voc / "ImageSets/Segmentation/train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    for n in SBD_TRAIN + SBD_VAL:
        _write_mat(sbd / "cls" / f"{n}.mat", _sbd_mask(ALL.index(n)))
    return tmp_path, voc, sbd


def test_split_arithmetic_labels_and_conversion(tree):
    base, voc, sbd = tree
    # parents of the VOC2012 / dataset folders are accepted too
    res = stage.run(PrepareVOCConfig(voc_root=str(base / "VOCdevkit"), sbd_root=str(base / "benchmark_RELEASE"),
                                     convert_sbd=True))
    expected = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))
    assert expected == ["2007_a", "2007_b", "2008_c", "2010_f", "2010_g", "2011_h", "2011_i"]
    ds = VOCDataset(voc)
    assert ds.split("train_aug") == expected and res["train_aug"] == 7
    assert ds.split("train") == VOC_TRAIN and ds.split("val") == VOC_VAL
    assert ds.classes == list(VOC_CLASSES)
    labels = json.loads((voc / "labels.json").read_text())
    assert set(labels) == set(ALL)
    for n in ALL:
        assert set(ds.label_names(n)) == set(OBJECTS[n])
    aug = voc / "SegmentationClassAug"
    for n in SBD_TRAIN + SBD_VAL:
        got = load_label_png(aug / f"{n}.png")
        if n in VOC_TRAIN + VOC_VAL:  # VOC's PNG wins over SBD's mask
            assert got[0, 0] == 255 and got[5, 5] == 0
        else:
            np.testing.assert_array_equal(got, _sbd_mask(ALL.index(n)))
    assert res["sbd_converted"] == 4 and res["voc_masks_copied"] == 5
    # images without a VOC mask take their ground truth from SegmentationClassAug
    assert ds.has_gt("2010_f") and ds.load_gt("2010_f")[3, 4] == ALL.index("2010_f") % 20 + 1


def test_separate_output_folder_is_a_full_dataset(tree):
    base, voc, sbd = tree
    out = base / "prepared"
    stage.run(PrepareVOCConfig(voc_root=str(voc), sbd_root=str(sbd), out=str(out)))
    ds = VOCDataset(out)
    assert len(ds.split("train_aug")) == 7 and ds.split("val") == VOC_VAL
    assert ds.load_image("2011_h").shape == (*SIZE, 3)
    assert not (voc / "ImageSets/Segmentation/train_aug.txt").exists()
    assert not (out / "SegmentationClassAug").exists()


def test_errors_name_the_file(tree):
    base, voc, sbd = tree
    with pytest.raises(InputError, match="not a VOC"):
        stage.run(PrepareVOCConfig(voc_root=str(base / "nowhere"), sbd_root=str(sbd)))
    (sbd / "cls" / "2011_h.mat").write_bytes(b"garbage")
    with pytest.raises(InputError, match="2011_h.mat"):
        stage.run(PrepareVOCConfig(voc_root=str(voc), sbd_root=str(sbd), convert_sbd=True))
    scipy.io.savemat(sbd / "cls" / "2011_h.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(InputError, match="GTcls"):
        read_sbd_mask(sbd / "cls" / "2011_h.mat")
    (voc / "Annotations" / "2010_f.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(InputError, match="unicorn"):
        stage.run(PrepareVOCConfig(voc_root=str(voc), sbd_root=str(sbd)))
    (voc / "JPEGImages" / "2010_g.jpg").unlink()
    with pytest.raises(InputError, match="2010_g"):
        stage.run(PrepareVOCConfig(voc_root=str(voc), sbd_root=str(sbd)))
    (voc / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(InputError, match="val.txt"):
        stage.run(PrepareVOCConfig(voc_root=str(voc), sbd_root=str(sbd)))
