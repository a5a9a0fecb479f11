"""Writing static model directories: the table, the tokenizer and a ``kind: static`` manifest.

Used by ``slimembed distill`` and by the export of model2vec and sentence-transformers
StaticEmbedding models, so both write the same layout.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from slimembed import tables
from slimembed.manifest import Manifest

TABLE_FILE = "embeddings.safetensors"


def unknown_token_id(tokenizer_file: Path) -> int | None:
    """The id model2vec drops: the model's unk token (WordPiece, BPE, WordLevel) or unk_id."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("unk_id") is not None:
        return int(model["unk_id"])
    token = model.get("unk_token")
    if token is None:
        return None
    vocab = model.get("vocab")
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    added = data.get("added_tokens") or []
    return next((int(t["id"]) for t in added if t.get("content") == token), None)


def write_static_model(
    out: Path,
    tensors: dict[str, np.ndarray],
    tokenizer_file: Path,
    *,
    precision: str,
    normalize: bool,
    skip_id: int | None,
    source: dict[str, Any],
    max_length: int | None = None,
    graph_file: str | None = None,
) -> Manifest:
    """Write ``tensors`` (from ``tables.quantize``, plus any mapping/weights) and the tokenizer
    to ``out`` and return the manifest describing them (saved by the caller)."""
    out.mkdir(parents=True, exist_ok=True)
    tables.save(tensors, out / TABLE_FILE)
    shutil.copy(tokenizer_file, out / "tokenizer.json")
    return Manifest(
        kind="static",
        dim=int(tensors["embeddings"].shape[1]),
        pooling="mean",
        normalize=normalize,
        max_length=max_length,
        padding_side="right",
        pad_id=0,
        add_special_tokens=False,
        graph_file=graph_file,
        precision=precision,
        table_file=TABLE_FILE,
        skip_id=skip_id,
        source=source,
    )
