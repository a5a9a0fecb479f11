"""Reading and writing safetensors files of numpy arrays (static embedding tables).

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
shape and byte range, then the raw little-endian data. numpy is all it takes, so the runtime
(``slimembed distill``) writes tables without the safetensors package or torch.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from slimembed.errors import ModelFileError

_DTYPES: dict[str, np.dtype[Any]] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def save(tensors: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write ``tensors`` to ``path`` as safetensors (tensors in name order, 8-byte aligned)."""
    header: dict[str, object] = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors lacks")
        data = array.astype(dtype, copy=False).tobytes()
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    path = Path(path)
    with path.open("wb") as fh:
        fh.write(struct.pack("<Q", len(encoded)))
        fh.write(encoded)
        for chunk in chunks:
            fh.write(chunk)
    return path


def tensor_names(path: str | Path) -> set[str]:
    """Names of the tensors in a safetensors file, read from its header alone."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
    except (OSError, struct.error, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file: {err}") from err
    return set(header) - {"__metadata__"}


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor in a safetensors file as a numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + size])
    except (OSError, struct.error, ValueError) as err:
        raise ModelFileError(f"{path} is not a readable safetensors file: {err}") from err
    body = raw[8 + size :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelFileError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        # frombuffer over a bytes slice is read-only; copy so callers own writable arrays.
        tensors[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"]).copy()
    return tensors


PRECISIONS = ("fp32", "fp16", "int8")


def quantize(
    table: np.ndarray, precision: str, *, integer_rows: bool = False
) -> dict[str, np.ndarray]:
    """The ``embeddings`` (and ``scales``) tensors of a float table stored at ``precision``.

    INT8 uses one scale per row (max |value| / 127). ``integer_rows`` keeps a table that is
    already integer-valued (a model2vec INT8 table) exactly, with scale 1.
    """
    if precision == "fp32":
        return {"embeddings": table.astype(np.float32)}
    if precision == "fp16":
        return {"embeddings": table.astype(np.float16)}
    if precision != "int8":
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if integer_rows:
        return {"embeddings": table.astype(np.int8), "scales": np.ones(len(table), np.float32)}
    scales = np.abs(table).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    values = np.round(table / scales[:, None]).astype(np.int8)
    return {"embeddings": values, "scales": scales.astype(np.float32)}


def dequantize(tensors: dict[str, np.ndarray]) -> np.ndarray:
    """The float32 table a runtime reads from ``quantize``'s tensors."""
    table = tensors["embeddings"].astype(np.float32)
    if "scales" in tensors:
        table = table * tensors["scales"][:, None]
    return table
