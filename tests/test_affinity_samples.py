"""AffinityNet's training samples: the training dataset rebuilds the original's samples
(golden ``aff_sample_*``) from the kept CRF scores, and the score files fail in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from affinitynet import artifacts
from affinitynet.algorithms.affinity import affinity_labels
from affinitynet.data.transforms import AffinityAugment, CropBox
from affinitynet.data.voc import AffinitySampleDataset, VOCDataset
from affinitynet.errors import InputError
from conftest import golden_cases

NORMALIZATION = {"resnet38": "imagenet", "vgg16": "caffe_bgr"}  # the golden README's networks


def one_image_dataset(root, image: np.ndarray, low: np.ndarray, high: np.ndarray, keys: np.ndarray,
                      dtype=np.float32) -> tuple[VOCDataset, callable]:
    """A VOC-layout folder holding ``image`` losslessly (PNG) and its CRF scores as
    make-aff-labels keeps them (``dtype``: float32 is exact)."""
    (root / "JPEGImages").mkdir(parents=True)
    Image.fromarray(image).save(root / "JPEGImages" / "x.png")
    artifacts.save_crf_scores(root / "crf" / "x.npz", keys, low, high, dtype=dtype)
    return VOCDataset(root), lambda name: root / "crf" / f"{name}.npz"


@pytest.mark.parametrize("path", golden_cases("aff_sample_*.npz"))
def test_training_dataset_rebuilds_the_original_sample(path, tmp_path):
    """The crop box and flip the original drew, given to the training dataset's own augmentation
    (jitter off, no rescale: the original's train_aff.py): the same input and the same labels."""
    g = np.load(path)
    assert np.array_equal(g["crf_la_keys"], g["crf_ha_keys"]) and g["crf_la_keys"][0] == 0
    keys = g["crf_la_keys"][1:] - 1  # the README's keys: 0 background, class index + 1
    crop = int(g["cropsize"])
    voc, scores_file = one_image_dataset(tmp_path, g["image"], g["crf_la_maps"], g["crf_ha_maps"], keys)
    augment = AffinityAugment(crop, resize_long=None, flip=True, color_jitter=(0, 0, 0, 0),
                              normalization=NORMALIZATION[str(g["network"])])
    ds = AffinitySampleDataset(voc, ["x"], scores_file, augment)
    cont_top, cont_left, img_top, img_left = (int(v) for v in g["crop_box"])
    x, label = ds.augment(*ds.load("x"), box=CropBox(cont_top, cont_left, img_top, img_left), flip=bool(g["flip"]))
    assert x.shape == g["input"].shape and x.dtype == torch.float32
    assert float(np.abs(x.numpy() - g["input"]).max()) <= 1e-5
    assert label.dtype == torch.uint8 and np.array_equal(label.numpy(), g["label_stride8"])
    for mine, key in zip(affinity_labels(label, 5), ("bg_pos", "fg_pos", "neg")):
        assert np.array_equal(mine.numpy(), g[key]), key
    # the random path of the same dataset gives samples of that form
    x, label, name = ds[(0, 123)]
    assert x.shape == g["input"].shape and label.shape == g["label_stride8"].shape and name == "x"


def test_score_files_round_trip_in_float16(tmp_path):
    rng = np.random.default_rng(0)
    low, high = rng.random((3, 20, 30), np.float32), rng.random((3, 20, 30), np.float32)
    artifacts.save_crf_scores(tmp_path / "a.npz", np.array([4, 9]), low, high)
    keys, low2, high2 = artifacts.load_crf_scores(tmp_path / "a.npz", (20, 30))
    assert keys.tolist() == [4, 9] and low2.dtype == np.float32 and low2.shape == (3, 20, 30)
    assert np.abs(low2 - low).max() <= 5e-4 and np.abs(high2 - high).max() <= 5e-4  # float16


def test_bad_score_files_are_one_line_errors_naming_the_file_and_the_stage(tmp_path):
    low = np.full((2, 8, 8), 0.5, np.float32)
    artifacts.save_crf_scores(tmp_path / "a.npz", np.array([1]), low, low)
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    cases = {
        tmp_path / "cut.npz": "not a readable CRF score file",
        tmp_path / "absent.npz": "CRF scores do not exist",
    }
    for path, what in cases.items():
        with pytest.raises(InputError) as err:
            artifacts.load_crf_scores(path)
        message = str(err.value)
        assert message.startswith(str(path)) and what in message and "make-aff-labels" in message
        assert "\n" not in message
    with pytest.raises(InputError, match="made for a 8x8 image, but the image is 9x8"):
        artifacts.load_crf_scores(tmp_path / "a.npz", (8, 9))


def test_dataset_names_a_missing_score_file(tmp_path):
    image = np.zeros((16, 16, 3), np.uint8)
    low = np.ones((1, 16, 16), np.float32)
    voc, scores_file = one_image_dataset(tmp_path, image, low, low, np.zeros(0, np.int64))
    (tmp_path / "JPEGImages" / "y.png").write_bytes((tmp_path / "JPEGImages" / "x.png").read_bytes())
    augment = AffinityAugment(16, None, True, (0, 0, 0, 0))
    with pytest.raises(InputError, match=r"y\.npz: CRF scores missing \(1 of 2 images"):
        AffinitySampleDataset(voc, ["x", "y"], scores_file, augment)
