"""TextEmbedding's behaviour at its public edge: inputs, order, prompts, limits, files,
providers, threads and hub-cache loading."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.datasets import sts
from slimembed import (
    ManifestError,
    ModelFileError,
    ProviderError,
    TextEmbedding,
    UnknownModelError,
)
from slimembed.backends import TransformerBackend
from slimembed.cli import main
from tests import tiny
from tests.reference import cosine

Exported = Callable[[str], Path]


@pytest.fixture(scope="module")
def bert(exported: Exported) -> Path:
    return exported("bert")


@pytest.fixture(scope="module")
def model(bert: Path) -> TextEmbedding:
    return TextEmbedding(bert, threads=2)


def _texts(n: int = 40) -> list[str]:
    pairs = sts("en-test")
    return (pairs.sentences1 + pairs.sentences2)[:n]


def test_generator_of_float32_vectors_in_input_order(model: TextEmbedding) -> None:
    texts = _texts()
    rows = list(model.embed(texts, batch_size=7))
    assert len(rows) == len(texts)
    assert all(r.dtype == np.float32 and r.shape == (model.embedding_size,) for r in rows)
    alone = np.stack([next(model.embed(t)) for t in texts])
    assert cosine(np.stack(rows), alone).min() > 0.99999


def test_bare_string_generator_and_empty_inputs(model: TextEmbedding) -> None:
    assert len(list(model.embed("just one text"))) == 1
    assert len(list(model.embed(t for t in ["a", "b", "c"]))) == 3
    assert list(model.embed([])) == []
    assert model.encode([]).shape == (0, model.embedding_size)
    empty = model.encode(["", "x"])
    assert np.isfinite(empty).all()
    assert np.linalg.norm(empty[0]) == pytest.approx(1.0, abs=1e-5)  # [CLS] [SEP] alone


@pytest.mark.parametrize("bad", [None, 3, b"bytes"])
def test_non_iterable_inputs_raise_type_error_at_the_call(
    model: TextEmbedding, bad: object
) -> None:
    with pytest.raises(TypeError, match="texts must be"):
        model.embed(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, 3, ["nested"]])
def test_non_string_text_is_named_by_position(model: TextEmbedding, bad: object) -> None:
    with pytest.raises(TypeError, match=r"texts\[2\] is"):
        list(model.embed(["a", "b", bad]))  # type: ignore[list-item]


def test_long_texts_are_truncated_at_max_length(model: TextEmbedding) -> None:
    long = " ".join(["word"] * 400)
    a, b = model.encode([long, long + " and then something entirely different"])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_matryoshka_dim_truncates_then_renormalizes(model: TextEmbedding) -> None:
    texts = _texts(10)
    full = model.encode(texts)
    small = model.encode(texts, dim=8)
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(small, want, atol=1e-6)
    assert next(model.embed("x", dim=8)).shape == (8,)
    for bad in (0, model.embedding_size + 1, 2.5, True):
        with pytest.raises(ValueError, match="dim must be"):
            model.encode(["x"], dim=bad)  # type: ignore[arg-type]


def test_batch_size_and_token_budget_do_not_change_results(bert: Path) -> None:
    texts = [*_texts(30), " ".join(["long"] * 300)]
    base = TextEmbedding(bert).encode(texts, batch_size=64)
    tight = TextEmbedding(bert, max_tokens=50).encode(texts, batch_size=3)
    assert cosine(base, tight).min() > 0.99999
    with pytest.raises(ValueError, match="batch_size"):
        TextEmbedding(bert).embed(texts, batch_size=0)


def test_prompts_are_applied_to_queries_and_documents(
    bert: Path, variant: Callable[..., Path]
) -> None:
    path = variant(
        bert,
        query={"template": "query: {text}"},
        document={"template": "passage: {text}"},
    )
    model = TextEmbedding(path)
    raw = model.encode(["query: what is x?", "passage: x is y"])
    np.testing.assert_allclose(next(model.query_embed("what is x?")), raw[0], atol=1e-6)
    np.testing.assert_allclose(next(model.passage_embed("x is y")), raw[1], atol=1e-6)
    np.testing.assert_allclose(model.encode(["x is y"], prompt="document")[0], raw[1], atol=1e-6)
    with pytest.raises(ValueError, match="prompt must be"):
        model.encode(["x"], prompt="other")
    with pytest.raises(ValueError, match="queries only"):
        model.encode(["x"], instruction="task")


def test_instruction_template_and_override(bert: Path, variant: Callable[..., Path]) -> None:
    path = variant(
        bert, query={"template": "Instruct: {instruction}\nQuery: {text}", "instruction": "Find"}
    )
    model = TextEmbedding(path)
    default = next(model.query_embed("cats"))
    np.testing.assert_allclose(default, model.encode(["Instruct: Find\nQuery: cats"])[0], atol=1e-6)
    other = next(model.query_embed("cats", instruction="Classify"))
    np.testing.assert_allclose(
        other, model.encode(["Instruct: Classify\nQuery: cats"])[0], atol=1e-6
    )


def test_same_results_from_eight_threads(model: TextEmbedding) -> None:
    texts = _texts(64)
    want = model.encode(texts, batch_size=16)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(model.encode, texts, 16) for _ in range(16)]
        results = [f.result(timeout=120) for f in futures]
    for got in results:
        np.testing.assert_array_equal(got, want)


def test_lazy_load_defers_the_session(bert: Path) -> None:
    model = TextEmbedding(bert, lazy_load=True)
    assert isinstance(model.backend, TransformerBackend)
    assert not model.backend.runner.loaded
    assert model.encode(["x"]).shape == (1, model.embedding_size)
    assert model.backend.runner.loaded


def test_cuda_request_without_cuda_is_an_error(bert: Path) -> None:
    with pytest.raises(ProviderError, match="CUDAExecutionProvider") as info:
        TextEmbedding(bert, cuda=True)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        TextEmbedding(bert, providers=["CUDAExecutionProvider"])


def test_missing_and_corrupt_files_name_the_file(bert: Path, tmp_path: Path) -> None:
    broken = tmp_path / "m"
    shutil.copytree(bert, broken)
    (broken / "model.onnx").write_bytes(b"\x00not a graph")
    with pytest.raises(ModelFileError, match=r"model\.onnx"):
        TextEmbedding(broken)
    (broken / "model.onnx").unlink()
    with pytest.raises(ModelFileError, match=r"model\.onnx not found"):
        TextEmbedding(broken)
    shutil.copy(bert / "model.onnx", broken / "model.onnx")
    (broken / "tokenizer.json").write_text("{")
    with pytest.raises(ModelFileError, match=r"tokenizer\.json"):
        TextEmbedding(broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ModelFileError, match=r"tokenizer\.json"):
        TextEmbedding(broken)
    with pytest.raises(ManifestError, match="not a slimembed model directory"):
        TextEmbedding(tmp_path)


def test_graph_that_breaks_the_contract_is_refused(
    bert: Path, variant: Callable[..., Path]
) -> None:
    with pytest.raises(ModelFileError, match="graph inputs"):
        TextEmbedding(variant(bert, graph_inputs=["input_ids", "attention_mask", "position_ids"]))
    with pytest.raises(ModelFileError, match="no output"):
        TextEmbedding(variant(bert, graph_output="pooled"))
    with pytest.raises(ModelFileError, match="output dim"):
        TextEmbedding(variant(bert, dim=16))


def test_unknown_names_and_offline_hub_ids(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="not a directory"):
        TextEmbedding("no-such-model")
    with pytest.raises(ModelFileError, match="not in the cache"):
        TextEmbedding("someone/absent-model", cache_dir=tmp_path)


def _hub_cache(tmp_path: Path, name: str, files: Path) -> Path:
    """Lay ``files`` out as huggingface_hub's cache does for the repository acme/``name``."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / f"models--acme--{name}"
    shutil.copytree(files, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_hub_id_loads_from_a_hub_cache_layout(bert: Path, tmp_path: Path) -> None:
    """A repository already in the huggingface_hub cache loads offline by its id."""
    snapshot = _hub_cache(tmp_path, "tiny-bert", bert)
    model = TextEmbedding("acme/tiny-bert", cache_dir=tmp_path)
    assert model.model_dir == snapshot
    np.testing.assert_allclose(
        model.encode(["hello"]), TextEmbedding(bert).encode(["hello"]), atol=1e-6
    )


def test_registry_name_points_to_export() -> None:
    with pytest.raises(UnknownModelError, match="slimembed export all-MiniLM-L6-v2"):
        TextEmbedding("all-MiniLM-L6-v2")


def test_list_supported_models_is_fastembed_shaped() -> None:
    models = TextEmbedding.list_supported_models()
    minilm = next(m for m in models if m["model"] == "sentence-transformers/all-MiniLM-L6-v2")
    assert minilm["dim"] == 384
    assert minilm["pooling"] == "mean"


def test_cli_embed_and_info(bert: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["embed", "-m", str(bert), "hello world", "second text"])
    assert result.exit_code == 0, result.output
    assert "2 texts -> 32 dims" in result.output
    out = tmp_path / "v.npy"
    result = runner.invoke(main, ["embed", "-m", str(bert), "a", "b", "-o", str(out)])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), TextEmbedding(bert).encode(["a", "b"]), atol=1e-6)
    result = runner.invoke(main, ["info", str(bert)])
    assert json.loads(result.output)["pooling"] == "mean"
    result = runner.invoke(main, ["embed", "--model", str(tmp_path), "x"])
    assert result.exit_code != 0
    assert "not a slimembed model directory" in result.output


def _feature_graph(path: Path) -> None:
    """A hand-made graph taking all four inputs: channel 0 of each token's state is its
    position id, channel 1 its token id plus token type id."""
    import onnx
    from onnx import TensorProto, helper

    names = ["input_ids", "attention_mask", "token_type_ids", "position_ids"]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Cast", ["position_ids"], ["pos"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["types"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ids", "types"], ["idtype"]),
        helper.make_node("Unsqueeze", ["pos", "axes"], ["pos3"]),
        helper.make_node("Unsqueeze", ["idtype", "axes"], ["id3"]),
        helper.make_node("Concat", ["pos3", "id3"], ["last_hidden_state"], axis=2),
    ]
    output = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 2]
    )
    graph = helper.make_graph(nodes, "features", inputs, [output], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("side", ["left", "right"])
def test_position_and_token_type_inputs_are_fed_for_both_padding_sides(
    tmp_path: Path, side: str
) -> None:
    from slimembed import Manifest

    _feature_graph(tmp_path / "model.onnx")
    (tmp_path / "tokenizer.json").write_text(tiny.number_tokenizer_json())
    Manifest(
        dim=2,
        pooling="last_token",
        normalize=False,
        max_length=None,
        padding_side=side,
        pad_id=0,
        add_special_tokens=False,
        graph_inputs=("input_ids", "attention_mask", "token_type_ids", "position_ids"),
    ).save(tmp_path)
    got = TextEmbedding(tmp_path).encode(["5 6 7", "9", "1 2 3 4 5 6"], batch_size=3)
    # Last token: position n - 1 counted from the text's first token, its id, token type 0.
    np.testing.assert_array_equal(got, [[2, 7], [0, 9], [5, 6]])


def _kv_cache_graph(path: Path) -> None:
    """A causal LM's layout as Optimum and Transformers.js export it: a KV cache of one layer
    (key float32, value float16, 2 heads of 3) concatenated with the new tokens on the
    sequence axis. Each token's state is its id plus its position id, in all 6 channels."""
    import onnx
    from onnx import TensorProto, helper

    cache = ["batch", 2, "past_sequence_length", 3]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask", "position_ids")
    ] + [
        helper.make_tensor_value_info("past_key_values.0.key", TensorProto.FLOAT, cache),
        helper.make_tensor_value_info("past_key_values.0.value", TensorProto.FLOAT16, cache),
    ]
    consts = [
        helper.make_tensor("k_axes", TensorProto.INT64, [2], [1, 3]),
        helper.make_tensor("heads", TensorProto.INT64, [4], [1, 2, 1, 3]),
        helper.make_tensor("flat", TensorProto.INT64, [3], [0, 0, 6]),
        helper.make_tensor("p_axes", TensorProto.INT64, [1], [2]),
    ]
    nodes = [
        helper.make_node("Cast", ["input_ids"], ["ids"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["ids", "k_axes"], ["ids4"]),
        helper.make_node("Expand", ["ids4", "heads"], ["k_new"]),
        helper.make_node("Concat", ["past_key_values.0.key", "k_new"], ["present.0.key"], axis=2),
        helper.make_node("Transpose", ["present.0.key"], ["by_token"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["by_token", "flat"], ["states"]),
        helper.make_node("Cast", ["past_key_values.0.value"], ["v"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["v"], ["v_sum"], keepdims=0),
        helper.make_node("Cast", ["position_ids"], ["pos"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["pos", "p_axes"], ["pos3"]),
        helper.make_node("Add", ["states", "pos3"], ["placed"]),
        helper.make_node("Add", ["placed", "v_sum"], ["last_hidden_state"]),
    ]
    outputs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "seq", 6]),
        helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, cache),
    ]
    graph = helper.make_graph(nodes, "kv", inputs, outputs, initializer=consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_a_kv_cache_graph_gets_empty_past_tensors_of_its_declared_dtype(tmp_path: Path) -> None:
    from slimembed import Manifest

    _kv_cache_graph(tmp_path / "model.onnx")
    (tmp_path / "tokenizer.json").write_text(tiny.number_tokenizer_json())
    manifest = Manifest(
        dim=6,
        pooling="last_token",
        normalize=False,
        max_length=None,
        padding_side="left",
        pad_id=0,
        add_special_tokens=False,
        graph_inputs=("input_ids", "attention_mask", "position_ids", "past_key_values"),
    )
    manifest.save(tmp_path)
    got = TextEmbedding(tmp_path).encode(["5 6 7", "8", "1 2 3 4"], batch_size=3)
    # The last token's id plus its position: 7 + 2, 8 + 0, 4 + 3.
    np.testing.assert_array_equal(got, np.repeat([[9.0], [8.0], [7.0]], 6, axis=1))
    # A manifest that promises a KV cache the graph lacks is named as the model's fault.
    _feature_graph(tmp_path / "model.onnx")
    replace(manifest, graph_inputs=(*manifest.graph_inputs, "token_type_ids")).save(tmp_path)
    with pytest.raises(ModelFileError, match="differ from the manifest"):
        TextEmbedding(tmp_path).encode(["1 2"])


def test_hub_download_names_every_precision_and_its_data() -> None:
    """A repository holding several precisions downloads each graph with its external data."""
    from slimembed.hub import manifest_files
    from slimembed.manifest import GraphVariant, Manifest

    manifest = Manifest(
        dim=8,
        pooling="mean",
        normalize=True,
        max_length=16,
        padding_side="right",
        pad_id=0,
        variants={"int8": GraphVariant("model.int8.onnx"), "fp16": GraphVariant("model.fp16.onnx")},
    )
    files = manifest_files(manifest)
    for name in ("slimembed.json", "tokenizer.json", "model.onnx", "model.onnx*"):
        assert name in files
    for name in ("model.int8.onnx", "model.int8.onnx*", "model.fp16.onnx*"):
        assert name in files
