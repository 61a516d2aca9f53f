"""Pure-numpy reader for Caffe ``.caffemodel`` files and the VGG-16 key mapping.

Decodes the protobuf wire format of ``caffe.NetParameter`` by hand (no protobuf package, no
Caffe): new-style ``layer`` (field 100) and legacy V1 ``layers`` (field 2), blobs with a
``BlobShape`` or with the legacy 4-D num/channels/height/width fields, float or double data.
Only three message levels are ever entered (layer -> blob -> shape), so there is no recursion
to exhaust, and every length is checked against the enclosing message before it is used.
PSA initialises its VGG-16 from DeepLab's ``vgg16_20M.caffemodel`` this way.
"""

from __future__ import annotations

import numpy as np
import torch

from affinitynet.errors import InputError
from affinitynet.weights.mxnet import ByteReader, Source, open_buffer

# Field numbers from BVLC caffe.proto.
_NET_LAYERS_V1 = 2
_NET_LAYER = 100
_LAYER_NAME, _LAYER_BLOBS = 1, 7
_V1_NAME, _V1_BLOBS = 4, 6
_BLOB_LEGACY = {1: 0, 2: 1, 3: 2, 4: 3}  # num, channels, height, width
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE = 5, 7, 8
_SHAPE_DIM = 1
_MAX_AXES = 32  # Caffe's kMaxBlobAxes
_MAX_COUNT = 2**31 - 1  # Caffe's Blob::Reshape limit (INT_MAX)

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

VGG16_LAYERS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3", "fc6", "fc7")


class _Proto(ByteReader):
    """Protobuf wire-format cursor over one message."""

    def varint(self, what: str) -> int:
        at, value = self.pos, 0
        for shift in range(0, 70, 7):
            if self.pos >= self.end:
                raise self.fail(f"truncated: {what} varint runs past the end of its message", at)
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value >> 64:
                    raise self.fail(f"{what} varint overflows 64 bits", at)
                return value
        raise self.fail(f"{what} varint is longer than 10 bytes", at)

    def fields(self, what: str):
        """Yield (field number, wire type, key offset) until the message ends."""
        while self.pos < self.end:
            at = self.pos
            key = self.varint(f"{what} field key")
            field, wire = key >> 3, key & 7
            if field == 0 or wire not in (_VARINT, _I64, _LEN, _I32):
                raise self.fail(f"{what} has an invalid field key 0x{key:X} (field {field}, "
                                f"wire type {wire})", at)
            yield field, wire, at

    def length(self, what: str) -> int:
        at = self.pos
        n = self.varint(f"{what} length")
        if n > self.remaining:
            raise self.fail(f"truncated: {what} claims {n} bytes but only {self.remaining} remain "
                            f"in the enclosing message", at)
        return n

    def sub(self, what: str) -> "_Proto":
        """Cursor over a length-delimited field, and advance past it."""
        n = self.length(what)
        child = _Proto(self.buf, self.source, self.pos, self.pos + n)
        self.pos += n
        return child

    def skip_field(self, wire: int, what: str) -> None:
        if wire == _VARINT:
            self.varint(what)
        elif wire == _I64:
            self.skip(8, what)
        elif wire == _I32:
            self.skip(4, what)
        else:
            self.skip(self.length(what), what)

    def string(self, what: str) -> str:
        at = self.pos
        try:
            return self.raw(self.length(what), what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8", at) from None


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _read_shape(p: _Proto, dims: list[int], what: str) -> None:
    for field, wire, _ in p.fields(what):
        if field == _SHAPE_DIM and wire == _LEN:  # packed (what Caffe writes)
            q = p.sub(f"{what} dims")
            while q.pos < q.end:
                dims.append(_signed(q.varint(f"{what} dim"), 64))
                if len(dims) > _MAX_AXES:
                    raise q.fail(f"{what} has more than {_MAX_AXES} axes")
        elif field == _SHAPE_DIM and wire == _VARINT:
            dims.append(_signed(p.varint(f"{what} dim"), 64))
            if len(dims) > _MAX_AXES:
                raise p.fail(f"{what} has more than {_MAX_AXES} axes")
        else:
            p.skip_field(wire, f"{what} field {field}")


def _read_blob(p: _Proto, what: str) -> np.ndarray:
    """BlobProto -> array with Caffe's shape (float32, or float64 for double_data).

    Shape rule of ``Blob::FromProto``: any legacy num/channels/height/width field present means
    the 4-D legacy shape (missing ones are 0); otherwise ``shape.dim``.
    """
    start = p.pos
    legacy: list[int | None] = [None] * 4
    dims: list[int] = []
    # Raw little-endian bytes; repeated fields (packed runs or single values) concatenate.
    raw = {"<f4": bytearray(), "<f8": bytearray()}
    for field, wire, at in p.fields(what):
        if field in _BLOB_LEGACY and wire == _VARINT:
            legacy[_BLOB_LEGACY[field]] = _signed(p.varint(what), 32)
        elif field in (_BLOB_DATA, _BLOB_DOUBLE) and wire in (_LEN, _I32 if field == _BLOB_DATA else _I64):
            kind, size = ("<f4", 4) if field == _BLOB_DATA else ("<f8", 8)
            n = p.length(f"{what} data") if wire == _LEN else size
            if n % size:
                raise p.fail(f"{what} packed data length {n} is not a multiple of {size}", at)
            p.need(n, f"{what} data")
            raw[kind] += p.buf[p.pos:p.pos + n]
            p.pos += n
        elif field == _BLOB_SHAPE and wire == _LEN:
            _read_shape(p.sub(f"{what} shape"), dims, f"{what} shape")  # repeated merges append
        else:
            p.skip_field(wire, f"{what} field {field}")
    if any(v is not None for v in legacy):
        shape = [v or 0 for v in legacy]
    else:
        shape = dims
    if any(d < 0 for d in shape):
        raise p.fail(f"{what} has a negative dimension {shape}", start)
    if np.prod([max(d, 1) for d in shape], dtype=object) > _MAX_COUNT:
        raise p.fail(f"{what} shape {shape} exceeds Caffe's limit of {_MAX_COUNT} values", start)
    kind = "<f8" if raw["<f8"] else "<f4"  # double_data wins when present
    data = np.frombuffer(raw[kind], dtype=kind).astype(kind.replace("<", "="), copy=False)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count != data.size:
        raise p.fail(f"{what} shape {shape} needs {count} values but the blob holds {data.size}",
                     start)
    return data.reshape(shape)


def _read_layer(p: _Proto, v1: bool, index: int) -> tuple[str, list[np.ndarray]]:
    name_field, blobs_field = (_V1_NAME, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_BLOBS)
    what = f"{'layers' if v1 else 'layer'} {index}"
    name, blobs = "", []
    for field, wire, _ in p.fields(what):
        if field == name_field and wire == _LEN:
            name = p.string(f"{what} name")
        elif field == blobs_field and wire == _LEN:
            blobs.append(_read_blob(p.sub(f"{what} blob"), f"{what} blob {len(blobs)}"))
        else:
            p.skip_field(wire, f"{what} field {field}")
    return name, blobs


def read_caffemodel(path_or_bytes: Source) -> dict[str, list[np.ndarray]]:
    """Read a binary ``caffe.NetParameter`` without Caffe.

    Returns ``{layer name: [blob, ...]}`` in file order, each blob shaped as Caffe would
    (``shape.dim``, or legacy ``(num, channels, height, width)``), float32 (float64 when the
    blob stores ``double_data``). Layers without blobs map to ``[]``. A repeated layer name keeps
    the last occurrence, as Caffe's copy-by-name would. Files holding both ``layer`` and legacy
    ``layers`` are refused, as Caffe's upgrader does.
    """
    with open_buffer(path_or_bytes) as (buf, source):
        p = _Proto(buf, source)
        layers: dict[str, list[np.ndarray]] = {}
        kinds: set[int] = set()
        count = 0
        for field, wire, _ in p.fields("NetParameter"):
            if field in (_NET_LAYER, _NET_LAYERS_V1) and wire == _LEN:
                kinds.add(field)
                if len(kinds) > 1:
                    raise p.fail("file has both new-style 'layer' and legacy V1 'layers' entries")
                name, blobs = _read_layer(p.sub(f"layer {count}"), field == _NET_LAYERS_V1, count)
                layers[name] = blobs
                count += 1
            else:
                p.skip_field(wire, f"NetParameter field {field}")
    if not layers:
        raise InputError(f"{source}: no layers found; not a Caffe NetParameter (.caffemodel) file")
    return layers


def caffe_to_torch_shape(key: str, caffe_shape: tuple[int, ...],
                         target: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """Torch shape for a Caffe blob of ``caffe_shape`` becoming ``key`` (``<layer>.weight|bias``).

    Without ``target``: weights become 4-D (out, in, kh, kw) (a 2-D inner-product weight gets
    1x1 kernels), biases 1-D. With ``target``: Caffe's rule - equal element count, and the shapes
    equal once the shorter is padded with leading 1s (so legacy 1x1x1xN matches (N,)).
    Raises ``InputError`` when the blob cannot take that shape.
    """
    caffe_shape = tuple(int(d) for d in caffe_shape)
    count = int(np.prod(caffe_shape, dtype=object))
    if target is None:
        if key.endswith(".bias"):
            return (count,)
        if len(caffe_shape) == 4:
            return caffe_shape
        if len(caffe_shape) == 2:
            return caffe_shape + (1, 1)
        raise InputError(f"{key}: Caffe blob shape {list(caffe_shape)} is not a conv weight")
    target = tuple(int(d) for d in target)
    nd = max(len(caffe_shape), len(target))
    padded_src = (1,) * (nd - len(caffe_shape)) + caffe_shape
    padded_tgt = (1,) * (nd - len(target)) + target
    if padded_src != padded_tgt:
        raise InputError(f"{key}: Caffe blob shape {list(caffe_shape)} ({count} values) does not "
                         f"match the model's {list(target)}")
    return target


def vgg16_from_caffe(layers: dict[str, list[np.ndarray]],
                     target_shapes: dict[str, tuple] | None = None) -> dict[str, torch.Tensor]:
    """Map Caffe VGG-16 (DeepLab ``vgg16_20M``) blobs to PSA ``vgg16d.Net`` keys.

    For conv1_1 ... conv5_3, fc6, fc7: blob 0 -> ``<layer>.weight`` (out, in, kh, kw), blob 1 ->
    ``<layer>.bias`` (out,), float32; no transpose (Caffe's layout is torch's). Other layers
    (``fc8``, data, loss) are ignored and absent layers are simply missing from the result.
    ``target_shapes`` (torch key -> shape) checks and reshapes as Caffe does when it loads a
    model into a net.
    """
    out: dict[str, torch.Tensor] = {}
    for layer in VGG16_LAYERS:
        blobs = layers.get(layer)
        if not blobs:
            continue
        if len(blobs) > 2:
            raise InputError(f"Caffe layer {layer!r} has {len(blobs)} blobs, expected weight and bias")
        for blob, suffix in zip(blobs, (".weight", ".bias")):
            key = layer + suffix
            target = None if target_shapes is None else target_shapes.get(key)
            shape = caffe_to_torch_shape(key, blob.shape, target)
            arr = np.ascontiguousarray(blob, dtype=np.float32).reshape(shape)
            out[key] = torch.from_numpy(arr)
    return out
