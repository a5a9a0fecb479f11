"""Normalization is a per-call choice (issue 17, TEI's ``normalize``): ``normalize=None`` is the
model's rule (its manifest), ``True`` / ``False`` override it, for an ONNX model and the
static default alike, through every entry point that embeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import sts
from slimembed import TextEmbedding
from slimembed.text_embedding import DEFAULT_MODEL_DIR

TEXTS = sts("en-test").sentences1[:24]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(scope="module", params=["bert", "static"])
def model_dir(request: pytest.FixtureRequest, exported: Callable[[str], Path]) -> Path:
    """A model whose manifest normalizes: the tiny BERT (ONNX) or the static default."""
    return exported("bert") if request.param == "bert" else DEFAULT_MODEL_DIR


def test_normalize_false_gives_the_pooled_vectors_of_a_normalizing_model(
    model_dir: Path, variant: Callable[..., Path]
) -> None:
    model = TextEmbedding(model_dir, threads=1)
    assert model.manifest.normalize is True
    unit = model.encode(TEXTS)
    raw = model.encode(TEXTS, normalize=False)
    norms = np.linalg.norm(raw, axis=1)
    assert np.abs(norms - 1).min() > 1e-3, norms  # really not normalized
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(_unit(raw), unit, atol=1e-6)
    # The pooled vectors are exactly those of the same model whose manifest does not normalize.
    plain = TextEmbedding(variant(model_dir, normalize=False), threads=1)
    np.testing.assert_array_equal(plain.encode(TEXTS), raw)
    np.testing.assert_array_equal(model.encode(TEXTS, normalize=True), unit)
    # normalize=True on a model that does not normalize: unit vectors, the normalizing model's.
    np.testing.assert_array_equal(plain.encode(TEXTS, normalize=True), unit)
    np.testing.assert_array_equal(plain.encode(TEXTS, normalize=None), raw)


def test_every_entry_point_takes_normalize(model_dir: Path) -> None:
    model = TextEmbedding(model_dir, threads=1)
    raw = model.encode(TEXTS, normalize=False)
    np.testing.assert_array_equal(np.stack(list(model.embed(TEXTS, normalize=False))), raw)
    docs = model.encode(TEXTS, prompt="document", normalize=False)
    np.testing.assert_array_equal(np.stack(list(model.passage_embed(TEXTS, normalize=False))), docs)
    queries = model.encode(TEXTS, prompt="query", normalize=False)
    np.testing.assert_array_equal(
        np.stack(list(model.query_embed(TEXTS, normalize=False))), queries
    )
    ids = [model.tokenize([t]).row(0).tolist() for t in TEXTS]
    np.testing.assert_array_equal(model.encode_ids(ids, normalize=False), raw)
    np.testing.assert_array_equal(model.encode_ids(ids), model.encode(TEXTS))
    for bad in ("no", 0, 1.0):
        with pytest.raises(TypeError, match="normalize must be"):
            model.encode(["x"], normalize=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="normalize must be"):
            model.embed(["x"], normalize=bad)  # type: ignore[arg-type]


def test_matryoshka_without_normalize_truncates_and_does_not_renormalize(
    model_dir: Path,
) -> None:
    model = TextEmbedding(model_dir, threads=1)
    raw = model.encode(TEXTS, normalize=False)
    cut = model.encode(TEXTS, dim=8, normalize=False)
    np.testing.assert_array_equal(cut, raw[:, :8])
    np.testing.assert_allclose(model.encode(TEXTS, dim=8), _unit(raw[:, :8]), atol=1e-6)


def test_parallel_workers_honour_normalize() -> None:
    model = TextEmbedding(threads=1)
    for normalize in (False, True):
        got = np.stack(list(model.embed(TEXTS, batch_size=2, parallel=2, normalize=normalize)))
        np.testing.assert_array_equal(
            got, model.encode(TEXTS, prompt="document", normalize=normalize)
        )
