"""Fuzzing the weight readers: corrupt input gives InputError or a valid result, fast and small.

Mutations (byte flips, overwritten integers, truncations, insertions, deletions) start from the
real fixture files so they reach deep into the layouts; random bytes cover the rest.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from affinitynet.errors import InputError
from affinitynet.weights.caffe import read_caffemodel, vgg16_from_caffe
from affinitynet.weights.mxnet import read_mxnet_params, resnet38_from_mxnet
from conftest import fixture_file

MXNET = ("mxnet_small.params", "mxnet_small_v1.params", "mxnet_small_v3.params",
         "mxnet_small_legacy.params", "mxnet_small_list.params", "mxnet_dtypes.params",
         "mxnet_sparse.params")
CAFFE = ("vgg16_small.caffemodel", "vgg16_small_v1.caffemodel",
         "vgg16_small_v1_upgraded.caffemodel")
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
INTERESTING = [0, 1, 4, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 2**63, 2**64 - 1,
               0xF993FAC8, 0xF993FAC9, 0xF993FACA, 0x112]


@lru_cache(maxsize=None)
def _fixture_bytes(names: tuple[str, ...]) -> tuple[bytes, ...]:
    return tuple(fixture_file(n).read_bytes() for n in names)


def _mutate(draw, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "int", "truncate", "insert", "delete"]))
        # Half the time aim at the first 96 bytes, where the headers are.
        hi = len(buf) if draw(st.booleans()) else min(len(buf), 96)
        pos = draw(st.integers(0, hi))
        if op == "flip" and pos < len(buf):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "int":
            value = draw(st.sampled_from(INTERESTING) | st.integers(0, 2**64 - 1))
            width = draw(st.sampled_from([1, 4, 8]))
            buf[pos:pos + width] = (value & ((1 << 8 * width) - 1)).to_bytes(width, "little")
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "delete":
            del buf[pos:pos + draw(st.integers(1, 12))]
    return bytes(buf)


def _check_mxnet(data: bytes) -> None:
    try:
        out = read_mxnet_params(data)
    except InputError as e:
        assert str(e).startswith("<bytes>: ")
        return
    arrays = list(out.values()) if isinstance(out, dict) else out
    assert all(isinstance(a, np.ndarray) for a in arrays)
    # bfloat16 widens to float32, so at most twice the file.
    assert sum(a.nbytes for a in arrays) <= 2 * len(data)
    if isinstance(out, dict):
        try:
            resnet38_from_mxnet(out)
        except InputError:
            pass


def _check_caffe(data: bytes) -> None:
    try:
        out = read_caffemodel(data)
    except InputError as e:
        assert str(e).startswith("<bytes>: ")
        return
    assert isinstance(out, dict)
    blobs = [b for v in out.values() for b in v]
    assert all(isinstance(b, np.ndarray) and b.dtype in (np.float32, np.float64) for b in blobs)
    assert sum(b.nbytes for b in blobs) <= len(data)
    try:
        vgg16_from_caffe(out)
    except InputError:
        pass


@FUZZ
@given(st.data())
def test_mutated_mxnet_files(data):
    files = _fixture_bytes(MXNET)
    _check_mxnet(_mutate(data.draw, data.draw(st.sampled_from(files))))


@FUZZ
@given(st.data())
def test_mutated_caffe_files(data):
    files = _fixture_bytes(CAFFE)
    _check_caffe(_mutate(data.draw, data.draw(st.sampled_from(files))))


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_mxnet(tail, with_header):
    # With a valid list header the random tail is parsed as arrays.
    head = struct.pack("<QQ", 0x112, 0) if with_header else b""
    _check_mxnet(head + tail)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_caffe(data):
    _check_caffe(data)
