"""Caffe .caffemodel reader and VGG-16 mapping against files written by real Caffe."""

from __future__ import annotations

import json
import re
import tracemalloc

import numpy as np
import pytest
import torch

from affinitynet.errors import InputError
from affinitynet.weights.caffe import (VGG16_LAYERS, caffe_to_torch_shape, read_caffemodel,
                                       vgg16_from_caffe)
from conftest import fixture_file

FILES = ["vgg16_small.caffemodel", "vgg16_small_v1.caffemodel",
         "vgg16_small_v1_upgraded.caffemodel"]


# ---------------------------------------------------------------------------------------------
# minimal protobuf writer for hand-made messages
def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((v & 0x7F) | (0x80 if v > 0x7F else 0))
        v >>= 7
        if not v:
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _ld(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _blob(values: np.ndarray, shape=None, legacy=None, double=False, packed=True) -> bytes:
    out = b""
    if legacy is not None:
        for f, d in zip((1, 2, 3, 4), legacy):
            out += _key(f, 0) + _varint(d)
    if packed:
        out += _ld(8 if double else 5, values.astype("<f8" if double else "<f4").tobytes())
    else:
        for v in values:
            out += _key(5, 5) + np.float32(v).tobytes()
    if shape is not None:
        out += _ld(7, _ld(1, b"".join(_varint(d) for d in shape)))
    return out


def _layer(name: str, blobs: list[bytes], v1: bool = False) -> bytes:
    body = _ld(4 if v1 else 1, name.encode()) + b"".join(_ld(6 if v1 else 7, b) for b in blobs)
    return _ld(2 if v1 else 100, body)


def _prototxt_param_layers(text: str) -> list[str]:
    """Names of the layers with parameters (Convolution) in a prototxt, in order."""
    return re.findall(r'layer\s*\{\s*name:\s*"([^"]+)"\s*type:\s*"Convolution"', text)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("with_target", [False, True])
def test_fixture_maps_to_expected_state_dict(name, with_target):
    expected = np.load(fixture_file("caffe_small_expected.npz"))
    targets = {k: expected[k].shape for k in expected.files} if with_target else None
    state = vgg16_from_caffe(read_caffemodel(fixture_file(name)), targets)
    assert list(state) == list(expected.files)  # fc8 ignored, layer order kept
    for key in expected.files:
        assert state[key].dtype == torch.float32
        assert tuple(state[key].shape) == expected[key].shape
        np.testing.assert_array_equal(state[key].numpy(), expected[key])


def test_target_prototxt_has_exactly_the_mapped_layers():
    text = fixture_file("vgg16_small_target.prototxt").read_text()
    assert tuple(_prototxt_param_layers(text)) == VGG16_LAYERS


@pytest.mark.parametrize("name", FILES)
def test_raw_reader_gives_every_blob_with_caffe_shapes(name):
    layers = read_caffemodel(fixture_file(name))
    blobs = np.load(fixture_file("caffe_small_all_blobs.npz"))
    assert "fc8" in layers
    for key in blobs.files:
        layer, kind = key.rsplit(".", 1)
        arr = layers[layer][0 if kind == "weight" else 1]
        assert arr.dtype == np.float32 and arr.size == blobs[key].size
        np.testing.assert_array_equal(arr.ravel(), blobs[key].ravel())
    layout = json.loads(fixture_file("caffe_small_layout.json").read_text()).get(name)
    if layout is not None:  # the upgraded file has no layout entry
        assert list(layers) == [lay["name"] for lay in layout["layers"]]
        for lay in layout["layers"]:
            got = [list(b.shape) for b in layers[lay["name"]]]
            assert got == [b["shape"] or b["legacy_nchw"] for b in lay["blobs"]], lay["name"]
    else:  # upgraded: new-style layers, legacy 4-D blob dims
        assert layers["conv1_1"][1].shape == (1, 1, 1, 2)


def test_full_size_vgg16_shapes_and_names():
    info = json.loads(fixture_file("vgg16_20M_names_shapes.json").read_text())
    assert len(info["blobs"]) == info["num_blobs"]
    for b in info["blobs"]:
        key, caffe, legacy = b["torch_key"], tuple(b["caffe_shape"]), tuple(b["v1_legacy_nchw"])
        assert key == f"{b['layer']}.{('weight', 'bias')[b['blob_index']]}"
        for src in (caffe, legacy):
            assert caffe_to_torch_shape(key, src) == caffe
            assert caffe_to_torch_shape(key, src, caffe) == caffe
    assert sum(int(np.prod(b["caffe_shape"])) for b in info["blobs"]) == info["total_floats"]
    # The names: zero-size dummy blobs in full-size layer order, plus an ignored fc8.
    layers: dict[str, list[np.ndarray]] = {"data": [], "fc8": [np.zeros((0, 1, 1, 1))] * 2}
    for b in info["blobs"]:
        shape = (0,) + tuple(b["v1_legacy_nchw"][1:])
        layers.setdefault(b["layer"], []).append(np.zeros(shape, np.float32))
    state = vgg16_from_caffe(layers)
    assert list(state) == [b["torch_key"] for b in info["blobs"]]


def test_shape_rule_refuses_real_mismatches():
    with pytest.raises(InputError, match="conv1_1.weight"):
        caffe_to_torch_shape("conv1_1.weight", (3, 2, 3, 3), (2, 3, 3, 3))  # same count
    with pytest.raises(InputError, match="fc6.bias"):
        caffe_to_torch_shape("fc6.bias", (1, 1, 1, 7), (6,))
    with pytest.raises(InputError, match="not a conv weight"):
        caffe_to_torch_shape("fc6.weight", (4, 3, 2))
    assert caffe_to_torch_shape("fc7.weight", (6, 5)) == (6, 5, 1, 1)
    assert caffe_to_torch_shape("fc7.weight", (1, 1, 6, 5), (6, 5)) == (6, 5)
    layers = read_caffemodel(fixture_file("vgg16_small_v1.caffemodel"))
    with pytest.raises(InputError, match="conv2_1.weight"):
        vgg16_from_caffe(layers, {"conv2_1.weight": (3, 2, 3, 1)})
    layers["conv1_1"] = layers["conv1_1"] * 2
    with pytest.raises(InputError, match="4 blobs"):
        vgg16_from_caffe(layers)


def test_hand_made_variants_unpacked_double_and_shape_order():
    w = np.arange(6, dtype=np.float32)
    data = (_layer("conv1_1", [_blob(w, shape=[2, 3, 1, 1], packed=False),
                              _blob(np.array([0.5, -1.0]), shape=[2], double=True)])
            + _layer("relu", []))
    layers = read_caffemodel(data)
    assert list(layers) == ["conv1_1", "relu"] and layers["relu"] == []
    np.testing.assert_array_equal(layers["conv1_1"][0], w.reshape(2, 3, 1, 1))
    assert layers["conv1_1"][1].dtype == np.float64
    state = vgg16_from_caffe(layers)
    assert state["conv1_1.bias"].dtype == torch.float32
    np.testing.assert_array_equal(state["conv1_1.bias"].numpy(), [0.5, -1.0])
    # Unpacked dims (one varint per key) and legacy dims winning over shape.
    unpacked = _ld(5, w.tobytes()) + _ld(7, _key(1, 0) + _varint(3) + _key(1, 0) + _varint(2))
    assert read_caffemodel(_layer("a", [unpacked]))["a"][0].shape == (3, 2)
    both = _blob(w, shape=[6], legacy=[1, 1, 2, 3])
    assert read_caffemodel(_layer("a", [both]))["a"][0].shape == (1, 1, 2, 3)


@pytest.mark.parametrize("data, match", [
    (_layer("a", []) + _layer("b", [], v1=True), "both"),
    (_layer("a", [_blob(np.zeros(5), shape=[2, 3])]), "needs 6 values but the blob holds 5"),
    (_layer("a", [_blob(np.zeros(1), shape=[-1])]), "negative"),
    (_layer("a", [_ld(5, b"\0" * 6)]), "not a multiple of 4"),
    (_layer("a", [_ld(7, _ld(1, _varint(1) * 33))]), "more than 32 axes"),
    (_ld(100, _ld(1, b"\xff\xfe")), "not valid UTF-8"),
    (b"\x80" * 11, "longer than 10 bytes"),
    (_key(100, 2) + _varint(1 << 62), "truncated"),
    (_key(100, 3), "invalid field key"),
    (_ld(1, b"just a name"), "no layers found"),
    (b"", "no layers found"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_malformed_messages_name_the_problem(data, match):
    with pytest.raises(InputError, match=match):
        read_caffemodel(data)


def test_truncated_file_names_file_and_byte(tmp_path):
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(fixture_file("vgg16_small.caffemodel").read_bytes()[:0x100])
    with pytest.raises(InputError, match=r"truncated.*\(at byte \d+\)") as info:
        read_caffemodel(path)
    assert str(path) in str(info.value)


def test_huge_claims_fail_fast_without_allocating():
    cases = [
        _layer("a", [_ld(7, _ld(1, _varint(10**6) * 2))]),  # 10^12 elements, no data
        _layer("a", [_ld(5, b"")[:1] + _varint(1 << 40)]),  # data length 2^40
        _key(2, 2) + _varint((1 << 64) - 1),  # layer length 2^64 - 1
        _layer("a", [_ld(7, _ld(1, _varint(0) + _varint(1 << 62)))]),  # zero-size but huge
    ]
    for data in cases:
        tracemalloc.start()
        try:
            with pytest.raises(InputError):
                read_caffemodel(data)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20  # refused before anything of the claimed size is allocated
