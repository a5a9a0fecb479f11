"""Exporting static embedding models (sentence-transformers StaticEmbedding, model2vec).

No transformer is involved: the table is rewritten as ``embeddings.safetensors`` in the chosen
precision (INT8 with one f32 scale per row), the tokenizer is copied, and an ONNX graph of the
same lookup is written beside them for other ONNX runtimes. The slimembed runtime runs static
models in Rust and never loads that graph.

Source rules, kept exactly:
- model2vec: no special tokens; the unknown token is dropped; ``mapping`` and ``weights`` apply;
  ``normalize`` from config.json. (model2vec truncates at 512 tokens by default; slimembed keeps
  every token unless ``--max-length`` is given.)
- sentence-transformers StaticEmbedding: no special tokens, unknown tokens kept, plain mean;
  a Normalize module means normalize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimembed import tables
from slimembed.errors import ModelFileError
from slimembed.manifest import Manifest
from slimembed.repos import (
    StaticSource,
    read_static,
    static_kind,
    static_tensors,
    write_static_source,
)
from slimembed_export.errors import ExportError

__all__ = ["StaticSource", "detect", "export_static", "reference_embed", "write_graph"]


def detect(model_dir: Path) -> str | None:
    """ "model2vec", "sentence-transformers" (StaticEmbedding) or None for other models."""
    try:
        return static_kind(model_dir)
    except ModelFileError as err:
        raise ExportError(str(err)) from err


def write_graph(tensors: dict[str, np.ndarray], path: Path) -> None:
    """An ONNX graph of the lookup: (input_ids, attention_mask) -> per-token rows, which the
    manifest's mean pooling averages; mapping and weights are applied inside."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = tables.dequantize(tensors)
    initializers = [numpy_helper.from_array(table, "table")]
    nodes = []
    rows = "input_ids"
    if "mapping" in tensors:
        initializers.append(numpy_helper.from_array(tensors["mapping"].astype(np.int64), "mapping"))
        nodes.append(helper.make_node("Gather", ["mapping", "input_ids"], ["rows"], axis=0))
        rows = "rows"
    nodes.append(helper.make_node("Gather", ["table", rows], ["vectors"], axis=0))
    output = "vectors"
    if "weights" in tensors:
        initializers.append(numpy_helper.from_array(tensors["weights"][:, None], "weights"))
        nodes.append(helper.make_node("Gather", ["weights", "input_ids"], ["w"], axis=0))
        nodes.append(helper.make_node("Mul", ["vectors", "w"], ["weighted"]))
        output = "weighted"
    nodes.append(helper.make_node("Identity", [output], ["last_hidden_state"]))
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    out = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", table.shape[1]]
    )
    graph = helper.make_graph(nodes, "static_embedding", inputs, [out], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def reference_embed(source: StaticSource, texts: list[str], table: np.ndarray) -> np.ndarray:
    """The source library's formula in numpy, with the Python tokenizers library."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source.tokenizer_file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    out = np.zeros((len(texts), table.shape[1]), dtype=np.float64)
    for i, encoding in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        ids = [t for t in encoding.ids if t != source.skip_id]
        if not ids:
            continue
        rows = source.mapping[ids] if source.mapping is not None else ids
        vecs = table[rows].astype(np.float64)
        if source.weights is not None:
            vecs = vecs * source.weights[ids][:, None]
        out[i] = vecs.mean(0)
    if source.normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def export_static(
    model_dir: Path,
    kind: str,
    staging: Path,
    source_id: str,
    precision: str,
    max_length: int | None,
    revision: str | None,
) -> tuple[Manifest, StaticSource, dict[str, np.ndarray]]:
    """Write a static model directory into ``staging``; returns its manifest (no parity yet)."""
    try:
        source = read_static(model_dir, kind)
        tensors = static_tensors(source, precision)
    except (ModelFileError, ValueError) as err:
        raise ExportError(str(err)) from err
    write_graph(tensors, staging / "model.onnx")
    manifest = write_static_source(
        staging,
        source,
        tensors,
        precision,
        {"id": source_id, "revision": revision},
        max_length=max_length,
        graph_file="model.onnx",
    )
    return manifest, source, tensors
