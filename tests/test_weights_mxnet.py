"""MXNet .params reader and ResNet-38 key mapping against bytes written by real MXNet."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc

import numpy as np
import pytest
import torch

from affinitynet.errors import InputError
from affinitynet.weights.mxnet import mxnet_to_torch_key, read_mxnet_params, resnet38_from_mxnet
from conftest import fixture_file

DICT_FILES = ["mxnet_small.params", "mxnet_small_v1.params", "mxnet_small_v3.params",
              "mxnet_small_legacy.params", "mxnet_small_noprefix.params"]


def _strip(name: str) -> str:
    return name.split(":", 1)[1]


# ---------------------------------------------------------------------------------------------
# tiny writer for hand-made V2 files (the layout of the README)
def _v2_array(arr: np.ndarray, flag: int = 0, *, dims=None, magic: int = 0xF993FAC9) -> bytes:
    dims = arr.shape if dims is None else dims
    head = struct.pack("<Ii", magic, 0) + struct.pack(f"<i{len(dims)}q", len(dims), *dims)
    return head + struct.pack("<iii", 1, 0, flag) + arr.tobytes()


def _file(blobs: list[bytes], names: list[str]) -> bytes:
    out = struct.pack("<QQQ", 0x112, 0, len(blobs)) + b"".join(blobs)
    out += struct.pack("<Q", len(names))
    for n in names:
        out += struct.pack("<Q", len(n.encode())) + n.encode()
    return out


# ---------------------------------------------------------------------------------------------
def test_sha256sums_match():
    sums = fixture_file("SHA256SUMS")
    lines = [ln.split() for ln in sums.read_text().splitlines() if ln.strip()]
    assert lines
    for digest, name in lines:
        data = (sums.parent / name.lstrip("*")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


@pytest.mark.parametrize("name", DICT_FILES)
def test_dict_files_read_raw_arrays(name):
    arrays = read_mxnet_params(fixture_file(name))
    raw = np.load(fixture_file("mxnet_small_raw.npz"))
    order = json.loads(fixture_file("mxnet_small_names.json").read_text())
    assert isinstance(arrays, dict)
    want = order if "noprefix" not in name else [_strip(k) for k in order]
    assert list(arrays) == want
    for key, full in zip(want, order):
        assert arrays[key].dtype == raw[full].dtype and arrays[key].shape == raw[full].shape
        np.testing.assert_array_equal(arrays[key], raw[full])


@pytest.mark.parametrize("name", DICT_FILES)
def test_dict_files_map_to_expected_state_dict(name):
    state = resnet38_from_mxnet(read_mxnet_params(fixture_file(name)))
    expected = np.load(fixture_file("mxnet_small_expected.npz"))
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        assert isinstance(state[key], torch.Tensor)
        assert state[key].dtype == torch.float32
        assert tuple(state[key].shape) == expected[key].shape
        np.testing.assert_array_equal(state[key].numpy(), expected[key])


def test_list_file_reads_in_order_and_cannot_be_mapped():
    arrays = read_mxnet_params(fixture_file("mxnet_small_list.params"))
    raw = np.load(fixture_file("mxnet_small_raw.npz"))
    order = json.loads(fixture_file("mxnet_small_names.json").read_text())
    assert isinstance(arrays, list) and len(arrays) == len(order)
    for arr, key in zip(arrays, order):
        np.testing.assert_array_equal(arr, raw[key])
        assert arr.shape == raw[key].shape
    with pytest.raises(InputError, match="list"):
        resnet38_from_mxnet(arrays)  # type: ignore[arg-type]


def test_dtypes_file_keeps_every_dtype():
    arrays = read_mxnet_params(fixture_file("mxnet_dtypes.params"))
    expected = np.load(fixture_file("mxnet_dtypes_expected.npz"))
    assert list(arrays) == list(expected.files)
    for key in expected.files:
        assert arrays[key].dtype == expected[key].dtype, key
        assert arrays[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(arrays[key], expected[key])
        assert arrays[key].flags.writeable and arrays[key].flags.c_contiguous


def test_sparse_file_is_refused_naming_the_key():
    path = fixture_file("mxnet_sparse.params")
    with pytest.raises(InputError) as info:
        read_mxnet_params(path)
    msg = str(info.value)
    assert str(path) in msg and "storage type 1 (row_sparse)" in msg and "'row_sparse'" in msg


def test_sparse_csr_alone_is_refused():
    # Keep only the csr array (and its name) of the real sparse file to reach the csr path.
    data = fixture_file("mxnet_sparse.params").read_bytes()
    layout = json.loads(fixture_file("mxnet_small_layout.json").read_text())["mxnet_sparse.params"]
    csr = layout["arrays"][1]
    end = layout["arrays"][2]["offset"]
    blob = data[csr["offset"]:end]
    with pytest.raises(InputError, match=r"storage type 2 \(csr\) for key 'csr'"):
        read_mxnet_params(_file([blob], ["csr"]))


def test_data_comes_from_the_documented_offsets():
    layout = json.loads(fixture_file("mxnet_small_layout.json").read_text())
    dtypes = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8"}
    for fname, info in layout.items():
        if fname == "mxnet_sparse.params":
            continue
        data = fixture_file(fname).read_bytes()
        assert len(data) == info["file_bytes"]
        arrays = read_mxnet_params(data)
        if isinstance(arrays, dict):
            assert list(arrays) == [a["name"] for a in info["arrays"]]
            arrays = list(arrays.values())
        assert len(arrays) == info["num_arrays"]
        for arr, a in zip(arrays, info["arrays"]):
            assert list(arr.shape) == a["shape"] and arr.nbytes == a["data_bytes"]
            count = int(np.prod(a["shape"]))
            ref = np.frombuffer(data, dtypes[a["type_flag"]], count, a["data_offset"])
            np.testing.assert_array_equal(arr.ravel(), ref)


def test_small_mapping_table():
    mapping = json.loads(fixture_file("mxnet_small_mapping.json").read_text())
    for mx, torch_key in mapping.items():
        assert mxnet_to_torch_key(mx) == torch_key
        assert mxnet_to_torch_key(_strip(mx)) == torch_key


def test_full_resnet38_names_map_exactly():
    info = json.loads(fixture_file("resnet38_names_shapes.json").read_text())
    entries = info["entries"]
    assert len(entries) == info["num_arrays"]
    for e in entries:
        assert mxnet_to_torch_key(e["mxnet_key"]) == e["torch_key"], e["mxnet_key"]
    # One distinct 1-element value per array shows where each one went.
    arrays = {e["mxnet_key"]: np.full(1, i, np.float32) for i, e in enumerate(entries)}
    state = resnet38_from_mxnet(arrays)
    want = {e["torch_key"]: i for i, e in enumerate(entries) if e["torch_key"] is not None}
    assert len(state) == info["num_mapped"] == len(want)
    assert {k: int(v.item()) for k, v in state.items()} == want
    assert info["mapped_floats"] == sum(
        int(np.prod(e["shape"])) for e in entries if e["torch_key"] is not None)


def test_bn7_trap_and_dropped_classifier():
    assert mxnet_to_torch_key("arg:bn7a_branch2b1_gamma") == "b7.bn_branch2b1.weight"
    assert mxnet_to_torch_key("aux:bn7a_branch2b2_moving_var") == "b7.bn_branch2b2.running_var"
    assert mxnet_to_torch_key("arg:bn7_gamma") == "bn7.weight"
    assert mxnet_to_torch_key("aux:bn7_moving_mean") == "bn7.running_mean"
    assert mxnet_to_torch_key("res4b5_branch2b1_weight") == "b4_5.conv_branch2b1.weight"
    assert mxnet_to_torch_key("arg:linear1000_weight") is None
    with pytest.raises(KeyError):
        mxnet_to_torch_key("arg:fc8_weight")


def test_unknown_and_colliding_names_are_input_errors():
    a = np.zeros(1, np.float32)
    with pytest.raises(InputError, match="fc8_weight"):
        resnet38_from_mxnet({"arg:conv1a_weight": a, "arg:fc8_weight": a})
    with pytest.raises(InputError, match="conv1a.weight"):
        resnet38_from_mxnet({"arg:conv1a_weight": a, "conv1a_weight": a})


def test_hand_made_v2_v3_none_scalar_and_bfloat16():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    bf = np.array([0x3F80, 0xC000], dtype="<u2")  # bfloat16 1.0, -2.0
    none_v2 = struct.pack("<Iii", 0xF993FAC9, 0, 0)
    scalar_v3 = struct.pack("<Iii", 0xF993FACA, 0, 0) + struct.pack("<iii", 1, 0, 0) \
        + np.float32(7).tobytes()
    data = _file([_v2_array(x), _v2_array(bf, 12), none_v2, scalar_v3],
                 ["x", "bf", "none", "scalar"])
    out = read_mxnet_params(data)
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["bf"], np.array([1.0, -2.0], np.float32))
    assert out["bf"].dtype == np.float32
    assert out["none"].shape == (0,)
    assert out["scalar"].shape == () and out["scalar"] == 7


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d[:7], "truncated"),
    (lambda d: b"\x13" + d[1:], "not an MXNet NDArray file"),
    (lambda d: d + b"\x00", "unexpected bytes after the name list"),
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:100], "truncated"),
])
def test_malformed_files_name_the_problem(mutate, message, tmp_path):
    path = tmp_path / "bad.params"
    path.write_bytes(mutate(fixture_file("mxnet_small.params").read_bytes()))
    with pytest.raises(InputError, match=message) as info:
        read_mxnet_params(path)
    assert str(path) in str(info.value)


def test_every_truncation_is_an_input_error():
    data = fixture_file("mxnet_small_v1.params").read_bytes()
    for n in range(0, len(data), 7):
        with pytest.raises(InputError):
            read_mxnet_params(data[:n])


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot open"):
        read_mxnet_params(tmp_path / "absent.params")


def _assert_cheap(data: bytes, match: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match):
            read_mxnet_params(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # a huge claim is refused before anything of its size is allocated


def test_huge_claims_in_tiny_files_fail_fast_without_allocating():
    # V2 header claiming 10^6 x 10^6 float32 (4 TB) in a ~100-byte file.
    head = struct.pack("<Iii", 0xF993FAC9, 0, 2) + struct.pack("<qq", 10**6, 10**6)
    blob = head + struct.pack("<iii", 1, 0, 0) + b"\0" * 40
    _assert_cheap(_file([blob], ["w"]), "truncated")
    # Legacy headers claiming 2^48 elements, and (2^32 - 1)^4 elements.
    blob = struct.pack("<I4I", 4, 1, *[0xFFFF] * 3) + struct.pack("<iii", 1, 0, 0) + b"\0" * 16
    _assert_cheap(_file([blob], ["w"]), "truncated")
    blob = struct.pack("<I4I", 4, *[0xFFFFFFFF] * 4) + struct.pack("<iii", 1, 0, 0) + b"\0" * 16
    _assert_cheap(_file([blob], ["w"]), "impossibly large")
    # Array count 2^63, ndim 2^31 - 1, negative dimension, unknown dtype.
    _assert_cheap(struct.pack("<QQQ", 0x112, 0, 1 << 63) + b"\0" * 64, "array count")
    _assert_cheap(_file([struct.pack("<Iii", 0xF993FAC9, 0, 2**31 - 1)], ["w"]), "ndim")
    _assert_cheap(_file([struct.pack("<Iiiq", 0xF993FAC9, 0, 1, -5)], ["w"]), "negative")
    _assert_cheap(_file([_v2_array(np.zeros(2, np.float32), 99)], ["w"]), "type flag 99")
    # A zero dimension next to 2^62: no data, but no numpy array can have that shape.
    _assert_cheap(_file([_v2_array(np.zeros(0, np.float32), dims=(0, 1 << 62))], ["w"]),
                  "impossibly large")
    # Name length 2^64 - 1.
    data = _file([_v2_array(np.zeros(2, np.float32))], [])[:-8] + struct.pack("<QQ", 1, 2**64 - 1)
    _assert_cheap(data, "name 0")
