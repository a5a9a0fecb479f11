"""fastembed's keywords on ``TextEmbedding`` and ``TextCrossEncoder``: what its clients
(LangChain, qdrant-client, chromadb, LlamaIndex) pass is accepted and honoured, or refused
saying why; ``parallel=`` is real data-parallel embedding in worker processes, in input order;
fastembed's own canonical vector for all-MiniLM-L6-v2 is met. The reranker's behaviour under
fastembed's calls is tested beside its other tests (tests/test_rerank.py)."""

from __future__ import annotations

import inspect
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from slimembed import TextCrossEncoder, TextEmbedding, registry
from slimembed.errors import NonFiniteError, UnknownModelError
from slimembed.text_embedding import DEFAULT_MODEL_DIR
from tests import reference

TEXTS = [f"text number {i}: {'word ' * (i % 17)}end" for i in range(1500)]
# fastembed's tests/test_text_onnx_embeddings.py, CANONICAL_VECTOR_VALUES: "hello world"'s
# first five components, compared at atol 1e-3.
MINILM_HELLO_WORLD = np.array([-0.034478, 0.03102, 0.00673, 0.02611, -0.039362])


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


def test_parallel_workers_know_custom_models_and_report_a_failed_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spawned workers register this process's custom models again; a worker that cannot
    load the model raises that error here instead of being restarted for ever."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    TextEmbedding.add_custom_model("my-static", str(DEFAULT_MODEL_DIR), 256)
    custom = TextEmbedding("my-static")
    want = custom.encode(TEXTS[:200], prompt="document")
    np.testing.assert_array_equal(np.stack(list(custom.embed(TEXTS[:200], parallel=2))), want)

    moved = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, moved)
    gone = TextEmbedding(moved)  # a static table: loaded now, the folder no longer needed
    shutil.rmtree(moved)
    outcome: list[BaseException] = []

    def embed() -> None:
        try:
            list(gone.embed(TEXTS[:100], batch_size=10, parallel=2))
        except Exception as err:  # noqa: BLE001 -- the test looks at it
            outcome.append(err)

    thread = threading.Thread(target=embed, daemon=True)
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "a worker that failed to load its model was restarted"
    (error,) = outcome
    assert str(moved) in str(error)


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


def test_fastembeds_canonical_vector_for_all_minilm(minilm_dir: Path) -> None:
    """fastembed's own golden values, met by the FP32 export of the real weights."""
    model = TextEmbedding(minilm_dir, precision="fp32", threads=1)
    hello, _ = list(model.embed(["hello world", "flag embedding"]))
    assert hello.shape == (384,)
    np.testing.assert_allclose(hello[:5], MINILM_HELLO_WORLD, atol=1e-3)


def _fastembed() -> object:
    return pytest.importorskip(
        "fastembed",
        reason="fastembed is not installed here (it pins huggingface_hub < 2, which the "
        "runtime's tests need newer); install it apart to run this check",
    )


def _missing(theirs: Callable[..., object], ours: Callable[..., object]) -> list[str]:
    """fastembed's named parameters that ours lacks."""
    mine = inspect.signature(ours).parameters
    return [
        p
        for p, spec in inspect.signature(theirs).parameters.items()
        if spec.kind not in (spec.VAR_KEYWORD, spec.VAR_POSITIONAL) and p not in mine
    ]


def _positional(function: Callable[..., object]) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds]


def test_signatures_cover_fastembeds() -> None:
    """Every parameter of fastembed's TextEmbedding methods exists on ours, so a client that
    passes fastembed's keywords reaches slimembed unchanged; positional parameters come in
    fastembed's order."""
    fastembed = _fastembed()
    theirs_cls, ours_cls = fastembed.TextEmbedding, TextEmbedding  # type: ignore[attr-defined]
    for name in ("__init__", "embed", "query_embed", "passage_embed", "token_count"):
        missing = _missing(getattr(theirs_cls, name), getattr(ours_cls, name))
        assert not missing, (name, missing)
        theirs = _positional(getattr(theirs_cls, name))
        assert _positional(getattr(ours_cls, name))[: len(theirs)] == theirs, name


def test_cross_encoder_signatures_cover_fastembeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for TextCrossEncoder; fastembed's keywords that its public class hides in
    ``**kwargs`` (``device_id``, ``specific_model_path``) are read from the ONNX class it
    passes them to; positional parameters come in fastembed's order."""
    fastembed = _fastembed()
    from fastembed.rerank.cross_encoder.onnx_text_cross_encoder import OnnxTextCrossEncoder

    theirs_cls = fastembed.rerank.cross_encoder.TextCrossEncoder  # type: ignore[attr-defined]
    methods = ("rerank", "rerank_pairs", "token_count", "add_custom_model")
    for name in ("__init__", *methods, "list_supported_models"):
        missing = _missing(getattr(theirs_cls, name), getattr(TextCrossEncoder, name))
        assert not missing, (name, missing)
    assert not _missing(OnnxTextCrossEncoder.__init__, TextCrossEncoder.__init__)
    for name in ("__init__", *methods):
        theirs = _positional(getattr(theirs_cls, name))
        assert _positional(getattr(TextCrossEncoder, name))[: len(theirs)] == theirs, name
    # fastembed's ModelSource names the repository a custom reranker loads from.
    from fastembed.common.model_description import ModelSource

    from slimembed import rerank

    monkeypatch.setattr(rerank, "_CUSTOM", {})
    TextCrossEncoder.add_custom_model("my-reranker", ModelSource(hf="org/reranker"))
    assert TextCrossEncoder.source_of("my-reranker") == "org/reranker"
