"""Pair indices, affinity labels, affinity from features, dense affinity and the affinity loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import golden_cases, rel_err

from affinitynet.algorithms.affinity import (affinity_from_features, affinity_labels,
                                             affinity_loss, dense_affinity)
from affinitynet.algorithms.pairs import pair_indices, pair_offsets



@pytest.mark.parametrize("path", golden_cases("pairs_r5_*.npz"))
def test_pairs_golden(path):
    g = np.load(path)
    radius = int(g["radius"])
    ind_from, ind_to = pair_indices(int(g["height"]), int(g["width"]), radius)
    assert ind_from.dtype == np.int64 and ind_to.dtype == np.int64
    np.testing.assert_array_equal(ind_from, g["ind_from"])
    np.testing.assert_array_equal(ind_to, g["ind_to"])
    np.testing.assert_array_equal(np.array(pair_offsets(radius)), g["offsets"])


def test_pair_offsets_shape():
    offsets = pair_offsets(5)
    assert len(offsets) == 34 and len(set(offsets)) == 34
    assert offsets[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert all(dy * dy + dx * dx < 25 for dy, dx in offsets)
    # each unordered pair once: only the forward half-plane
    assert all(dy > 0 or (dy == 0 and dx > 0) for dy, dx in offsets)


@pytest.mark.parametrize("hw", [(4, 20), (20, 8), (0, 0)])
def test_pairs_grid_too_small(hw):
    with pytest.raises(ValueError, match="too small"):
        pair_indices(*hw, 5)


def test_pairs_smallest_grid():
    ind_from, ind_to = pair_indices(5, 9, 5)
    np.testing.assert_array_equal(ind_from, [4])
    assert ind_to.shape == (34,) and ind_to.min() >= 0 and ind_to.max() < 45


@pytest.mark.parametrize("path", golden_cases("aff_labels_*.npz"))
def test_affinity_labels_golden(path):
    g = np.load(path)
    bg_pos, fg_pos, neg = affinity_labels(g["label"], int(g["radius"]))
    for ours, key in zip((bg_pos, fg_pos, neg), ("bg_pos", "fg_pos", "neg")):
        assert ours.dtype == torch.float32
        np.testing.assert_array_equal(ours.numpy(), g[key], err_msg=key)


@pytest.mark.parametrize("path", golden_cases("conf_labels_*.npz"))
def test_affinity_labels_of_confident_labels(path):
    g = np.load(path)
    label = torch.from_numpy(g["label_stride8"])
    for ours, key in zip(affinity_labels(label, 5), ("bg_pos", "fg_pos", "neg")):
        np.testing.assert_array_equal(ours.numpy(), g[key], err_msg=key)


def test_affinity_labels_sets_and_batch():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(3, 9, 13))
    bg_pos, fg_pos, neg = affinity_labels(label, 5)
    assert bg_pos.shape == (3, 34, 5 * 5)
    # the three sets are disjoint and cover exactly the pairs without an ignored cell
    total = bg_pos + fg_pos + neg
    assert total.max() == 1
    single = affinity_labels(label[1], 5)
    for batched, one in zip((bg_pos, fg_pos, neg), single):
        torch.testing.assert_close(batched[1], one)
    ind_from, ind_to = pair_indices(9, 13, 5)
    flat = label[1].reshape(-1)
    valid = (flat[np.tile(ind_from, 34)] != 255) & (flat[ind_to] != 255)
    np.testing.assert_array_equal(total[1].reshape(-1).numpy(), valid.astype(np.float32))


@pytest.mark.parametrize("path", golden_cases("net_*.npz"))
def test_affinity_from_network_features(path):
    g = np.load(path)
    # the original measures the distances on the features its forward returns (the ELU of f9),
    # with no further ELU
    aff = affinity_from_features(torch.from_numpy(g["aff_features"]), 5)
    assert aff.shape == g["aff"].shape
    assert rel_err(aff, g["aff"]) <= 1e-4
    h, w = g["aff_features"].shape[-2:]
    np.testing.assert_array_equal(dense_affinity(torch.from_numpy(g["aff"]), h, w, 5).numpy(),
                                  g["aff_dense"])


@pytest.mark.parametrize("path", golden_cases("random_walk_*.npz"))
def test_affinity_from_image_features(path):
    g = np.load(path)
    if str(g["affinity_source"]) == "image":
        features = 3 * F.avg_pool2d(torch.from_numpy(g["input"]), 8)
        assert rel_err(affinity_from_features(features, 5), g["aff"]) <= 1e-4
    h, w = np.ceil(np.array(g["image"].shape[:2]) / 8).astype(int)
    np.testing.assert_array_equal(dense_affinity(torch.from_numpy(g["aff"]), h, w, 5).numpy(),
                                  g["aff_dense"])


def test_affinity_from_features_direct():
    torch.manual_seed(0)
    features = torch.randn(2, 5, 7, 11)
    aff = affinity_from_features(features, 5)
    ind_from, ind_to = pair_indices(7, 11, 5)
    flat = features.flatten(2).double()
    ref = torch.exp(-(flat[:, :, ind_to] - flat[:, :, np.tile(ind_from, 34)]).abs().mean(1))
    torch.testing.assert_close(aff.double(), ref.reshape(2, 34, -1), rtol=1e-6, atol=1e-7)
    features.requires_grad_(True)
    affinity_from_features(features, 5).sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_dense_affinity_structure():
    aff = torch.rand(34, 3 * 4)
    dense = dense_affinity(aff, 7, 12, 5)
    torch.testing.assert_close(dense, dense.T)
    torch.testing.assert_close(torch.diagonal(dense), torch.ones(84))
    # 34 pairs per from-cell, each stored twice, plus the diagonal
    assert int((dense > 0).sum()) == 2 * 34 * 12 + 84
    with pytest.raises(ValueError, match="does not match"):
        dense_affinity(aff, 7, 13, 5)


def test_affinity_loss_hand_computed():
    eps = 1e-5
    aff = torch.tensor([[[0.5, 0.9, 0.2, 0.6]]], requires_grad=True)
    bg_pos = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    fg_pos = torch.tensor([[[0.0, 1.0, 0.0, 0.0]]])
    neg = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    loss, parts = affinity_loss(aff, bg_pos, fg_pos, neg)
    bg = -math.log(0.5 + eps) / (1 + eps)
    fg = -math.log(0.9 + eps) / (1 + eps)
    ng = (-math.log(1 + eps - 0.2) - math.log(1 + eps - 0.6)) / (2 + eps)
    assert loss.item() == pytest.approx(bg / 4 + fg / 4 + ng / 2, rel=1e-6)
    assert parts["bg"] == pytest.approx(bg, rel=1e-6)
    assert parts["fg"] == pytest.approx(fg, rel=1e-6)
    assert parts["neg"] == pytest.approx(ng, rel=1e-6)
    assert (parts["bg_count"], parts["fg_count"], parts["neg_count"]) == (1.0, 1.0, 2.0)
    loss.backward()
    # raising a positive pair's affinity lowers the loss, raising a negative pair's raises it
    assert aff.grad[0, 0, 0] < 0 and aff.grad[0, 0, 1] < 0 and aff.grad[0, 0, 2] > 0


def test_affinity_loss_empty_set_is_zero():
    aff = torch.full((1, 34, 6), 0.7)
    zeros = torch.zeros_like(aff)
    loss, parts = affinity_loss(aff, zeros, zeros, torch.ones_like(aff))
    assert parts["bg"] == 0 and parts["fg"] == 0
    assert loss.item() == pytest.approx(-math.log(1 + 1e-5 - 0.7) / 2, rel=1e-5)
