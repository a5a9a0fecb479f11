"""`slimembed distill` and the embedded default model it made."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from benchmarks.quality import sts_spearman
from slimembed import Manifest, ProviderError, TextEmbedding, tables
from slimembed.distill import distill, distilled_ids, pca, sif_weights, token_vectors
from slimembed.text_embedding import DEFAULT_MODEL_DIR
from tests.reference import cosine


def test_distilled_rows_follow_the_recipe(exported: Callable[[str], Path], tmp_path: Path) -> None:
    source = exported("bert")
    manifest = distill(source, tmp_path / "s", dims=16, batch_size=500)
    assert manifest.kind == "static"
    assert manifest.skip_id == 100  # [UNK] of the WordPiece vocabulary, dropped like model2vec
    table = tables.dequantize(tables.load(tmp_path / "s" / "embeddings.safetensors"))
    ids = distilled_ids(source / "tokenizer.json")
    # Special tokens and [unusedN] placeholders get zero rows and no Zipf rank.
    assert not {0, 1, 101, 102} & set(ids.tolist())
    assert np.all(table[[0, 1, 101, 102]] == 0)
    # Every kept row is its token's pooled vector, PCA'd and SIF-weighted.
    vectors = token_vectors(TextEmbedding(source), ids)
    reduced, _ = pca(vectors, 16)
    want = reduced * sif_weights(len(ids))[:, None]
    np.testing.assert_allclose(table[ids], want, rtol=1e-4, atol=1e-5)
    # A one-token text embeds as its normalized row.
    model = TextEmbedding(tmp_path / "s")
    word = json.loads((source / "tokenizer.json").read_text())["model"]["vocab"]["guitar"]
    got = model.encode(["guitar"])[0]
    np.testing.assert_allclose(got, table[word] / np.linalg.norm(table[word]), atol=1e-5)


def test_zipf_weights_and_pca() -> None:
    w = sif_weights(1000)
    assert np.all(np.diff(w) > 0)  # frequent (low-rank) tokens weigh least
    x = np.random.default_rng(0).standard_normal((200, 8)) * np.arange(1, 9)
    scores, kept = pca(x, 3)
    assert scores.shape == (200, 3)
    assert 0 < kept < 1
    assert np.all(scores[np.argmax(np.abs(scores), axis=0), range(3)] > 0)
    assert np.var(scores[:, 0]) >= np.var(scores[:, 1]) >= np.var(scores[:, 2])


def test_distill_refuses_bad_arguments(exported: Callable[[str], Path], tmp_path: Path) -> None:
    source = exported("bert")
    with pytest.raises(ValueError, match="dims"):
        distill(source, tmp_path / "a", dims=10_000)
    with pytest.raises(ValueError, match="precision"):
        distill(source, tmp_path / "b", precision="int4")
    with pytest.raises(ValueError, match="sif_coefficient"):
        distill(source, tmp_path / "c", sif_coefficient=2.0)
    distill(source, tmp_path / "d", dims=8)
    with pytest.raises(ValueError, match="needs a transformer"):
        distill(tmp_path / "d", tmp_path / "e")


def test_distilling_a_decoder_tokenizer(exported: Callable[[str], Path], tmp_path: Path) -> None:
    manifest = distill(exported("qwen3"), tmp_path / "s", dims=8)
    vectors = TextEmbedding(tmp_path / "s").encode(["byte-level BPE works too", "x"])
    assert manifest.dim == 8
    assert np.isfinite(vectors).all()
    assert cosine(vectors[:1], vectors[1:])[0] < 0.999


def test_embedded_default_works_offline_with_its_stated_quality() -> None:
    """README states where the default comes from and what it scores; keep both true."""
    manifest = Manifest.load(DEFAULT_MODEL_DIR)
    assert manifest.kind == "static"
    assert manifest.precision == "int8"
    assert manifest.source["distilled_from"]["id"] == "all-MiniLM-L6-v2"
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 10 * 1024 * 1024
    model = TextEmbedding()
    assert model.embedding_size == 256
    assert sts_spearman(model.encode) == pytest.approx(0.6608, abs=0.002)


def test_default_model_is_thread_safe() -> None:
    model = TextEmbedding()
    texts = [f"sentence number {i} about static embeddings" for i in range(500)]
    want = model.encode(texts)
    with ThreadPoolExecutor(8) as pool:
        results = [
            f.result(timeout=60) for f in [pool.submit(model.encode, texts) for _ in range(16)]
        ]
    for got in results:
        np.testing.assert_array_equal(got, want)


def test_static_threads_and_providers() -> None:
    texts = [f"text {i} for threads" for i in range(300)]
    want = TextEmbedding().encode(texts)
    for threads in (1, 2, 3):
        np.testing.assert_allclose(TextEmbedding(threads=threads).encode(texts), want, atol=1e-6)
    with pytest.raises(ProviderError, match="static model"):
        TextEmbedding(cuda=True)
    with pytest.raises(ValueError, match="threads"):
        TextEmbedding(threads=0)
