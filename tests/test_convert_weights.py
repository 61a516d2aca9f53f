"""convert-weights stage and load_weights dispatch."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from affinitynet.errors import InputError
from affinitynet.stages import convert_weights
from affinitynet.stages.convert_weights import ConvertWeightsConfig, run
from affinitynet.weights import load_weights
from conftest import fixture_file

CASES = [(n, "mxnet_small_expected.npz") for n in (
    "mxnet_small.params", "mxnet_small_v1.params", "mxnet_small_v3.params",
    "mxnet_small_legacy.params", "mxnet_small_noprefix.params")] + [
    (n, "caffe_small_expected.npz") for n in (
        "vgg16_small.caffemodel", "vgg16_small_v1.caffemodel", "vgg16_small_v1_upgraded.caffemodel")]


def _assert_equal_state(state: dict, expected: np.lib.npyio.NpzFile) -> None:
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        assert state[key].dtype == torch.float32 and tuple(state[key].shape) == expected[key].shape
        np.testing.assert_array_equal(state[key].numpy(), expected[key])


@pytest.mark.parametrize("name, expected", CASES, ids=[c[0] for c in CASES])
def test_convert_writes_loadable_pth(name, expected, tmp_path):
    out = tmp_path / "sub" / "out.pth"
    result = run(ConvertWeightsConfig(input=str(fixture_file(name)), output=str(out)))
    exp = np.load(fixture_file(expected))
    assert result["output"] == str(out) and result["num_tensors"] == len(exp.files)
    assert sorted(os.listdir(out.parent)) == ["out.pth"]  # no temporary file left behind
    _assert_equal_state(torch.load(out, weights_only=True, map_location="cpu"), exp)


def test_report_against_our_backbones(tmp_path):
    res = run(ConvertWeightsConfig(str(fixture_file("mxnet_small.params")), str(tmp_path / "r.pth")))
    exp = np.load(fixture_file("mxnet_small_expected.npz"))
    assert res["backbone"] == "resnet38" and res["unexpected"] == []
    assert "b3.conv_branch2a.weight" in res["missing"] and "b2.bn_branch2b1.running_var" in res["missing"]
    assert not set(res["missing"]) & set(exp.files)
    assert not any(k.endswith("num_batches_tracked") or k.startswith("fc8") for k in res["missing"])
    assert len(res["missing"]) == 191 - len(exp.files)
    # Tiny fixture shapes differ from the full-size network.
    assert any(m.startswith("conv1a.weight [4, 3, 3, 3] vs [64, 3, 3, 3]") for m in res["mismatched"])
    res = run(ConvertWeightsConfig(str(fixture_file("vgg16_small.caffemodel")), str(tmp_path / "v.pth")))
    assert res["backbone"] == "vgg16" and res["missing"] == [] and res["unexpected"] == []
    assert len(res["mismatched"]) == 30


def test_report_with_fake_backbone_and_pth_input(tmp_path, monkeypatch):
    shapes = {"conv1a.weight": (4, 3, 3, 3), "b2.conv_branch1.weight": (6, 4, 1, 1),
              "extra.weight": (1,)}
    monkeypatch.setattr(convert_weights, "_backbone_shapes", lambda arch: shapes if arch else None)
    first = tmp_path / "a.pth"
    run(ConvertWeightsConfig(str(fixture_file("mxnet_small.params")), str(first)))
    # A .pth input: recognised as ResNet-38 by its keys and converted again unchanged.
    res = run(ConvertWeightsConfig(str(first), str(tmp_path / "b.pth")))
    assert res["backbone"] == "resnet38"
    assert res["missing"] == ["extra.weight"] and res["mismatched"] == []
    assert "bn7.weight" in res["unexpected"] and "conv1a.weight" not in res["unexpected"]
    _assert_equal_state(torch.load(tmp_path / "b.pth", weights_only=True),
                        np.load(fixture_file("mxnet_small_expected.npz")))


def test_list_file_and_bad_input_fail_cleanly(tmp_path):
    out = tmp_path / "o.pth"
    with pytest.raises(InputError, match="list without names"):
        run(ConvertWeightsConfig(str(fixture_file("mxnet_small_list.params")), str(out)))
    with pytest.raises(InputError, match="storage type 1"):
        run(ConvertWeightsConfig(str(fixture_file("mxnet_sparse.params")), str(out)))
    with pytest.raises(InputError, match="unrecognized MXNet keys 'f32'"):
        run(ConvertWeightsConfig(str(fixture_file("mxnet_dtypes.params")), str(out)))
    assert not out.exists() and os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="no input"):
        run(ConvertWeightsConfig(input="", output=str(out)))


def test_load_weights_dispatch_and_errors(tmp_path):
    exp = np.load(fixture_file("mxnet_small_expected.npz"))
    state = load_weights(fixture_file("mxnet_small_legacy.params"))
    _assert_equal_state(state, exp)
    tensors = {k: torch.from_numpy(exp[k]) for k in exp.files}
    for i, wrapped in enumerate([tensors, {"state_dict": tensors, "epoch": 3}, {"model": tensors},
                                 {f"module.{k}": v for k, v in tensors.items()}]):
        path = tmp_path / f"w{i}.pt"
        torch.save(wrapped, path)
        _assert_equal_state(load_weights(path), exp)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(InputError, match="bad.pth: not a loadable torch weight file"):
        load_weights(bad)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(InputError, match="expected a state dict"):
        load_weights(tmp_path / "list.pth")
    with pytest.raises(InputError, match="unsupported weight file type '.npz'"):
        load_weights(fixture_file("mxnet_small_raw.npz"))
    with pytest.raises(InputError, match="not found"):
        load_weights(tmp_path / "absent.caffemodel")
    # Caffe with target shapes: legacy 1x1x1xN biases take the model's (N,).
    target = {k: np.load(fixture_file("caffe_small_expected.npz"))[k].shape
              for k in ("conv1_1.weight", "conv1_1.bias")}
    state = load_weights(fixture_file("vgg16_small_v1.caffemodel"), target_shapes=target)
    assert tuple(state["conv1_1.bias"].shape) == target["conv1_1.bias"]
    with pytest.raises(InputError, match=r"vgg16_small_v1.caffemodel: conv1_1.bias"):
        load_weights(fixture_file("vgg16_small_v1.caffemodel"), target_shapes={"conv1_1.bias": (3,)})

