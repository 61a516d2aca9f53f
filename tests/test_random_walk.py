"""Random walk: golden parity of the dense and sparse paths, sparse == dense on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import golden_cases, rel_err

from affinitynet.algorithms.affinity import affinity_from_features, dense_affinity
from affinitynet.algorithms.pairs import from_region, pair_offsets
from affinitynet.algorithms.random_walk import (background_score, propagate_cams, propagate_cams_settings,
                                                random_walk, random_walk_dense, transition_csr)

# the paper's walk (Sec. 3.4) on VOC's 20 classes
PAPER = {"alpha": 16, "beta": 8, "logt": 8, "radius": 5}


def random_affinity(h: int, w: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Affinities with structure (two regions, low across the border) plus noise, in (0, 1]."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = from_region(h, w, 5)
    aff = 0.6 + 0.4 * torch.rand(34, rows, cols, generator=g, dtype=dtype)
    aff[:, :, cols // 2:] *= torch.rand(34, rows, cols - cols // 2, generator=g, dtype=dtype)
    return aff.reshape(34, -1)


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("path", golden_cases("random_walk_*.npz"))
def test_propagate_cams_golden(path, method):
    g = np.load(path)
    label, scores = propagate_cams(g["cam_keys"], g["cam_maps"], torch.from_numpy(g["aff"]),
                                   g["label"].shape, alpha=float(g["alpha"]),
                                   beta=float(g["beta"]), logt=int(g["logt"]), radius=5, method=method)
    channels = np.concatenate([[0], np.sort(g["cam_keys"]) + 1])  # background, then the keys ascending
    assert scores.shape == (len(channels), *g["rw_stride8"].shape[2:]) and scores.dtype == torch.float32
    assert rel_err(scores, g["rw_stride8"][0][channels]) <= (1e-4 if method == "dense" else 1e-3)
    assert label.dtype == np.uint8 and label.shape == g["label"].shape
    assert (label == g["label"]).mean() >= 0.999
    absent = np.setdiff1d(np.arange(21), channels)
    assert np.all(g["rw_stride8"][0][absent] == 0)  # what is not walked is zero in the original too


def golden_stride8_cams(g) -> torch.Tensor:
    """The original's 21 stride-8 maps, built independently of propagate_cams (numpy)."""
    height, width = g["image"].shape[:2]
    maps = np.zeros((21, height, width), np.float32)
    maps[g["cam_keys"] + 1] = g["cam_maps"]
    maps[0] = (1 - maps[1:].max(0)) ** float(g["alpha"])
    maps = np.pad(maps, ((0, 0), (0, -height % 8), (0, -width % 8)))
    c, hh, ww = maps.shape
    return torch.from_numpy(maps.reshape(c, hh // 8, 8, ww // 8, 8).mean((2, 4)))


@pytest.mark.parametrize("path", golden_cases("random_walk_*.npz"))
def test_random_walk_functions_golden(path):
    """Both walks on all 21 channels, from the golden matrix / pair affinities directly."""
    g = np.load(path)
    cams = golden_stride8_cams(g)
    c, h, w = cams.shape
    ref = g["rw_stride8"][0]
    dense = random_walk_dense(cams.reshape(c, -1), torch.from_numpy(g["aff_dense"]),
                              float(g["beta"]), int(g["logt"]))
    assert rel_err(dense.reshape(c, h, w), ref) <= 1e-4
    sparse = random_walk(cams, torch.from_numpy(g["aff"]), h, w, float(g["beta"]), int(g["logt"]), 5)
    assert sparse.shape == (c, h, w)
    assert rel_err(sparse, ref) <= 1e-3


@pytest.mark.parametrize("hw,k,seed", [((13, 19), 3, 0), ((20, 11), 5, 1), ((9, 30), 2, 2)])
def test_sparse_matches_dense_random(hw, k, seed):
    h, w = hw
    aff = random_affinity(h, w, seed)
    g = torch.Generator().manual_seed(100 + seed)
    cams = torch.rand(k, h, w, generator=g, dtype=torch.float64) ** 4
    dense = random_walk_dense(cams.reshape(k, -1), dense_affinity(aff, h, w, 5), 8, 8)
    sparse = random_walk(cams, aff, h, w, beta=8, logt=8, radius=5)
    assert sparse.dtype == torch.float64
    assert rel_err(sparse.reshape(k, -1), dense) <= 1e-4
    agree = (sparse.reshape(k, -1).argmax(0) == dense.argmax(0)).double().mean()
    assert agree >= 0.999
    # float32 (the default precision) stays within the iterative tolerance
    sparse32 = random_walk(cams.float(), aff.float(), h, w, beta=8, logt=8, radius=5)
    assert sparse32.dtype == torch.float32
    assert rel_err(sparse32.reshape(k, -1), dense) <= 1e-3


def test_sparse_other_beta_logt_radius():
    h, w, radius = 10, 12, 3
    rows, cols = from_region(h, w, radius)
    g = torch.Generator().manual_seed(5)
    aff = torch.rand(len(pair_offsets(radius)), rows * cols, generator=g, dtype=torch.float64)
    cams = torch.rand(2, h, w, generator=g, dtype=torch.float64)
    dense = random_walk_dense(cams.reshape(2, -1), dense_affinity(aff, h, w, radius), 2, 3)
    sparse = random_walk(cams, aff, h, w, beta=2, logt=3, radius=radius)
    assert rel_err(sparse.reshape(2, -1), dense) <= 1e-10


def test_one_walk_for_many_settings_is_each_walk():
    """tune's form: several background powers and logts from one walk give the labels of a walk
    per setting."""
    height, width = 77, 93  # a 10x12 grid at stride 8
    aff = random_affinity(10, 12, 3)
    g = torch.Generator().manual_seed(7)
    maps = (torch.rand(2, height, width, generator=g, dtype=torch.float64) ** 3).numpy()
    keys = np.array([1, 4])
    labels = propagate_cams_settings(keys, maps, aff, [4.0, 16.0], 8.0, [2, 5], radius=5)
    assert sorted(labels) == [(4.0, 2), (4.0, 5), (16.0, 2), (16.0, 5)]
    for (alpha, logt), label in labels.items():
        expected, _ = propagate_cams(keys, maps, aff, (height, width), alpha=alpha, beta=8.0, logt=logt, radius=5)
        assert np.array_equal(label, expected)


def test_transition_is_column_normalised():
    h, w = 8, 12
    aff = random_affinity(h, w, 3)
    trans_t = transition_csr(aff, h, w, beta=8, radius=5).to_dense()
    a = dense_affinity(aff, h, w, 5) ** 8
    # row j of T^T is column j of T = A[:, j] / sum_k A[k, j]
    torch.testing.assert_close(trans_t, (a / a.sum(0, keepdim=True)).T)


def test_background_score():
    maps = torch.tensor([[[0.0, 0.5]], [[0.25, 1.0]]])
    torch.testing.assert_close(background_score(maps, 2), torch.tensor([[0.5625, 0.0]]))
    assert torch.all(background_score(torch.zeros(0, 2, 3), 16) == 1)


def test_propagate_cams_synthetic_object():
    """The walk spreads a partial cue over its object and removes the CAM's leak past it."""
    height, width = 80, 96
    h, w = 10, 12
    inside = torch.zeros(h, w, dtype=torch.bool)
    inside[2:8, 2:7] = True
    features = inside.double()[None, None] * 3
    aff = affinity_from_features(features, 5)[0]
    cam = np.zeros((1, height, width), np.float32)
    cam[0, 16:64, 16:72] = 0.4  # weak response over the object and one cell past its right edge
    cam[0, 24:48, 24:40] = 1.0  # the discriminative part
    for method in ("sparse", "dense"):
        label, scores = propagate_cams([6], cam, aff.float(), (height, width), **PAPER, method=method)
        assert set(np.unique(label)) <= {0, 7}
        obj = np.kron(inside.numpy(), np.ones((8, 8), bool))
        assert np.all(label[16:64, 56:64] == 0)  # the leak is background again
        assert (label[obj] == 7).mean() > 0.9 and (label[~obj] == 0).mean() > 0.9
        assert scores.shape == (2, h, w)  # background and class 6


def test_propagate_cams_bad_method():
    with pytest.raises(ValueError, match="method"):
        propagate_cams([0], np.zeros((1, 40, 72), np.float32), torch.ones(34, 2), (40, 72), **PAPER,
                       method="magic")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sparse_on_gpu_matches_cpu():
    h, w = 30, 40
    aff = random_affinity(h, w, 7, torch.float32)
    cams = torch.rand(4, h, w)
    cpu = random_walk(cams, aff, h, w, 8, 8, 5)
    gpu = random_walk(cams.cuda(), aff.cuda(), h, w, 8, 8, 5)
    assert gpu.is_cuda
    assert rel_err(gpu.cpu(), cpu.numpy()) <= 1e-3


def test_propagate_cams_key_order_and_numpy_inputs():
    h, w = 10, 12
    aff = random_affinity(h, w, 11, torch.float32)
    g = torch.Generator().manual_seed(12)
    maps = torch.rand(3, 80, 96, generator=g)
    label, scores = propagate_cams(np.array([2, 9, 14]), maps, aff, (80, 96), **PAPER)
    label_rev, scores_rev = propagate_cams([14, 9, 2], maps.flip(0).numpy(), aff.numpy(),
                                           (80, 96), **PAPER)
    np.testing.assert_array_equal(label, label_rev)
    torch.testing.assert_close(scores, scores_rev)
    assert set(np.unique(label)) <= {0, 3, 10, 15}


def test_random_walk_leaves_the_thread_setting_alone():
    """An algorithm does not change process-wide state (the stage chooses the threads)."""
    before = torch.get_num_threads()
    aff = random_affinity(9, 10, 13, torch.float32)
    random_walk(torch.rand(2, 9, 10), aff, 9, 10, beta=8, logt=2, radius=5)
    assert torch.get_num_threads() == before


def test_generalised_pieces_reproduce_psa_matrix():
    """PSA's affinities placed on the full grid (0 off the from block) give, through the shared
    ``grid_affinity_dense`` / ``grid_transition``, PSA's own dense matrix and transition."""
    from affinitynet.algorithms.random_walk import _full_grid_affinity, grid_affinity_dense, grid_transition

    h, w = 9, 14
    aff = random_affinity(h, w, 21)
    weights = _full_grid_affinity(aff, h, w, 5)
    torch.testing.assert_close(grid_affinity_dense(weights, pair_offsets(5)), dense_affinity(aff, h, w, 5),
                               rtol=0, atol=0)
    reverse = list(range(len(pair_offsets(5))))[::-1]
    shuffled = grid_transition(weights[reverse], [pair_offsets(5)[i] for i in reverse], 8).to_dense()
    torch.testing.assert_close(shuffled, transition_csr(aff, h, w, beta=8, radius=5).to_dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="forward"):
        grid_transition(weights[:1], [(0, -1)], 8)
