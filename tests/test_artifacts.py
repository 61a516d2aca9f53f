"""Artifact formats: CAM files, atomic writes, checkpoints that never run code."""

import errno
import pickle

import numpy as np
import pytest
import torch

from affinitynet import artifacts
from affinitynet.errors import InputError


def test_cam_round_trip_and_checks(tmp_path):
    keys = np.array([2, 7])
    maps = np.random.default_rng(0).random((2, 13, 17)).astype(np.float32)
    path = tmp_path / "a.npz"
    artifacts.save_cam(path, keys, maps, num_classes=20)
    k, m = artifacts.load_cam(path, (13, 17), 20)
    assert k.tolist() == [2, 7] and m.dtype == np.float32
    np.testing.assert_allclose(m, maps, atol=1e-3)
    with pytest.raises(InputError, match=r"a\.npz.*13x17.*12x17"):
        artifacts.load_cam(path, (12, 17), 20)
    with pytest.raises(InputError, match="21"):
        artifacts.load_cam(path, (13, 17), 21)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(InputError, match="bad.npz"):
        artifacts.load_cam(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="does not exist"):
        artifacts.load_cam(tmp_path / "missing.npz")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_disk_full_is_a_clear_error(tmp_path):
    target = tmp_path / "x.png"
    with pytest.raises(InputError, match="no space left"):
        with artifacts.atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    artifacts.save_checkpoint(path, {"model": {"w": torch.ones(2)}, "epoch": 3})
    assert artifacts.load_checkpoint(path)["epoch"] == 3

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, evil, pickle_module=pickle)
    with pytest.raises(InputError, match="evil.pth"):
        artifacts.load_checkpoint(evil)


def test_remove_stale_tmp(tmp_path):
    (tmp_path / (artifacts.TMP_PREFIX + "a.png.123")).write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    assert artifacts.remove_stale_tmp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["b.png"]


def test_cam_files_are_byte_identical_for_equal_arrays(tmp_path):
    import time

    maps = np.random.default_rng(1).random((1, 9, 11)).astype(np.float32)
    artifacts.save_cam(tmp_path / "a.npz", np.array([3]), maps, 20)
    time.sleep(1.1)  # a zip timestamp would differ now
    artifacts.save_cam(tmp_path / "b.npz", np.array([3]), maps, 20)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_boundary_maps_round_trip_as_8_bit_png(tmp_path):
    boundary = np.linspace(0, 1, 7 * 9, dtype=np.float32).reshape(7, 9)
    artifacts.save_boundary(tmp_path / "b.png", boundary)
    back = artifacts.load_boundary(tmp_path / "b.png")
    assert back.shape == (7, 9) and back.dtype == np.float32
    assert np.abs(back - boundary).max() <= 0.5 / 255 + 1e-7 and back[0, 0] == 0 and back[-1, -1] == 1
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="rgb.png: a boundary map is an 8-bit grayscale PNG"):
        artifacts.load_boundary(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="unreadable boundary map"):
        artifacts.load_boundary(tmp_path / "missing.png")


def test_cam_files_keep_irns_stride4_maps_only_when_given(tmp_path):
    keys, maps = np.array([1, 4]), np.random.default_rng(0).random((2, 9, 14)).astype(np.float32)
    artifacts.save_cam(tmp_path / "a.npz", keys, maps, 5)
    assert artifacts.load_strided_cam(tmp_path / "a.npz") is None
    strided = maps[:, ::4, ::4]
    artifacts.save_cam(tmp_path / "b.npz", keys, maps, 5, strided)
    assert np.abs(artifacts.load_strided_cam(tmp_path / "b.npz") - strided).max() < 1e-3
    got_keys, got_maps = artifacts.load_cam(tmp_path / "b.npz", (9, 14), 5)  # readers of maps see no change
    assert got_keys.tolist() == [1, 4] and np.abs(got_maps - maps).max() < 1e-3
    with pytest.raises(ValueError, match="stride-4 maps"):
        artifacts.save_cam(tmp_path / "c.npz", keys, maps, 5, strided[:1])
