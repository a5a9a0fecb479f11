"""Fused decoder graphs (slimembed_export.decoder): every decoder family slimembed fuses is
written into ONNX Runtime's fused operators, equals PyTorch for left and right padding, and a
text's vector does not depend on what it is batched with."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import transformers
from onnx import numpy_helper

from slimembed_export.decoder import build_decoder_graph, check
from slimembed_export.errors import ExportError
from slimembed_export.graph import HiddenStates, export_graph
from tests import tiny

ARCHS = ("llama", "mistral", "qwen2", "qwen3")


def _model(arch: str, tmp_path: Path) -> transformers.PreTrainedModel:
    src = tiny.build(arch, tmp_path / arch)
    return transformers.AutoModel.from_pretrained(src, dtype=torch.float32).eval()


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """A full row, a right-padded one, a left-padded one and a one-token one."""
    mask = np.array(
        [
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ]
    )
    ids = np.random.default_rng(3).integers(5, tiny.VOCAB, size=mask.shape) * mask
    return ids.astype(np.int64), mask.astype(np.int64)


def _run(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
    return np.asarray(hidden)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_fused_graph_equals_pytorch_for_left_and_right_padding(
    tmp_path: Path, arch: str, bidirectional: bool
) -> None:
    model = _model(arch, tmp_path)
    path = tmp_path / "model.onnx"
    made = export_graph(model, True, path, pad_id=0, bidirectional=bidirectional, max_length=64)
    assert made.startswith("slimembed fused decoder")
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    layers = model.config.num_hidden_layers
    assert ops["MultiHeadAttention"] == layers
    assert ops["RotaryEmbedding"] == 2 * layers
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers  # the first norm has no skip
    assert ops["MatMul"] == 4 * layers  # packed QKV, O, packed gate/up, down
    assert "Softmax" not in ops
    ids, mask = _batch()
    got = _run(path, ids, mask)
    with torch.no_grad():
        expected = HiddenStates(model, True, bidirectional)(
            torch.from_numpy(ids), torch.from_numpy(mask)
        ).numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=5e-5, rtol=1e-4)
    assert (got[~real] == 0).all()  # padding positions carry no hidden state


def test_bidirectional_graph_lets_tokens_see_later_ones(tmp_path: Path) -> None:
    model = _model("mistral", tmp_path)
    ids, mask = _batch()
    changed = ids.copy()
    changed[0, -1] = (ids[0, -1] + 1) % tiny.VOCAB  # only the last token of the full row
    moved = {}
    for bidirectional in (False, True):
        path = tmp_path / f"{bidirectional}.onnx"
        build_decoder_graph(model, path, 64, bidirectional, external=False)
        before, after = _run(path, ids, mask), _run(path, changed, mask)
        moved[bidirectional] = float(np.abs(before[0, 0] - after[0, 0]).max())
    assert moved[False] == 0.0  # causal: the first token cannot see the last
    assert moved[True] > 1e-4


def test_a_text_alone_equals_the_text_in_a_padded_batch(tmp_path: Path) -> None:
    model = _model("qwen3", tmp_path)
    path = tmp_path / "model.onnx"
    build_decoder_graph(model, path, 64, False, external=False)
    ids, mask = _batch()
    batched = _run(path, ids, mask)
    for row in range(len(ids)):
        real = mask[row].astype(bool)
        alone = _run(path, ids[row : row + 1, real], mask[row : row + 1, real])
        np.testing.assert_allclose(alone[0], batched[row, real], atol=2e-6)


def test_check_rejects_a_graph_that_does_not_match_and_export_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model("llama", tmp_path)
    path = tmp_path / "model.onnx"
    build_decoder_graph(model, path, 64, False, external=False)
    graph = onnx.load(str(path))
    norm = next(i for i in graph.graph.initializer if i.name == "layers.1.input_layernorm")
    norm.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(norm) * 1.5, norm.name))
    onnx.save(graph, str(path))
    with pytest.raises(ExportError, match="does not match PyTorch"):
        check(model, path, pad_id=0, bidirectional=False)

    # A built graph that fails its check is replaced by the traced one, with the reason.
    import slimembed_export.decoder as decoder

    def broken(*args: object, **kwargs: object) -> dict[str, float]:
        raise ExportError("the fused decoder graph does not match PyTorch: {}")

    monkeypatch.setattr(decoder, "check", broken)
    with pytest.warns(UserWarning, match="traced graph instead"):
        made = export_graph(model, True, path, pad_id=0, max_length=64)
    assert made.startswith("torch.onnx dynamo")
    assert "does not match" in made
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "MultiHeadAttention" not in ops


def test_no_fuse_and_unsupported_architectures_keep_the_traced_graph(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    made = export_graph(_model("qwen2", tmp_path), True, path, pad_id=0, fuse=False)
    assert made.endswith("unfused (--no-fuse)")
    made = export_graph(_model("gpt2", tmp_path), True, path, pad_id=0)
    assert "GPT2Model is not one of the fused decoder architectures" in made


def test_large_graphs_stream_weights_to_external_data(tmp_path: Path) -> None:
    model = _model("qwen3", tmp_path)
    path = tmp_path / "model.onnx"
    build_decoder_graph(model, path, 64, False, external=True)
    weights = sum(p.numel() * 4 for p in model.parameters())
    data = path.with_name("model.onnx.data").stat().st_size
    assert path.stat().st_size < weights / 4 < data  # the graph file holds no weight matrix
    check(model, path, pad_id=0, bidirectional=False)
