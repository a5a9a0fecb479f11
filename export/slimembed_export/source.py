"""Reading a Hugging Face model directory for export: ``config.json`` and the
sentence-transformers configuration.

The readers themselves are the runtime's (``slimembed.repos``: JSON only, no torch), since the
runtime loads sentence-transformers repositories that ship ONNX graphs as they are; here their
errors become ExportError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimembed import repos
from slimembed.errors import ModelFileError
from slimembed.repos import SentenceTransformersConfig, is_decoder
from slimembed_export.errors import ExportError

__all__ = ["SentenceTransformersConfig", "is_decoder", "read_config", "read_json"]


def read_json(path: Path) -> Any:
    try:
        return repos.read_json(path)
    except ModelFileError as err:
        raise ExportError(str(err)) from err


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} not found: {model_dir} is not a Hugging Face model directory")
    config: dict[str, Any] = read_json(path)
    return config


def read_sentence_transformers(model_dir: Path) -> SentenceTransformersConfig | None:
    """None when the directory is not a sentence-transformers model."""
    try:
        return repos.read_sentence_transformers(model_dir)
    except ModelFileError as err:
        raise ExportError(str(err)) from err
