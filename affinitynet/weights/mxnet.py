"""Pure-numpy reader for MXNet ``mx.nd.save`` files and the ResNet-38 key mapping.

Reads the NDArray-list layouts V1, V2, V3 and the pre-magic "legacy" layout (the ademxapp
ImageNet ResNet-38 ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` used by PSA may be any of them)
without MXNet. Every length, count, ndim and dimension is checked against the remaining bytes
before anything is allocated, so a corrupt file raises ``InputError`` instead of exhausting
memory. The bounds-checked buffer helpers here are shared with the Caffe reader.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from contextlib import contextmanager
from typing import Iterator, Union

import numpy as np
import torch

from affinitynet.errors import InputError

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]


@contextmanager
def open_buffer(path_or_bytes: Source) -> Iterator[tuple[memoryview, str]]:
    """Yield (read-only buffer, name for messages); files are memory-mapped, not copied."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        yield memoryview(path_or_bytes).cast("B"), "<bytes>"
        return
    name = os.fspath(path_or_bytes)
    try:
        f = open(name, "rb")
    except OSError as e:
        raise InputError(f"{name}: cannot open weight file ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            yield memoryview(b""), name
            return
        try:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # e.g. a pipe or special file: fall back to reading it
            yield memoryview(f.read()), name
            return
        view = memoryview(mm)
        try:
            yield view, name
        finally:
            try:
                view.release()
                mm.close()
            except BufferError:  # a view is still referenced from a traceback; GC closes it
                pass


class ByteReader:
    """Cursor over ``buf[start:end]``; all reads little-endian and bounds-checked."""

    def __init__(self, buf: memoryview, source: str, start: int = 0, end: int | None = None):
        self.buf = buf
        self.source = source
        self.pos = start
        self.end = len(buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def fail(self, what: str, at: int | None = None) -> InputError:
        return InputError(f"{self.source}: {what} (at byte {self.pos if at is None else at})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.remaining:
            raise self.fail(f"truncated: {what} needs {n} bytes but only {self.remaining} remain")

    def skip(self, n: int, what: str) -> None:
        self.need(n, what)
        self.pos += n

    def unpack(self, fmt: str, what: str) -> tuple:
        n = struct.calcsize(fmt)
        self.need(n, what)
        out = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return self.unpack("<I", what)[0]

    def i32(self, what: str) -> int:
        return self.unpack("<i", what)[0]

    def u64(self, what: str) -> int:
        return self.unpack("<Q", what)[0]

    def raw(self, n: int, what: str) -> bytes:
        self.need(n, what)
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        """Copy ``count`` items of little-endian ``dtype`` into a native, writable array."""
        dtype = np.dtype(dtype)
        self.need(count * dtype.itemsize, what)  # before allocating anything
        view = np.frombuffer(self.buf, dtype=dtype.newbyteorder("<"), count=count, offset=self.pos)
        out = view.astype(dtype.newbyteorder("="), copy=True)
        del view
        self.pos += count * dtype.itemsize
        return out


LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
MAX_NDIM = 32  # far above any real weight; bounds the shape read for a corrupt ndim

# MXNet type_flag -> numpy dtype (mshadow/base.h). 12 is bfloat16, which numpy lacks: read as
# uint16 and widened to float32 exactly.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype(np.float32), 1: np.dtype(np.float64), 2: np.dtype(np.float16),
    3: np.dtype(np.uint8), 4: np.dtype(np.int32), 5: np.dtype(np.int8), 6: np.dtype(np.int64),
    7: np.dtype(np.bool_), 8: np.dtype(np.int16), 9: np.dtype(np.uint16),
    10: np.dtype(np.uint32), 11: np.dtype(np.uint64), 12: np.dtype(np.uint16),
}
_BFLOAT16 = 12
_STYPES = {0: "default", 1: "row_sparse", 2: "csr"}
_NUM_AUX = {1: 1, 2: 2}  # row_sparse: indices; csr: indptr, indices


class _Sparse:
    """Marker for a sparse array that was skipped; refused once its name is known."""

    def __init__(self, stype: int, index: int):
        self.stype, self.index = stype, index


def _read_shape(r: ByteReader, what: str, *, np_shape: bool = False) -> tuple[int, ...] | None:
    """i32 ndim + i64 dims. None means MXNet's "none" array (ndim 0, or -1 under V3)."""
    at = r.pos
    ndim = r.i32(f"{what} ndim")
    if np_shape and ndim == -1:
        return None
    if ndim < 0 or ndim > MAX_NDIM:
        raise r.fail(f"{what} has invalid ndim {ndim} (expected 0..{MAX_NDIM})", at)
    if ndim == 0 and not np_shape:
        return None
    r.need(8 * ndim, f"{what} dims")
    dims = r.unpack(f"<{ndim}q", f"{what} dims")
    if any(d < 0 for d in dims):
        if np_shape and all(d >= -1 for d in dims):
            return None  # V3 "unknown" dims mean a none array
        raise r.fail(f"{what} has a negative dimension {list(dims)}", at)
    return tuple(dims)


def _read_dtype(r: ByteReader, what: str) -> int:
    at = r.pos
    flag = r.i32(f"{what} type flag")
    if flag not in _DTYPES:
        raise r.fail(f"{what} has unknown type flag {flag}", at)
    return flag


def _check_extent(r: ByteReader, shape: tuple[int, ...], itemsize: int, what: str) -> int:
    """Element count; refuses shapes numpy cannot represent even when a zero dim empties them."""
    extent = int(np.prod([max(d, 1) for d in shape], dtype=object)) * itemsize
    if extent >= 1 << 62:
        raise r.fail(f"{what} has impossibly large dimensions {list(shape)}")
    return int(np.prod(shape, dtype=object)) if shape else 1


def _read_data(r: ByteReader, flag: int, shape: tuple[int, ...], what: str) -> np.ndarray:
    count = _check_extent(r, shape, _DTYPES[flag].itemsize, what)
    arr = r.array(_DTYPES[flag], count, f"{what} data ({count} elements of type flag {flag})")
    if flag == _BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.reshape(shape)


def _none_array() -> np.ndarray:
    return np.empty((0,), dtype=np.float32)


def _read_ndarray(r: ByteReader, index: int) -> np.ndarray | _Sparse:
    what = f"array {index}"
    start = r.pos
    head = r.u32(f"{what} header")
    if head in (V2_MAGIC, V3_MAGIC):
        np_shape = head == V3_MAGIC
        stype = r.i32(f"{what} storage type")
        if stype not in _STYPES:
            raise r.fail(f"{what} has unknown storage type {stype}", start)
        sshape = _read_shape(r, f"{what} storage shape", np_shape=np_shape) if stype else None
        shape = _read_shape(r, f"{what} shape", np_shape=np_shape)
        if shape is None:
            return _none_array()
        r.skip(8, f"{what} context")
        flag = _read_dtype(r, what)
        if stype == 0:
            return _read_data(r, flag, shape, what)
        # Sparse: walk over it so the error can name its key once the names are read.
        aux = []
        for k in range(_NUM_AUX[stype]):
            aux_flag = _read_dtype(r, f"{what} aux {k}")
            aux.append((aux_flag, _read_shape(r, f"{what} aux {k} shape", np_shape=np_shape) or ()))
        _skip_data(r, flag, sshape or (), f"{what} sparse values")
        for k, (aux_flag, aux_shape) in enumerate(aux):
            _skip_data(r, aux_flag, aux_shape, f"{what} aux {k} data")
        return _Sparse(stype, index)
    if head == V1_MAGIC:
        shape = _read_shape(r, f"{what} shape")
    else:  # legacy: this u32 is ndim, then u32 dims
        if head > MAX_NDIM:
            raise r.fail(f"{what} starts with 0x{head:08X}: not an NDArray magic and not a "
                         f"legacy ndim (expected 0..{MAX_NDIM})", start)
        shape = tuple(r.unpack(f"<{head}I", f"{what} dims")) if head else None
    if shape is None:
        return _none_array()
    r.skip(8, f"{what} context")
    flag = _read_dtype(r, what)
    return _read_data(r, flag, shape, what)


def _skip_data(r: ByteReader, flag: int, shape: tuple[int, ...], what: str) -> None:
    count = _check_extent(r, shape, _DTYPES[flag].itemsize, what)
    r.skip(count * _DTYPES[flag].itemsize, what)


def read_mxnet_params(path_or_bytes: Source) -> dict[str, np.ndarray] | list[np.ndarray]:
    """Read an ``mx.nd.save`` file without MXNet.

    Returns ``{name: array}`` in file order for dict saves (names as stored, e.g.
    ``arg:conv1a_weight``) or a list for list saves. Arrays keep the stored dtype and shape;
    MXNet "none" arrays come back as empty float32 arrays of shape (0,). Sparse arrays
    (row_sparse, csr) are refused: PSA's weights are dense.
    """
    with open_buffer(path_or_bytes) as (buf, source):
        r = ByteReader(buf, source)
        magic = r.u64("list header")
        if magic != LIST_MAGIC:
            raise r.fail(f"not an MXNet NDArray file (header 0x{magic:X}, expected 0x{LIST_MAGIC:X})", 0)
        r.u64("reserved field")
        at = r.pos
        n = r.u64("array count")
        if n > r.remaining // 4:  # the smallest array (a legacy none array) is 4 bytes
            raise r.fail(f"truncated: array count {n} needs at least {4 * n} bytes but only "
                         f"{r.remaining} remain", at)
        arrays = [_read_ndarray(r, i) for i in range(n)]
        at = r.pos
        k = r.u64("name count")
        if k not in (0, n):
            raise r.fail(f"name count {k} does not match array count {n}", at)
        names: list[str] = []
        for i in range(k):
            at = r.pos
            length = r.u64(f"name {i} length")
            try:
                names.append(r.raw(length, f"name {i}").decode("utf-8"))
            except UnicodeDecodeError:
                raise r.fail(f"name {i} is not valid UTF-8", at) from None
        if r.remaining:
            raise r.fail(f"{r.remaining} unexpected bytes after the name list")
    for i, a in enumerate(arrays):
        if isinstance(a, _Sparse):
            key = repr(names[i]) if names else f"#{i}"
            raise InputError(f"{source}: unsupported storage type {a.stype} ({_STYPES[a.stype]}) "
                             f"for key {key}; only dense arrays can be loaded")
    if not names:
        return arrays  # type: ignore[return-value]
    if len(set(names)) != len(names):
        dup = next(nm for nm in names if names.count(nm) > 1)
        raise InputError(f"{source}: key {dup!r} appears more than once")
    return dict(zip(names, arrays))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# ResNet-38 (ademxapp "rna-a1", PSA's resnet38d.Net) key mapping

_BN_FIELDS = {"gamma": "weight", "beta": "bias",
              "moving_mean": "running_mean", "moving_var": "running_var"}
_BRANCH = r"branch(?:1|2a|2b1|2b2)"
_RE_CONV = re.compile(rf"res([2-7])(a|b(\d+))_({_BRANCH})_weight")
_RE_BN = re.compile(rf"bn([2-7])(a|b(\d+))_({_BRANCH})_(gamma|beta|moving_mean|moving_var)")
# Only the bare bn7_* names are the final BN; bn7a_branch2b1_* belongs to block b7.
_RE_BN7 = re.compile(r"bn7_(gamma|beta|moving_mean|moving_var)")
_RE_DROPPED = re.compile(r"linear1000_(weight|bias)")  # the ImageNet classifier


def _block(level: str, blk: str, k: str | None) -> str:
    return f"b{level}" if blk == "a" else f"b{level}_{int(k)}"  # type: ignore[arg-type]


def mxnet_to_torch_key(name: str) -> str | None:
    """Torch state-dict key for an ademxapp ResNet-38 MXNet name; None if PSA drops it.

    The optional ``arg:``/``aux:`` prefix is ignored. Raises ``KeyError`` for names that are
    not part of ResNet-38.
    """
    bare = name.split(":", 1)[1] if name.startswith(("arg:", "aux:")) else name
    if bare == "conv1a_weight":
        return "conv1a.weight"
    if m := _RE_CONV.fullmatch(bare):
        return f"{_block(m[1], m[2], m[3])}.conv_{m[4]}.weight"
    if m := _RE_BN.fullmatch(bare):
        return f"{_block(m[1], m[2], m[3])}.bn_{m[4]}.{_BN_FIELDS[m[5]]}"
    if m := _RE_BN7.fullmatch(bare):
        return f"bn7.{_BN_FIELDS[m[1]]}"
    if _RE_DROPPED.fullmatch(bare):
        return None
    raise KeyError(name)


def resnet38_from_mxnet(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map MXNet ResNet-38 arrays to PSA ``resnet38d.Net`` state-dict keys.

    No transpose or reshape: conv weights are (out, in, kh, kw) in both frameworks and BN
    vectors are 1-D. ``linear1000_*`` is dropped. Unknown names raise ``InputError``.
    """
    if not isinstance(arrays, dict):
        raise InputError("MXNet file was saved as a list without names; cannot map it to ResNet-38")
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, arr in arrays.items():
        try:
            key = mxnet_to_torch_key(name)
        except KeyError:
            unknown.append(name)
            continue
        if key is None:
            continue
        if key in out:
            raise InputError(f"MXNet keys map to {key!r} twice (e.g. with and without arg:/aux:)")
        out[key] = torch.from_numpy(np.ascontiguousarray(arr))
    if unknown:
        more = f" (+{len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise InputError(f"not an ademxapp ResNet-38 file: unrecognized MXNet keys "
                         f"{', '.join(map(repr, unknown[:5]))}{more}")
    return out
