"""The parity tests themselves: shipped data by default, other folders through the variables,
every case of a folder run, a missing folder or case a failure, and one comparison helper that
holds on every reference (all-zero ones included)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATA, FIXTURES, GOLDEN, REPO, assert_rel_close, rel_err

NORMALIZE_TEST = "tests/test_transforms.py::test_normalize_matches_psa"


def _pytest(*args: str, golden: Path | None = None, fixtures: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("AFFINITYNET_GOLDEN", "AFFINITYNET_FIXTURES")}
    if golden is not None:
        env["AFFINITYNET_GOLDEN"] = str(golden)
    if fixtures is not None:
        env["AFFINITYNET_FIXTURES"] = str(fixtures)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_shipped_data_is_the_default():
    if "AFFINITYNET_GOLDEN" not in os.environ:
        assert GOLDEN == DATA / "golden"
    if "AFFINITYNET_FIXTURES" not in os.environ:
        assert FIXTURES == DATA / "weights"
    for kind in ("pairs_r5_", "aff_labels_", "normalize_", "state_dict_keys_", "net_resnet38_", "net_vgg16_",
                 "optim_", "cam_crf_", "conf_labels_", "random_walk_image_", "random_walk_net_", "aff_sample_"):
        assert list((DATA / "golden").glob(kind + "*")), kind
    assert (DATA / "weights" / "SHA256SUMS").is_file()
    out = _pytest("--collect-only", NORMALIZE_TEST)
    shipped = sorted(p.stem for p in (DATA / "golden").glob("normalize_*.npz"))
    assert shipped and all(stem in out.stdout for stem in shipped), out.stdout


def test_missing_golden_folder_fails(tmp_path):
    out = _pytest(NORMALIZE_TEST, golden=tmp_path / "absent")
    assert out.returncode == 1, out.stdout
    assert "1 failed" in out.stdout and "skipped" not in out.stdout
    assert f"golden folder {tmp_path / 'absent'} does not exist" in out.stdout


def test_golden_folder_without_a_case_fails(tmp_path):
    out = _pytest(NORMALIZE_TEST, golden=tmp_path)
    assert out.returncode == 1, out.stdout
    assert "no golden case matches normalize_*.npz" in out.stdout and "skipped" not in out.stdout


def test_missing_fixture_folder_fails(tmp_path):
    out = _pytest("tests/test_weights_mxnet.py::test_sha256sums_match", fixtures=tmp_path / "absent")
    assert out.returncode == 1, out.stdout
    assert "weight fixture" in out.stdout and "does not exist" in out.stdout and "skipped" not in out.stdout


def test_every_case_in_the_given_folder_runs(tmp_path):
    # any case of the shipped data (the folder AFFINITYNET_GOLDEN names may hold other cases)
    source = sorted((DATA / "golden").glob("normalize_*.npz"))[0]
    shutil.copy(source, tmp_path / source.name)
    d = dict(np.load(source))
    # a second case written from the documented formulas, as a new golden file would be
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (4, 9, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.savez(tmp_path / "normalize_7.npz", image=image,
             resnet38=((image / 255.0 - mean) / std).astype(np.float32),
             vgg16=(image[..., ::-1] - np.array([104.008, 116.669, 122.675])).astype(np.float32))
    assert set(d) == {"image", "resnet38", "vgg16"}
    out = _pytest(NORMALIZE_TEST, golden=tmp_path)
    assert out.returncode == 0, out.stdout
    assert "2 passed" in out.stdout and "normalize_7" in out.stdout and source.stem in out.stdout


def test_rel_err_of_an_all_zero_reference_is_exact():
    zeros = np.zeros((2, 3), np.float32)
    assert rel_err(zeros, zeros) == 0.0
    assert rel_err(torch.zeros(2, 3), zeros) == 0.0
    assert rel_err(np.full((2, 3), 1e-12), zeros) == math.inf
    assert rel_err(np.zeros((0, 5)), np.zeros((0, 5))) == 0.0
    with pytest.raises(AssertionError, match="relative error inf"):
        assert_rel_close(np.full((2, 3), 1e-12), zeros, 1e-4)


def test_rel_err_scale_and_nan():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    assert rel_err(ref + np.array([[0, 0], [0, 0.002]]), ref) == pytest.approx(0.0005)
    assert rel_err(torch.tensor(ref, dtype=torch.float32), ref) < 1e-7
    assert math.isnan(rel_err(np.array([[np.nan, 0], [0, 0]]), ref))
    with pytest.raises(AssertionError):
        assert_rel_close(np.array([[np.nan, 0], [0, 0]]), ref, 1e-4)
    with pytest.raises(AssertionError, match="shape"):
        rel_err(np.zeros(3), np.zeros(4))
