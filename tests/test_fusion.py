"""Attention fusion (slimembed.optimize.fusion): exact where it applies, absent where the mask is
not a key-padding one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers

from benchmarks.hub_load import export_like_optimum
from slimembed.optimize import fusion
from slimembed.optimize.fusion import Fused, fuse
from slimembed_export.graph import export_graph

LAYERS = 2


def _tiny_bert(causal: bool) -> transformers.BertModel:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        is_decoder=causal,
    )
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """Right-padded, left-padded and full rows of different lengths."""
    mask = np.array(
        [[1, 1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]]
    )
    ids = np.random.default_rng(1).integers(5, 100, size=mask.shape) * mask
    return ids.astype(np.int64), mask.astype(np.int64)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_is_fused_exactly_and_only_under_a_key_padding_mask(
    tmp_path: Path, causal: bool
) -> None:
    model = _tiny_bert(causal)
    path = tmp_path / "model.onnx"
    export_graph(model, decoder=False, path=path, pad_id=0)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    # A causal mask fails the value check: that graph keeps its own attention.
    assert ops.count("MultiHeadAttention") == (0 if causal else LAYERS)
    assert ("Softmax" in ops) == causal
    ids, mask = _batch()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    with torch.no_grad():
        expected = model(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
        ).last_hidden_state.numpy()
    real = mask.astype(bool)
    assert np.abs(hidden[real] - expected[real]).max() < 1e-5


def test_fusing_twice_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    export_graph(_tiny_bert(causal=False), decoder=False, path=path, pad_id=0)
    before = path.read_bytes()
    assert fuse(path) == Fused(0, 0)
    assert path.read_bytes() == before


def _torchscript_graph(tmp_path: Path) -> tuple[transformers.BertModel, Path]:
    """The tiny BERT exported as optimum exports Hub repositories' onnx/model.onnx
    (TorchScript, token_type_ids, GELU spelled out with Erf)."""
    model = _tiny_bert(causal=False)
    model.save_pretrained(tmp_path / "source")
    path = tmp_path / "torchscript.onnx"
    export_like_optimum(tmp_path / "source", path)
    return model, path


def test_a_torchscript_graph_is_fused_exactly_into_a_new_file(tmp_path: Path) -> None:
    model, path = _torchscript_graph(tmp_path)
    before = path.read_bytes()
    out = tmp_path / "fused.onnx"

    assert fuse(path, out) == Fused(attention=LAYERS, gelu=LAYERS)

    assert path.read_bytes() == before
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert (ops.count("MultiHeadAttention"), ops.count("Gelu")) == (LAYERS, LAYERS)
    assert "Softmax" not in ops
    assert "Erf" not in ops
    ids, mask = _batch()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    (hidden,) = session.run(None, feed)
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    real = mask.astype(bool)
    assert np.abs(hidden[real] - expected.numpy()[real]).max() < 1e-5


def test_a_fused_graph_whose_output_moves_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = _torchscript_graph(tmp_path)
    out = tmp_path / "fused.onnx"
    monkeypatch.setattr(fusion, "OUTPUT_TOLERANCE", -1.0)  # no output can match

    assert fuse(path, out) == Fused(0, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source", "torchscript.onnx"]
