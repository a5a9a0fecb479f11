"""Reranking with a causal LM's log-probabilities against SGPT's cross-encoder code."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers

from benchmarks.rerank_speed import sgpt_scores
from slimembed import Manifest, TextCrossEncoder, TextEmbedding, retrieve_then_rerank
from slimembed import rerank as rerank_module
from slimembed.errors import ModelFileError, TooLongError
from slimembed_export import ExportError, ExportOptions, export_model
from tests import reference, tiny

MAX_LENGTH = 128
ARCHES = ("gpt2", "llama", "qwen3")
# Logits of a realistic size (a few units): at init 0.4 the random LMs give logits near 100,
# whose float32 rounding alone is 1e-5.
INIT_RANGE = 0.1


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """arch -> (source model, rerank export), built once for the module."""
    root = tmp_path_factory.mktemp("rerank")
    built = {}
    for arch in ARCHES:
        source = tiny.build(arch, root / "src" / arch, init_range=INIT_RANGE)
        out = root / "out" / arch
        export_model(str(source), out, ExportOptions(task="rerank", max_length=MAX_LENGTH))
        built[arch] = (source, out)
    return built


def sgpt_reference(source: Path, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
    """SGPT's code (benchmarks.rerank_speed.sgpt_scores) on the PyTorch model, in float64."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    return sgpt_scores(model, tokenizer, pairs, batch_size, MAX_LENGTH, dtype=torch.float64)


def _pairs() -> list[tuple[str, str]]:
    texts = reference.mixed_texts()  # short multilingual, long SciFact abstracts, an empty text
    queries = [t for t in texts if t][:6]
    return [(q, d) for q in queries for d in texts[::3]]


@pytest.mark.parametrize("arch", ARCHES)
def test_scores_match_sgpt_code(arch: str, rerankers: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    source, model_dir = rerankers[arch]
    pairs = _pairs()
    want = sgpt_reference(source, pairs, batch_size=8)
    np.testing.assert_allclose(sgpt_reference(source, pairs, batch_size=1), want, atol=1e-6)
    # Documents must move the score, or matching it would prove little.
    assert np.ptp(want[: len(pairs) // 6]) > 1.0
    manifest = Manifest.load(model_dir)
    assert manifest.parity["batch_max_abs_diff"] <= 1e-4
    for side in ("left", "right"):
        variant = tmp_path / side
        shutil.copytree(model_dir, variant)
        manifest.with_changes(padding_side=side).save(variant)
        reranker = TextCrossEncoder(variant)
        batched = np.array(list(reranker.rerank_pairs(pairs, batch_size=len(pairs))))
        single = np.array(list(reranker.rerank_pairs(pairs, batch_size=1)))
        np.testing.assert_allclose(batched, want, atol=1e-4, err_msg=side)
        np.testing.assert_allclose(single, want, atol=1e-4, err_msg=side)
        # Batch invariance: a pair's score does not depend on its batch.
        np.testing.assert_allclose(batched, single, atol=1e-5, err_msg=side)


def test_rerank_api_order_mean_and_errors(rerankers: dict) -> None:  # type: ignore[type-arg]
    source, model_dir = rerankers["qwen3"]
    reranker = TextCrossEncoder(model_dir)
    docs = ["A man plays a guitar.", "The stock market fell today.", "", "Guitars have strings."]
    query = "who plays the guitar"
    scores = list(reranker.rerank(query, docs, batch_size=2))
    assert len(scores) == len(docs)
    np.testing.assert_allclose(
        scores, sgpt_reference(source, [(query, d) for d in docs], 4), atol=1e-4
    )
    tokens = len(reranker.tokenizer.encode([query], add_special_tokens=False).row(0))
    np.testing.assert_allclose(
        list(reranker.rerank(query, docs, mean=True)), np.array(scores) / tokens, atol=1e-6
    )
    assert list(reranker.rerank(query, [])) == []
    with pytest.raises(ValueError, match="no tokens"):
        list(reranker.rerank("", docs))
    # A query past the max length is never cut: TooLongError (a ValueError) names its pair,
    # counted over the whole input.
    long_query = " ".join(["guitar"] * 200)
    with pytest.raises(TooLongError, match=r"query of pair 0 .* never cut") as caught:
        list(reranker.rerank(long_query, docs))
    assert isinstance(caught.value, ValueError)
    assert caught.value.index == 0
    with pytest.raises(TooLongError, match="pair 2") as caught:
        list(reranker.rerank_pairs([(query, "a"), (query, "b"), (long_query, "c")]))
    assert caught.value.index == 2
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        list(reranker.rerank(query, ["ok", None]))  # type: ignore[list-item]
    with pytest.raises(ModelFileError, match="TextCrossEncoder"):
        TextEmbedding(model_dir)


def test_fastembed_surface_scores_as_sgpt(rerankers: dict) -> None:  # type: ignore[type-arg]
    """fastembed's calls (positional and by keyword, a bare pair, token_count) give the scores
    of SGPT's code, and rerank orders documents as those scores do."""
    source, model_dir = rerankers["gpt2"]
    reranker = TextCrossEncoder(model_name=str(model_dir), threads=1, cuda="auto", lazy_load=True)
    query = "who plays the guitar"
    docs = ["The stock market fell today.", "A man plays a guitar.", "Guitars have strings."]
    want = sgpt_reference(source, [(query, d) for d in docs], 3)

    positional = list(reranker.rerank(query, docs, 64, None))
    by_keyword = list(reranker.rerank(query=query, documents=iter(docs), batch_size=2))
    pairs = list(reranker.rerank_pairs(pairs=[(query, d) for d in docs], batch_size=1))
    np.testing.assert_allclose(positional, want, atol=1e-4)
    np.testing.assert_allclose(by_keyword, positional, atol=1e-5)
    np.testing.assert_allclose(pairs, positional, atol=1e-5)
    assert np.argsort(positional).tolist() == np.argsort(want).tolist()
    np.testing.assert_allclose(list(reranker.rerank_pairs((query, docs[1]))), want[1], atol=1e-4)

    tokens = reranker.tokenizer.encode
    template = Manifest.load(model_dir).rerank_template
    assert template is not None
    context = tokens([template.replace("{document}", docs[0])], add_special_tokens=False)
    expected = len(context.row(0)) + len(tokens([query], add_special_tokens=False).row(0))
    assert reranker.token_count((query, docs[0])) == expected
    assert reranker.token_count([(query, docs[0])] * 3, batch_size=2) == 3 * expected
    with pytest.raises(TypeError, match="unexpected keyword"):
        TextCrossEncoder(model_dir, no_such_option=1)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="cuda must be"):
        TextCrossEncoder(model_dir, cuda="gpu")


def test_parallel_reranking_gives_the_scores_of_one_process(rerankers: dict) -> None:  # type: ignore[type-arg]
    _, model_dir = rerankers["llama"]
    reranker = TextCrossEncoder(model_dir, threads=1)
    pairs = _pairs()
    want = np.array(list(reranker.rerank_pairs(pairs, batch_size=8)))

    got = np.array(list(reranker.rerank_pairs(pairs, batch_size=8, parallel=2)))
    query = pairs[0][0]
    docs = [d for q, d in pairs if q == query]
    by_document = list(reranker.rerank(query, docs, batch_size=4, parallel=2))

    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(by_document, want[: len(docs)], atol=1e-5)
    # Errors in a worker's batch name the pair by its position in the caller's input.
    broken: list[object] = [*pairs[:20], ("a query", None)]
    with pytest.raises(TypeError, match=r"texts\[20\]"):
        list(reranker.rerank_pairs(broken, batch_size=8, parallel=2))  # type: ignore[arg-type]
    long_query = " ".join(["guitar"] * 200)
    with pytest.raises(TooLongError, match="pair 17") as caught:
        list(reranker.rerank_pairs([*pairs[:17], (long_query, "x")], batch_size=8, parallel=2))
    assert caught.value.index == 17
    with pytest.raises(ValueError, match="parallel"):
        reranker.rerank_pairs(pairs, parallel=-1)


def test_add_custom_model_names_a_reranker(
    rerankers: dict,  # type: ignore[type-arg]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rerank_module, "_CUSTOM", {})
    _, model_dir = rerankers["qwen3"]
    assert TextCrossEncoder.list_supported_models() == []
    TextCrossEncoder.add_custom_model(
        "my-reranker", {"hf": str(model_dir)}, description="tiny", size_in_gb=0.001
    )
    (entry,) = TextCrossEncoder.list_supported_models()
    assert entry["model"] == "my-reranker"
    assert entry["sources"]["hf"] == str(model_dir)
    assert {"model_file", "description", "license", "size_in_GB", "additional_files"} <= set(entry)

    by_name = TextCrossEncoder("my-reranker", threads=1)
    pairs = _pairs()[:12]
    want = list(TextCrossEncoder(model_dir, threads=1).rerank_pairs(pairs))
    np.testing.assert_allclose(list(by_name.rerank_pairs(pairs)), want, atol=1e-6)
    assert by_name.model_name == "my-reranker"
    # Spawned workers know nothing of this process's registrations: they load the source.
    np.testing.assert_allclose(
        list(by_name.rerank_pairs(pairs, batch_size=4, parallel=2)), want, atol=1e-5
    )
    with pytest.raises(ValueError, match="already registered"):
        TextCrossEncoder.add_custom_model("My-Reranker", str(model_dir))
    with pytest.raises(ValueError, match="manifest names its graph"):
        TextCrossEncoder.add_custom_model("other", str(model_dir), model_file="onnx/model.onnx")
    with pytest.raises(ValueError, match="additional_files"):
        TextCrossEncoder.add_custom_model("other", str(model_dir), additional_files=["x.json"])
    with pytest.raises(ValueError, match="no Hugging Face"):
        TextCrossEncoder.add_custom_model("other", {"url": "https://example.com/m.tar.gz"})


def test_graph_returns_token_logprobs_not_logits(rerankers: dict) -> None:  # type: ignore[type-arg]
    """The output is (batch, targets): the vocabulary never leaves the graph."""
    _, model_dir = rerankers["gpt2"]
    graph = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    (output,) = graph.graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert output.name == "token_logprobs"
    assert len(dims) == 2
    assert tiny.VOCAB not in dims


def test_embedders_and_encoders_are_refused(
    exported: Callable[[str], Path], tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelFileError, match="embedding model"):
        TextCrossEncoder(exported("bert"))
    with pytest.raises(ExportError, match="not a causal LM"):
        export_model(str(tiny_source("bert")), tmp_path / "out", ExportOptions(task="rerank"))
    assert not (tmp_path / "out").exists()


def test_retrieve_then_rerank(exported: Callable[[str], Path], rerankers: dict) -> None:  # type: ignore[type-arg]
    embedder = TextEmbedding(exported("bert"))
    reranker = TextCrossEncoder(rerankers["llama"][1])
    docs = [t for t in reference.mixed_texts() if t][:12]
    query = docs[3]
    ranked = retrieve_then_rerank(query, docs, embedder, reranker, top_k=5)
    assert len(ranked) == 5
    # The bi-encoder's top 5 (the query itself among them), reordered by rerank score.
    vectors = embedder.encode(docs, prompt="document")
    top = set(np.argsort(-(vectors @ embedder.encode([query], prompt="query")[0]))[:5].tolist())
    assert {i for i, _ in ranked} == top
    scores = [s for _, s in ranked]
    assert scores == sorted(scores, reverse=True)
    direct = list(reranker.rerank(query, [docs[i] for i, _ in ranked]))
    np.testing.assert_allclose(scores, direct, atol=1e-5)


def test_cli_rerank_prints_best_first(rerankers: dict) -> None:  # type: ignore[type-arg]
    from click.testing import CliRunner

    from slimembed.cli import main

    model_dir = rerankers["gpt2"][1]
    docs = ["A man plays a guitar.", "Stocks fell."]
    result = CliRunner().invoke(main, ["rerank", "-m", str(model_dir), "who plays guitar", *docs])
    assert result.exit_code == 0, result.output
    scores = list(TextCrossEncoder(model_dir).rerank("who plays guitar", docs))
    lines = result.output.strip().splitlines()
    best = int(np.argmax(scores))
    assert f"[{best}]" in lines[0]
    assert f"{scores[best]:+.4f}" in lines[0]
