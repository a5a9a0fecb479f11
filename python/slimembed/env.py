"""The one module that reads ``SLIMEMBED_*`` environment variables."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where hub downloads go: ``SLIMEMBED_CACHE_DIR``, else ``$XDG_CACHE_HOME/slimembed``
    (``~/.cache/slimembed``). It is a lasting cache, never a temporary directory."""
    explicit = os.environ.get("SLIMEMBED_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "slimembed"


def default_threads() -> int | None:
    """``SLIMEMBED_THREADS``: intra-op threads for ONNX Runtime (unset: ONNX Runtime decides)."""
    value = os.environ.get("SLIMEMBED_THREADS")
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"SLIMEMBED_THREADS must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"SLIMEMBED_THREADS must be a positive integer, got {value!r}")
    return threads
