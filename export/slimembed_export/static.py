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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slimembed import tables
from slimembed.manifest import Manifest
from slimembed.static_model import unknown_token_id, write_static_model
from slimembed_export.errors import ExportError
from slimembed_export.source import read_json

ST_STATIC = "StaticEmbedding"


@dataclass
class StaticSource:
    """A static model as read from its source directory, in float32."""

    kind: str  # "model2vec" or "sentence-transformers"
    embeddings: np.ndarray  # (rows, dim)
    tokenizer_file: Path
    normalize: bool
    skip_id: int | None = None
    mapping: np.ndarray | None = None  # (vocab,) int64
    weights: np.ndarray | None = None  # (vocab,) float32
    int8_source: bool = False


def detect(model_dir: Path) -> str | None:
    """ "model2vec", "sentence-transformers" (StaticEmbedding) or None for other models.

    model2vec folders also carry a modules.json for sentence-transformers; model2vec's own rules
    (drop the unknown token) win for them, as the folder's maker intended.
    """
    config = model_dir / "config.json"
    if (model_dir / "model.safetensors").is_file() and config.is_file():
        data = read_json(config)
        plain = data.get("model_type") == "model2vec" or not data.get("architectures")
        if plain and "embeddings" in tables.tensor_names(model_dir / "model.safetensors"):
            return "model2vec"
    modules = model_dir / "modules.json"
    if modules.is_file():
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in read_json(modules)]
        return "sentence-transformers" if ST_STATIC in kinds else None
    return None


def read_source(model_dir: Path, kind: str) -> StaticSource:
    if kind == "model2vec":
        tensors = tables.load(model_dir / "model.safetensors")
        config = read_json(model_dir / "config.json")
        table = tensors["embeddings"]
        mapping = tensors.get("mapping")
        weights = tensors.get("weights")
        return StaticSource(
            kind=kind,
            embeddings=table.astype(np.float32),
            tokenizer_file=model_dir / "tokenizer.json",
            normalize=bool(config.get("normalize", False)),
            skip_id=unknown_token_id(model_dir / "tokenizer.json"),
            mapping=None if mapping is None else mapping.astype(np.int64),
            weights=None if weights is None else weights.astype(np.float32),
            int8_source=table.dtype == np.int8,
        )
    modules = read_json(model_dir / "modules.json")
    static = next(m for m in modules if str(m.get("type", "")).endswith(ST_STATIC))
    others = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if m is not static]
    if set(others) - {"Normalize"}:
        raise ExportError(f"{model_dir}: modules {others} after StaticEmbedding are not supported")
    folder = model_dir / static.get("path", "")
    tensors = tables.load(folder / "model.safetensors")
    key = "embedding.weight" if "embedding.weight" in tensors else next(iter(tensors))
    return StaticSource(
        kind=kind,
        embeddings=tensors[key].astype(np.float32),
        tokenizer_file=folder / "tokenizer.json",
        normalize="Normalize" in others,
    )


def table_tensors(source: StaticSource, precision: str) -> dict[str, np.ndarray]:
    """The tensors of embeddings.safetensors for ``precision``."""
    try:
        tensors = tables.quantize(source.embeddings, precision, integer_rows=source.int8_source)
    except ValueError as err:
        raise ExportError(str(err)) from err
    if source.mapping is not None:
        tensors["mapping"] = source.mapping
    if source.weights is not None:
        tensors["weights"] = source.weights
    return tensors


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
    source = read_source(model_dir, kind)
    tensors = table_tensors(source, precision)
    write_graph(tensors, staging / "model.onnx")
    rows = len(source.embeddings)
    manifest = write_static_model(
        staging,
        tensors,
        source.tokenizer_file,
        precision=precision,
        normalize=source.normalize,
        skip_id=source.skip_id,
        max_length=max_length,
        graph_file="model.onnx",
        source={
            "id": source_id,
            "revision": revision,
            "architecture": f"static ({kind})",
            "rows": rows,
            "vocabulary": len(source.mapping) if source.mapping is not None else rows,
        },
    )
    return manifest, source, tensors
