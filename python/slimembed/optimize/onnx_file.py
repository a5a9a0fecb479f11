"""What every ONNX file slimembed writes shares (the export, the fusion at a Hub graph's first
load, ``slimembed quantize``): its opset, and the size past which its weights go to an
external data file (protobuf caps a message at 2 GB). Torch-free, so the runtime's fusion and
quantization and the export's fused decoder builder import it without PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A graph over this many bytes of weights is written with external data.
EXTERNAL_DATA_BYTES = 1_800_000_000
OPSET = 20


def load_into(tensor: Any, base_dir: Path) -> None:
    """Make an initializer that refers to external data hold its bytes itself, read from its
    file under ``base_dir`` by offset and length.

    onnx's own loader refuses a data file with more than one hard link, and the runtime links
    a hub cache's blobs (slimembed.repos, session) rather than copy gigabytes; the location
    must still name a file inside ``base_dir``."""
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo

    info = ExternalDataInfo(tensor)
    path = (base_dir / info.location).resolve()
    if Path(info.location).is_absolute() or ".." in Path(info.location).parts:
        raise ValueError(f"external data {info.location!r} is not a file beside the graph")
    with path.open("rb") as fh:
        fh.seek(info.offset or 0)
        raw = fh.read(info.length) if info.length else fh.read()
    tensor.raw_data = raw
    tensor.data_location = TensorProto.DEFAULT
    del tensor.external_data[:]
