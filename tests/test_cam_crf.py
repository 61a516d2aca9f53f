"""Multi-scale CAMs, CAM prediction, threshold sweep, dense CRF and confident labels vs golden PSA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from affinitynet.algorithms.cam import (
    ThresholdSweep,
    best_threshold,
    cam_prediction,
    multiscale_cam,
)
from affinitynet.algorithms.resize import resize_image
from affinitynet.algorithms.crf import canvas, confident_labels, crf_with_background, dense_crf
from conftest import golden_cases, rel_err

# the golden README's procedure: these scales in this order, CAM prediction with background 0.2,
# 10 CRF iterations
GOLDEN_SCALES = (1.0, 0.5, 1.5, 2.0)
GOLDEN_BG_SCORE = 0.2
CRF_ITERATIONS = 10

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def resnet38_normalize(image: np.ndarray) -> np.ndarray:
    """(x/255 - mean)/std in float64, cast to float32, CHW (golden README normalize_*)."""
    return ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)


def stand_in_cam_fn():
    """The golden README's stand-in classifier: ReLU(conv1x1(avg_pool2d(x, 8, 8), w, b))."""
    g = np.random.default_rng(0)
    w = torch.from_numpy(g.standard_normal((20, 3, 1, 1)).astype(np.float32))
    b = torch.from_numpy((0.5 * g.standard_normal(20) - 1.0).astype(np.float32))
    return lambda x: F.relu(F.conv2d(F.avg_pool2d(x, 8, 8), w, b))



@pytest.mark.parametrize("path", golden_cases("cam_crf_*.npz"))
def test_multiscale_cam_and_prediction_match_golden(path):
    d = np.load(path)
    keys, maps = multiscale_cam(stand_in_cam_fn(), d["image"], d["label"], resnet38_normalize, GOLDEN_SCALES)
    np.testing.assert_array_equal(keys, d["cam_keys"])
    assert keys.dtype == np.int64 and maps.dtype == np.float32
    assert maps.shape == d["cam_maps"].shape
    assert rel_err(maps, d["cam_maps"]) <= 1e-4
    assert maps.min() >= 0 and maps.max() <= 1

    pred = cam_prediction(keys, maps, GOLDEN_BG_SCORE)
    assert pred.dtype == np.uint8 and pred.shape == d["cam_pred"].shape
    assert (pred == d["cam_pred"]).mean() >= 0.999


@pytest.mark.parametrize("path", golden_cases("cam_crf_*.npz"))
def test_batch_flip_matches_separate_calls(path):
    d = np.load(path)
    calls: list[int] = []
    cam_fn = stand_in_cam_fn()

    def counting(x):
        calls.append(x.shape[0])
        return cam_fn(x)

    _, batched = multiscale_cam(counting, d["image"], d["label"], resnet38_normalize, GOLDEN_SCALES,
                                batch_flip=True)
    assert calls == [2] * len(GOLDEN_SCALES)
    calls.clear()
    _, separate = multiscale_cam(counting, d["image"], d["label"], resnet38_normalize, GOLDEN_SCALES,
                                 batch_flip=False)
    assert calls == [1] * (2 * len(GOLDEN_SCALES))
    np.testing.assert_allclose(batched, separate, rtol=0, atol=1e-6)


def test_flip_is_undone_before_summing():
    # A CAM that rises left to right: with the flip undone, ramp + mirrored ramp is flat.
    def ramp(x):
        w = x.shape[-1]
        return torch.linspace(0, 1, w).expand(x.shape[0], 2, x.shape[-2], w).clone()

    image = np.zeros((16, 24, 3), np.uint8)
    label = np.array([0, 1], np.float32)
    keys, flat = multiscale_cam(ramp, image, label, resnet38_normalize, scales=(1.0,))
    np.testing.assert_array_equal(keys, [1])
    np.testing.assert_allclose(flat, 1.0, atol=1e-4)
    _, one_way = multiscale_cam(ramp, image, label, resnet38_normalize, scales=(1.0,), flip=False)
    np.testing.assert_allclose(one_way[0, 0], np.linspace(0, 1, 24) / (1 + 1e-5), atol=1e-6)


@pytest.mark.parametrize("path", golden_cases("cam_crf_*.npz"))
def test_crf_with_background_matches_golden(path):
    d = np.load(path)
    for alpha_key, tag in (("low_alpha", "la"), ("high_alpha", "ha")):
        # Golden CAM maps as input, so the CRF is checked independently of the CAM fusion.
        crf = crf_with_background(d["image"], d["cam_maps"], float(d[alpha_key]), CRF_ITERATIONS)
        np.testing.assert_array_equal(np.concatenate([[0], d["cam_keys"] + 1]), d[f"crf_{tag}_keys"])
        assert crf.dtype == np.float32 and crf.shape == d[f"crf_{tag}_maps"].shape
        np.testing.assert_allclose(crf, d[f"crf_{tag}_maps"], rtol=0, atol=1e-5)


def test_dense_crf_accepts_read_only_image():
    image = np.zeros((6, 8, 3), np.uint8)
    image[:, 4:] = 200
    image.flags.writeable = False
    probs = np.stack([np.full((6, 8), 0.6), np.full((6, 8), 0.4)]).astype(np.float32)
    q = dense_crf(image, probs, 10)
    assert q.shape == (2, 6, 8) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(0), 1.0, atol=1e-5)
    assert (q[0] > q[1]).all()


def test_dense_crf_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        dense_crf(np.zeros((4, 5, 3), np.uint8), np.full((2, 5, 4), 0.5, np.float32), 10)


@pytest.mark.parametrize("path", golden_cases("conf_labels_*.npz"))
def test_confident_labels_match_golden(path):
    d = np.load(path)
    size = int(d["cropsize"])
    low, high = canvas(d["crf_la_maps"], size), canvas(d["crf_ha_maps"], size)
    full = confident_labels(low, high)
    np.testing.assert_array_equal(full, d["label_full"])
    np.testing.assert_array_equal(confident_labels(low, high, stride=8), d["label_stride8"])

    # Class labels instead of key positions: same equality structure, real VOC labels.
    class_keys = d["crf_la_keys"][1:] - 1
    labelled = confident_labels(low, high, keys=class_keys)
    lookup = np.full(256, 255)
    lookup[0] = 0
    lookup[1:len(class_keys) + 1] = class_keys + 1
    np.testing.assert_array_equal(labelled, lookup[d["label_full"]])


def test_confident_labels_pads_to_stride():
    # An 11x13 map padded to 16x16 equals placing it on a 16x16 canvas.
    rng = np.random.default_rng(3)
    low = rng.dirichlet(np.ones(3), size=(11, 13)).transpose(2, 0, 1).astype(np.float32)
    high = rng.dirichlet(np.ones(3), size=(11, 13)).transpose(2, 0, 1).astype(np.float32)
    padded = confident_labels(low, high, stride=8)
    assert padded.shape == (2, 2)
    np.testing.assert_array_equal(padded, confident_labels(canvas(low, 16), canvas(high, 16), stride=8))
    assert (confident_labels(canvas(low, 24), canvas(high, 24))[11:, :] == 255).all()


def test_cam_prediction_without_classes_is_background():
    pred = cam_prediction(np.zeros(0, np.int64), np.zeros((0, 4, 6), np.float32), 0.2)
    assert pred.shape == (4, 6) and (pred == 0).all()


def test_resize_image_size():
    image = np.zeros((5, 7, 3), np.uint8)
    assert resize_image(image, 0.5).shape == (2, 4, 3)  # round(2.5) = 2, round(3.5) = 4 (Python)
    assert resize_image(image, 1.5).shape == (8, 10, 3)


def test_threshold_sweep_hand_case():
    # One class (index 6 -> label 7). Object pixels score 0.9, 0.8, 0.62; background pixels
    # 0.1, 0.3, 0.58; an ignored pixel 0.99. Only thresholds in [0.58, 0.62) separate them.
    maps = np.array([[[0.9, 0.8, 0.62, 0.1, 0.3, 0.58, 0.99]]], np.float32)
    gt = np.array([[7, 7, 7, 0, 0, 0, 255]], np.uint8)
    result = best_threshold([(np.array([6]), maps, gt)], num_labels=21, thresholds=[0.2, 0.4, 0.6, 0.7])
    expected = [100 * (3 / 5 + 1 / 3) / 2, 100 * (3 / 4 + 2 / 3) / 2, 100.0, 100 * (2 / 3 + 3 / 4) / 2]  # percent
    np.testing.assert_allclose(result["miou"], expected)
    assert result["best_threshold"] == pytest.approx(0.6)
    assert result["best_miou"] == pytest.approx(100.0)


def test_threshold_sweep_agrees_with_cam_prediction():
    rng = np.random.default_rng(7)
    thresholds = np.round(np.arange(0.05, 0.96, 0.05), 2)
    samples = []
    for k in (2, 0, 1):
        keys = np.sort(rng.choice(20, size=k, replace=False))
        maps = rng.random((k, 9, 11)).astype(np.float32)
        gt = rng.choice([0, 255] + list(keys + 1), size=(9, 11)).astype(np.uint8)
        samples.append((keys, maps, gt))
    sweep = ThresholdSweep(21, thresholds)
    for s in samples:
        sweep.add(*s)
    for t, conf in zip(thresholds, sweep.confusion):
        expected = np.zeros((21, 21), np.int64)
        for keys, maps, gt in samples:
            pred = cam_prediction(keys, maps, t, shape_hw=gt.shape)
            ok = gt != 255
            np.add.at(expected, (gt[ok].astype(int), pred[ok].astype(int)), 1)
        np.testing.assert_array_equal(conf, expected)
    result = sweep.result()
    assert result["best_miou"] == np.nanmax(result["miou"])
