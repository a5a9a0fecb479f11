"""fastembed's keywords on ``TextEmbedding``: what its clients (LangChain, qdrant-client,
chromadb, LlamaIndex) pass is accepted and honoured, or refused saying why; ``parallel=`` is
real data-parallel embedding in worker processes, in input order."""

from __future__ import annotations

import inspect
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from slimembed import TextEmbedding
from slimembed.errors import NonFiniteError, UnknownModelError
from tests import reference

TEXTS = [f"text number {i}: {'word ' * (i % 17)}end" for i in range(1500)]


def test_parallel_embedding_gives_the_vectors_of_one_process_in_order() -> None:
    model = TextEmbedding()
    want = model.encode(TEXTS, prompt="document", batch_size=64)

    got = np.stack(list(model.embed(TEXTS, batch_size=64, parallel=2)))
    queries = np.stack(list(model.query_embed(TEXTS[:300], batch_size=32, parallel=2)))

    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(queries, model.encode(TEXTS[:300], prompt="query"))
    # A bad text far into the stream is named by its position in the caller's input.
    broken: list[object] = [*TEXTS[:1000], None]
    with pytest.raises(TypeError, match=r"texts\[1000\]"):
        list(model.embed(broken, batch_size=64, parallel=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parallel"):
        model.embed(TEXTS, parallel=-1)


def test_a_worker_error_crosses_the_process_boundary_intact() -> None:
    import pickle

    error = pickle.loads(pickle.dumps(NonFiniteError(7)))
    assert isinstance(error, NonFiniteError)
    assert error.index == 7
    assert "texts[7]" in str(error)


def test_fastembed_keywords_are_honoured(exported: Callable[[str], Path], tmp_path: Path) -> None:
    bert = exported("bert")
    texts = ["hello world", "a much longer text " * 40]
    plain = TextEmbedding(bert, threads=1)

    auto = TextEmbedding(bert, cuda="auto", threads=1)  # no CUDA here: CPU
    with_options = TextEmbedding(
        bert, providers=[("CPUExecutionProvider", {})], device_ids=[0], threads=1
    )
    short = TextEmbedding(bert, max_length=8, threads=1)
    longer = TextEmbedding(bert, max_length=100_000, threads=1)
    shutil.copytree(bert, tmp_path / "files")
    by_path = TextEmbedding("my-model", specific_model_path=tmp_path / "files", threads=1)

    want = plain.encode(texts, prompt="document")
    for model in (auto, with_options, longer, by_path):
        np.testing.assert_allclose(model.encode(texts, prompt="document"), want, atol=1e-6)
    assert auto.precision == plain.precision
    # [CLS] hello world [SEP], and the long text cut to 8 tokens.
    assert short.token_count(texts) == 4 + 8
    assert plain.token_count(texts) > 4 + 8
    assert longer.manifest.max_length == plain.manifest.max_length
    assert reference.cosine(short.encode(texts), plain.encode(texts))[1] < 0.999
    assert by_path.model_name == "my-model"
    assert TextEmbedding.get_embedding_size("all-MiniLM-L6-v2") == 384
    with pytest.raises(UnknownModelError):
        TextEmbedding.get_embedding_size("no-such-model")


def test_fastembed_keywords_that_cannot_apply_say_why(exported: Callable[[str], Path]) -> None:
    bert = exported("bert")
    with pytest.raises(ValueError, match="cuda must be"):
        TextEmbedding(bert, cuda="gpu")
    with pytest.raises(ValueError, match="max_length"):
        TextEmbedding(bert, max_length=0)
    with pytest.raises(ValueError, match="device_ids"):
        TextEmbedding(bert, device_ids=[])
    with pytest.raises(TypeError, match="provider is a name"):
        TextEmbedding(bert, providers=[("CPUExecutionProvider",)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="unexpected keyword"):
        TextEmbedding(bert, no_such_option=1)  # type: ignore[call-arg]
    # The embedded static default runs in Rust: "auto" means CPU for it, CUDA is refused.
    assert TextEmbedding(cuda="auto").precision == "int8"


def test_signatures_cover_fastembeds() -> None:
    """Every parameter of fastembed's TextEmbedding methods exists on ours, so a client that
    passes fastembed's keywords reaches slimembed unchanged."""
    fastembed = pytest.importorskip(
        "fastembed",
        reason="fastembed is not installed here (it pins huggingface_hub < 2, which the "
        "runtime's tests need newer); install it apart to run this check",
    )
    theirs_cls, ours_cls = fastembed.TextEmbedding, TextEmbedding
    for name in ("__init__", "embed", "query_embed", "passage_embed", "token_count"):
        theirs = inspect.signature(getattr(theirs_cls, name)).parameters
        ours = inspect.signature(getattr(ours_cls, name)).parameters
        missing = [
            p
            for p, spec in theirs.items()
            if spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL) and p not in ours
        ]
        assert not missing, (name, missing)
