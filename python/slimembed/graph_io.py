"""What an ONNX file declares (its inputs and outputs), read without loading the graph.

Adopting a repository needs its graph's input and output names and shapes before the session
that runs the graph exists. An ONNX Runtime session made only to ask them loads every weight:
0.17-0.22 s of a 0.56 s first load of all-MiniLM-L6-v2 here, and it was made again at once by
the backend. An ONNX file is one protobuf ``ModelProto``; this reads the ``input``, ``output``
and initializer names of its ``graph`` from a memory map and steps over every other field by
its length, so the weights are never read. Field numbers are those of onnx/onnx.proto.
Whether the graph really loads is still ONNX Runtime's to say, when the backend opens it.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from slimembed.errors import ModelFileError

# onnx.proto field numbers.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 5, 11, 12, 15
_TENSOR_NAME = 8
_SPARSE_VALUES = 1
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_ELEM, _TENSOR_TYPE_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
# Protobuf wire types.
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
# onnx TensorProto.DataType values as ONNX Runtime names the tensor types.
ELEM_TYPES = {1: "tensor(float)", 7: "tensor(int64)", 10: "tensor(float16)", 11: "tensor(double)"}

Dim = int | str | None


@dataclass(frozen=True)
class Declared:
    """One input or output as the graph declares it: its name, its ONNX Runtime type name
    (``tensor(float)``; ``elem_type N`` for others) and its dims (an int, a symbolic name, or
    None where unnamed; ``()`` where no shape is declared)."""

    name: str
    type: str
    shape: tuple[Dim, ...]


class _Corrupt(Exception):
    pass


def declared_io(path: Path) -> tuple[list[Declared], list[Declared]]:
    """The graph's inputs (those no initializer feeds, as ONNX Runtime lists them) and its
    outputs; ModelFileError naming ``path`` when it cannot be read as an ONNX model."""
    try:
        with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read(buf)
    except (OSError, ValueError, _Corrupt) as err:  # ValueError: mmap of an empty file
        raise ModelFileError(f"{path} is not a loadable ONNX graph: {err or 'corrupt'}") from err


def _read(buf: mmap.mmap) -> tuple[list[Declared], list[Declared]]:
    graphs = [
        (a, b) for n, w, a, b in _fields(buf, 0, len(buf)) if n == _MODEL_GRAPH and w == _BYTES
    ]
    if not graphs:
        raise _Corrupt("no graph in the file")
    start, end = graphs[-1]
    inputs: list[Declared] = []
    outputs: list[Declared] = []
    fed: set[str] = set()
    for number, wire, a, b in _fields(buf, start, end):
        if wire != _BYTES:
            continue
        if number in (_GRAPH_INPUT, _GRAPH_OUTPUT):
            (inputs if number == _GRAPH_INPUT else outputs).append(_value_info(buf, a, b))
        elif number == _GRAPH_INITIALIZER:
            fed.add(_string(buf, a, b, _TENSOR_NAME))
        elif number == _GRAPH_SPARSE_INITIALIZER:
            for n, w, c, d in _fields(buf, a, b):
                if n == _SPARSE_VALUES and w == _BYTES:
                    fed.add(_string(buf, c, d, _TENSOR_NAME))
    return [i for i in inputs if i.name not in fed], outputs


def _value_info(buf: mmap.mmap, start: int, end: int) -> Declared:
    name, kind = "", ""
    shape: tuple[Dim, ...] = ()
    for number, wire, a, b in _fields(buf, start, end):
        if number == _VALUE_NAME and wire == _BYTES:
            name = bytes(buf[a:b]).decode("utf-8")
        elif number == _VALUE_TYPE and wire == _BYTES:
            for n, w, c, d in _fields(buf, a, b):
                if n == _TYPE_TENSOR and w == _BYTES:
                    kind, shape = _tensor_type(buf, c, d)
    return Declared(name, kind or "not a tensor", shape)


def _tensor_type(buf: mmap.mmap, start: int, end: int) -> tuple[str, tuple[Dim, ...]]:
    elem, dims = 0, []
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_TYPE_ELEM and wire == _VARINT:
            elem = a
        elif number == _TENSOR_TYPE_SHAPE and wire == _BYTES:
            dims = [_dim(buf, c, d) for n, w, c, d in _fields(buf, a, b) if n == _SHAPE_DIM]
    return ELEM_TYPES.get(elem, f"elem_type {elem}"), tuple(dims)


def _dim(buf: mmap.mmap, start: int, end: int) -> Dim:
    for number, wire, a, b in _fields(buf, start, end):
        if number == _DIM_VALUE and wire == _VARINT:
            return a if a < 1 << 63 else None  # a negative int64: no size
        if number == _DIM_PARAM and wire == _BYTES:
            return bytes(buf[a:b]).decode("utf-8")
    return None


def _string(buf: mmap.mmap, start: int, end: int, field: int) -> str:
    for number, wire, a, b in _fields(buf, start, end):
        if number == field and wire == _BYTES:
            return bytes(buf[a:b]).decode("utf-8")
    return ""


def _fields(buf: mmap.mmap, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, a, b)`` of each field in ``buf[start:end]``: a varint's
    value in ``a``; a length-delimited field's bytes as ``buf[a:b]``; nothing for fixed ones."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, 0
            continue
        if wire == _BYTES:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Corrupt(f"a field of {length} bytes runs past the end (truncated file?)")
            yield number, wire, pos, pos + length
            pos += length
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        else:
            raise _Corrupt(f"wire type {wire} at byte {pos}: not a protobuf message")
    if pos != end:
        raise _Corrupt("a field runs past the end of its message (truncated file?)")


def _varint(buf: mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Corrupt("a varint runs past the end (truncated file?)")
