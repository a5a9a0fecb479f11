"""The framework integrations (slimembed.integrations) with the real, unmodified clients:
LangChain's Embeddings and in-memory vector store, LlamaIndex's BaseEmbedding and
VectorStoreIndex, Qdrant's local mode and sqlite-vec, on the embedded static default (a
variant of it with distinct query and document prompts, so a swapped prompt shows) and on
SciFact from shared/data."""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import vector_stores
from benchmarks.quality import ranked_ndcg_at_10
from slimembed import TextEmbedding
from slimembed.errors import DimensionMismatchError
from slimembed.text_embedding import DEFAULT_MODEL_DIR

TEXTS = ["A man is playing a guitar.", "", "The stock market fell today.", "Ein Mann spielt."]
QUERY = "who plays the guitar?"
# For the stores: the first is the nearest to QUERY, by far.
NOTES = ["A man is playing a guitar.", "The stock market fell today.", "It rained all day.", ""]
# Documents and queries of a SciFact slice: enough for retrieval to mean something, small
# enough for LangChain's and LlamaIndex's per-query Python paths.
SLICE_DOCS = 500


@pytest.fixture
def prompted(variant: Callable[..., Path]) -> Path:
    """The embedded default with a query prompt and a document prompt that differ, and a
    query instruction (empty by default)."""
    manifest = json.loads((DEFAULT_MODEL_DIR / "slimembed.json").read_text())
    query = {**manifest["query"], "template": "{instruction} query: {text}", "instruction": ""}
    document = {**manifest["document"], "template": "passage: {text}"}
    return variant(DEFAULT_MODEL_DIR, query=query, document=document)


@pytest.fixture(scope="module")
def corpus() -> vector_stores.Corpus:
    return vector_stores.scifact_corpus(SLICE_DOCS)


@pytest.fixture(scope="module")
def exact_ndcg(corpus: vector_stores.Corpus) -> float:
    return vector_stores.exact(TextEmbedding(), corpus).ndcg10


def _slow_encode(model: TextEmbedding, seen: list[int]) -> None:
    """Make ``model.encode`` and ``model.embed`` take 0.3 s and record the thread they run in."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def slow(*args: Any, **kwargs: Any) -> Any:
            seen.append(threading.get_ident())
            time.sleep(0.3)
            return method(*args, **kwargs)

        return slow

    model.encode = wrap(model.encode)  # type: ignore[method-assign]
    model.embed = wrap(model.embed)  # type: ignore[method-assign]


def _ticks_during(awaitable: Any) -> tuple[Any, int]:
    """Run ``awaitable`` beside a coroutine that counts how often the loop gets to run it."""

    async def main() -> tuple[Any, int]:
        ticks = 0
        task = asyncio.ensure_future(awaitable)
        while not task.done():
            ticks += 1
            await asyncio.sleep(0.01)
        return task.result(), ticks

    return asyncio.run(main())


def test_the_query_instruction_reaches_queries_only(prompted: Path) -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from slimembed.integrations.langchain import SlimembedEmbeddings
    from slimembed.integrations.llamaindex import SlimembedEmbedding

    model = TextEmbedding(str(prompted))
    instructed = model.encode([QUERY], prompt="query", instruction="guitar")[0]
    assert not np.allclose(instructed, model.encode([QUERY], prompt="query")[0])
    langchain = SlimembedEmbeddings(str(prompted), instruction="guitar")
    llamaindex = SlimembedEmbedding(str(prompted), instruction="guitar")
    np.testing.assert_array_equal(langchain.embed_query(QUERY), instructed)
    np.testing.assert_array_equal(llamaindex.get_query_embedding(QUERY), instructed)
    documents = model.encode(TEXTS, prompt="document")
    np.testing.assert_array_equal(langchain.embed_documents(TEXTS), documents)
    np.testing.assert_array_equal(llamaindex.get_text_embedding_batch(TEXTS), documents)


# ---- LangChain ------------------------------------------------------------------------------


def test_langchain_vectors_are_text_embeddings(prompted: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.embeddings import Embeddings

    from slimembed.integrations.langchain import SlimembedEmbeddings

    embeddings = SlimembedEmbeddings(str(prompted), batch_size=2)
    model = TextEmbedding(str(prompted))
    assert isinstance(embeddings, Embeddings)
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query(QUERY)
    assert isinstance(documents, list)
    assert all(isinstance(v, list) and isinstance(v[0], float) for v in documents)
    np.testing.assert_array_equal(documents, model.encode(TEXTS, prompt="document"))
    np.testing.assert_array_equal(query, model.encode([QUERY], prompt="query")[0])
    # The two prompts differ in this model, so a swapped prompt would fail above.
    assert not np.allclose(query, model.encode([QUERY], prompt="document")[0])
    assert len(query) == embeddings.model.embedding_size == 256
    assert embeddings.embed_documents([]) == []


def test_langchain_parallel_documents_match(prompted: Path) -> None:
    pytest.importorskip("langchain_core")
    from slimembed.integrations.langchain import SlimembedEmbeddings

    parallel = SlimembedEmbeddings(str(prompted), parallel=2, batch_size=1)
    np.testing.assert_array_equal(
        parallel.embed_documents(TEXTS),
        TextEmbedding(str(prompted)).encode(TEXTS, prompt="document"),
    )


def test_langchain_async_runs_off_the_event_loop(prompted: Path) -> None:
    pytest.importorskip("langchain_core")
    from slimembed.integrations.langchain import SlimembedEmbeddings

    embeddings = SlimembedEmbeddings(str(prompted))
    expected_docs, expected_query = embeddings.embed_documents(TEXTS), embeddings.embed_query(QUERY)
    seen: list[int] = []
    _slow_encode(embeddings.model, seen)
    loop_thread = threading.get_ident()
    docs, ticks = _ticks_during(embeddings.aembed_documents(TEXTS))
    query, query_ticks = _ticks_during(embeddings.aembed_query(QUERY))
    assert docs == expected_docs
    assert query == expected_query
    # The loop ran the counter while each 0.3 s call was under way, in another thread.
    assert ticks > 5
    assert query_ticks > 5
    assert len(seen) == 2
    assert loop_thread not in seen


def test_langchain_in_memory_vector_store_retrieves_scifact(
    corpus: vector_stores.Corpus, exact_ndcg: float
) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.vectorstores import InMemoryVectorStore

    from slimembed.integrations.langchain import SlimembedEmbeddings

    store = InMemoryVectorStore(SlimembedEmbeddings())
    store.add_texts(corpus.docs, ids=corpus.doc_ids)
    rankings = [[d.id for d in store.similarity_search(q, k=10)] for q in corpus.queries]
    ndcg = ranked_ndcg_at_10(rankings, corpus.query_ids, corpus.qrels)
    assert ndcg == pytest.approx(exact_ndcg, abs=1e-6)
    assert exact_ndcg > 0.5  # the slice's judged documents are found, not noise


# ---- LlamaIndex -----------------------------------------------------------------------------


def test_llamaindex_vectors_are_text_embeddings(prompted: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.embeddings.base import BaseEmbedding

    from slimembed.integrations.llamaindex import SlimembedEmbedding

    embed_model = SlimembedEmbedding(str(prompted), embed_batch_size=3)
    model = TextEmbedding(str(prompted))
    assert isinstance(embed_model, BaseEmbedding)
    assert SlimembedEmbedding.class_name() == "SlimembedEmbedding"
    assert embed_model.model_name == str(prompted)
    documents = embed_model.get_text_embedding_batch(TEXTS)
    np.testing.assert_array_equal(documents, model.encode(TEXTS, prompt="document"))
    np.testing.assert_array_equal(
        embed_model.get_text_embedding(TEXTS[0]), model.encode(TEXTS[:1], prompt="document")[0]
    )
    query = embed_model.get_query_embedding(QUERY)
    np.testing.assert_array_equal(query, model.encode([QUERY], prompt="query")[0])
    assert not np.allclose(query, model.encode([QUERY], prompt="document")[0])


def test_llamaindex_round_trips_through_to_dict(prompted: Path) -> None:
    pytest.importorskip("llama_index.core")
    from slimembed.integrations.llamaindex import SlimembedEmbedding

    for name in (str(prompted), None):
        embed_model = SlimembedEmbedding(
            name, instruction="Find it", model_kwargs={"threads": 1}, num_workers=2
        )
        again = SlimembedEmbedding.from_dict(embed_model.to_dict())
        assert (again.model.threads, again.instruction, again.num_workers) == (1, "Find it", 2)
        assert again.get_query_embedding(QUERY) == embed_model.get_query_embedding(QUERY)
        assert again.get_text_embedding(QUERY) == embed_model.get_text_embedding(QUERY)


def test_llamaindex_async_runs_off_the_event_loop(prompted: Path) -> None:
    pytest.importorskip("llama_index.core")
    from slimembed.integrations.llamaindex import SlimembedEmbedding

    embed_model = SlimembedEmbedding(str(prompted))
    expected_docs = embed_model.get_text_embedding_batch(TEXTS)
    expected_query = embed_model.get_query_embedding(QUERY)
    seen: list[int] = []
    _slow_encode(embed_model.model, seen)
    docs, ticks = _ticks_during(embed_model.aget_text_embedding_batch(TEXTS))
    query, query_ticks = _ticks_during(embed_model.aget_query_embedding(QUERY))
    one, _ = _ticks_during(embed_model.aget_text_embedding(TEXTS[2]))
    assert docs == expected_docs
    assert query == expected_query
    assert one == expected_docs[2]
    assert ticks > 5
    assert query_ticks > 5
    assert threading.get_ident() not in seen


def test_llamaindex_vector_store_index_retrieves_scifact(
    corpus: vector_stores.Corpus, exact_ndcg: float
) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode

    from slimembed.integrations.llamaindex import SlimembedEmbedding

    nodes = [TextNode(text=t, id_=i) for i, t in zip(corpus.doc_ids, corpus.docs, strict=True)]
    index = VectorStoreIndex(nodes, embed_model=SlimembedEmbedding())
    retriever = index.as_retriever(similarity_top_k=10)
    rankings = [[hit.node.node_id for hit in retriever.retrieve(q)] for q in corpus.queries]
    ndcg = ranked_ndcg_at_10(rankings, corpus.query_ids, corpus.qrels)
    assert ndcg == pytest.approx(exact_ndcg, abs=1e-6)


def test_llamaindex_fastembed_integration_runs_on_slimembed_in_fastembeds_place(
    corpus: vector_stores.Corpus, exact_ndcg: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-index-embeddings-fastembed, unmodified, with ``fastembed`` resolving to slimembed:
    its vectors are ours and its index retrieves SciFact as our exact search does."""
    pytest.importorskip("llama_index.embeddings.fastembed")
    import slimembed

    monkeypatch.setitem(sys.modules, "fastembed", slimembed)
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.fastembed import FastEmbedEmbedding

    embed_model = FastEmbedEmbedding(model_name=str(DEFAULT_MODEL_DIR), threads=2)
    model = TextEmbedding()
    want = model.encode(TEXTS, prompt="document")
    np.testing.assert_array_equal(np.array(embed_model.get_text_embedding_batch(TEXTS)), want)
    query = model.encode([QUERY], prompt="query")[0]
    np.testing.assert_array_equal(np.array(embed_model.get_query_embedding(QUERY)), query)
    nodes = [TextNode(text=t, id_=i) for i, t in zip(corpus.doc_ids, corpus.docs, strict=True)]
    retriever = VectorStoreIndex(nodes, embed_model=embed_model).as_retriever(similarity_top_k=10)
    rankings = [[hit.node.node_id for hit in retriever.retrieve(q)] for q in corpus.queries]
    ndcg = ranked_ndcg_at_10(rankings, corpus.query_ids, corpus.qrels)
    assert ndcg == pytest.approx(exact_ndcg, abs=1e-6)


# ---- the vector stores ------------------------------------------------------------------------


def _cosines(model: TextEmbedding) -> np.ndarray:
    """Exact search: the cosine of QUERY with each of NOTES (0 for the empty text's zero
    vector)."""
    query = model.encode([QUERY], prompt="query")[0]
    return model.encode(NOTES, prompt="document") @ query


@pytest.fixture
def sqlite_db() -> Iterator[Any]:
    pytest.importorskip("sqlite_vec")
    from slimembed.integrations import sqlite

    try:
        db = sqlite.connect()
    except ImportError as error:
        pytest.skip(str(error))
    yield db
    db.close()


@pytest.fixture(scope="module")
def scifact_exact() -> tuple[vector_stores.Corpus, float]:
    corpus = vector_stores.scifact_corpus()
    return corpus, vector_stores.exact(TextEmbedding(), corpus).ndcg10


def test_exact_search_scores_all_of_scifact(scifact_exact: tuple[Any, float]) -> None:
    corpus, exact = scifact_exact
    assert (len(corpus.docs), len(corpus.queries)) == (5183, 300)
    assert 0.35 < exact < 0.45  # the static default: 0.3941 (all-MiniLM-L6-v2: 0.6451)


def test_qdrant_matches_exact_search_on_all_of_scifact(scifact_exact: tuple[Any, float]) -> None:
    pytest.importorskip("qdrant_client")
    corpus, exact = scifact_exact
    result = vector_stores.qdrant_local(TextEmbedding(), corpus)
    assert result.ndcg10 == pytest.approx(exact, abs=1e-6)


def test_sqlite_vec_matches_exact_search_on_all_of_scifact(
    scifact_exact: tuple[Any, float], sqlite_db: Any
) -> None:
    corpus, exact = scifact_exact
    result = vector_stores.sqlite_vec(TextEmbedding(), corpus)
    assert result.ndcg10 == pytest.approx(exact, abs=1e-6)


def test_qdrant_search_returns_nearest_documents() -> None:
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from slimembed.integrations import qdrant

    client, model = QdrantClient(":memory:"), TextEmbedding()
    payloads = [{"text": t} for t in NOTES]
    qdrant.index(client, "notes", model, NOTES, ids=[10, 11, 12, 13], payloads=payloads)
    (hits,) = qdrant.search(client, "notes", model, [QUERY], limit=3, with_payload=True)
    cosines = _cosines(model)
    assert [p.id for p in hits] == [10 + i for i in np.argsort(-cosines)[:3]]
    assert hits[0].id == 10
    assert hits[0].payload == {"text": NOTES[0]}
    np.testing.assert_allclose([p.score for p in hits], np.sort(cosines)[::-1][:3], atol=1e-6)
    assert qdrant.search(client, "notes", model, []) == []


def test_qdrant_named_vector_collection() -> None:
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from slimembed.integrations import qdrant

    client, model = QdrantClient(":memory:"), TextEmbedding()
    qdrant.index(client, "named", model, NOTES, ids=range(4), vector_name="slimembed")
    vectors = client.get_collection("named").config.params.vectors
    assert isinstance(vectors, dict)
    assert vectors["slimembed"].size == 256
    (hits,) = qdrant.search(client, "named", model, [QUERY], limit=1, vector_name="slimembed")
    assert hits[0].id == 0
    with pytest.raises(ValueError, match=r"named vectors \['slimembed'\]: pass one"):
        qdrant.search(client, "named", model, [QUERY])


def test_qdrant_refuses_a_collection_of_another_dim() -> None:
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient, models

    from slimembed.integrations import qdrant

    client, model = QdrantClient(":memory:"), TextEmbedding()
    # What fastembed's default (BAAI/bge-small-en-v1.5) filled: 384-d, plain and named.
    params = models.VectorParams(size=384, distance=models.Distance.COSINE)
    client.create_collection("old", vectors_config=params)
    client.create_collection("named", vectors_config={"fast-bge-small-en": params})
    with pytest.raises(DimensionMismatchError, match=r"384-d .* 256-d") as caught:
        qdrant.index(client, "old", model, TEXTS, ids=range(4))
    assert (caught.value.found, caught.value.dim) == (384, 256)
    assert "'old'" in str(caught.value)
    assert str(pickle.loads(pickle.dumps(caught.value))) == str(caught.value)
    assert client.count("old").count == 0
    with pytest.raises(DimensionMismatchError, match="384-d"):
        qdrant.search(client, "old", model, [QUERY])
    with pytest.raises(DimensionMismatchError, match="'fast-bge-small-en'"):
        qdrant.index(client, "named", model, TEXTS, ids=range(4), vector_name="fast-bge-small-en")
    with pytest.raises(ValueError, match="pass one as vector_name"):
        qdrant.index(client, "named", model, TEXTS, ids=range(4))


def test_sqlite_vec_search_returns_nearest_documents(sqlite_db: Any, tmp_path: Path) -> None:
    from slimembed.integrations import sqlite

    model = TextEmbedding()
    # The empty text's zero vector is left out: sqlite-vec would rank its NULL distance first.
    with pytest.warns(sqlite.ZeroVectorWarning, match=r"1 texts .* \['d'\]"):
        left_out = sqlite.index(sqlite_db, "notes", model, NOTES, ids=["a", "b", "c", "d"])
    assert left_out == ["d"]
    (hits,) = sqlite.search(sqlite_db, "notes", model, [QUERY], k=3)
    cosines = _cosines(model)[:3]
    assert [i for i, _ in hits] == [["a", "b", "c"][i] for i in np.argsort(-cosines)]
    assert hits[0][0] == "a"
    np.testing.assert_allclose([d for _, d in hits], 1 - np.sort(cosines)[::-1], atol=1e-6)
    # A query with no known token has no nearest rows: NaN distances, not a crash.
    (blank,) = sqlite.search(sqlite_db, "notes", model, [""], k=3)
    assert len(blank) == 3
    assert all(np.isnan(d) for _, d in blank)
    # A file database keeps its rows: a second index call appends, a new connection finds them.
    path = tmp_path / "notes.db"
    db = sqlite.connect(path)
    assert sqlite.index(db, "notes", model, NOTES[:1], ids=["a"]) == []
    assert sqlite.index(db, "notes", model, NOTES[1:3], ids=["b", "c"]) == []
    db.close()
    reopened = sqlite.connect(path)
    assert sqlite.search(reopened, "notes", model, [QUERY], k=3) == [hits]
    reopened.close()


def test_sqlite_vec_refuses_a_table_of_another_dim(sqlite_db: Any) -> None:
    from slimembed.integrations import sqlite

    model = TextEmbedding()
    sqlite_db.execute(
        'CREATE VIRTUAL TABLE "old" USING vec0(id TEXT PRIMARY KEY, embedding float[384])'
    )
    with pytest.raises(DimensionMismatchError, match=r"384-d .* 256-d") as caught:
        sqlite.index(sqlite_db, "old", model, TEXTS, ids=["a", "b", "c", "d"])
    assert (caught.value.found, caught.value.dim) == (384, 256)
    assert sqlite_db.execute('SELECT count(*) FROM "old"').fetchone() == (0,)
    with pytest.raises(DimensionMismatchError, match="sqlite-vec table 'old'"):
        sqlite.search(sqlite_db, "old", model, [QUERY])
    with pytest.raises(ValueError, match="does not exist"):
        sqlite.search(sqlite_db, "missing", model, [QUERY])
