"""SciFact retrieval through real local vector stores, against slimembed's exact search.

``python -m benchmarks.vector_stores [--model NAME] [--max-docs N]`` indexes the SciFact
corpus (shared/data) with ``slimembed.integrations.qdrant`` into Qdrant's local mode
(``QdrantClient(":memory:")``) and with ``slimembed.integrations.sqlite`` into a sqlite-vec
table, searches the 300 test queries in each, and prints nDCG@10 beside the in-memory exact
search (cosine: numpy dot products of unit vectors, top 10) on the same model's vectors. Both
stores search exactly (Qdrant's local mode scans; sqlite-vec's ``vec0`` is brute force), so
the three figures agree unless two documents tie to within float rounding.

It lives here, not in the runtime, because it reads the evaluation data and scores with
``benchmarks.quality``; the integrations it drives are the runtime's. Each store's time
includes embedding the corpus and the queries through the integration, as a user's would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import click

from benchmarks.datasets import scifact
from benchmarks.quality import _unit, ndcg_at_10, ranked_ndcg_at_10, scifact_slice
from slimembed import TextEmbedding

STORES = ("exact", "qdrant", "sqlite-vec")


@dataclass(frozen=True)
class Corpus:
    """SciFact test, or the slice of it ``scifact_slice`` picks."""

    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]


@dataclass(frozen=True)
class StoreResult:
    ndcg10: float
    index_s: float
    search_s: float


def scifact_corpus(max_docs: int | None = None) -> Corpus:
    """The whole SciFact test set, or at most ``max_docs`` documents and the queries judged
    within them."""
    data = scifact("test")
    doc_idx, query_idx = list(range(len(data.docs))), list(range(len(data.queries)))
    if max_docs is not None and max_docs < len(data.docs):
        doc_idx, query_idx = scifact_slice(max_docs)
    return Corpus(
        [data.doc_ids[i] for i in doc_idx],
        [data.docs[i] for i in doc_idx],
        [data.query_ids[i] for i in query_idx],
        [data.queries[i] for i in query_idx],
        data.qrels,
    )


def exact(model: TextEmbedding, corpus: Corpus) -> StoreResult:
    """slimembed's in-memory exact search: cosine of every query with every document."""
    start = time.perf_counter()
    docs = _unit(model.encode(corpus.docs, prompt="document"))
    indexed = time.perf_counter()
    queries = _unit(model.encode(corpus.queries, prompt="query"))
    ndcg = ndcg_at_10(queries @ docs.T, corpus.doc_ids, corpus.query_ids, corpus.qrels)
    return StoreResult(ndcg, indexed - start, time.perf_counter() - indexed)


def qdrant_local(model: TextEmbedding, corpus: Corpus) -> StoreResult:
    """Qdrant's local mode in memory; point ids are corpus positions."""
    from qdrant_client import QdrantClient

    from slimembed.integrations import qdrant

    client = QdrantClient(":memory:")
    try:
        start = time.perf_counter()
        qdrant.index(client, "scifact", model, corpus.docs, ids=range(len(corpus.docs)))
        indexed = time.perf_counter()
        hits = qdrant.search(client, "scifact", model, corpus.queries, limit=10)
        rankings = [[corpus.doc_ids[int(p.id)] for p in row] for row in hits]
        return _scored(rankings, corpus, start, indexed)
    finally:
        client.close()


def sqlite_vec(model: TextEmbedding, corpus: Corpus) -> StoreResult:
    """A sqlite-vec ``vec0`` table in an in-memory SQLite database."""
    from slimembed.integrations import sqlite

    db = sqlite.connect(":memory:")
    try:
        start = time.perf_counter()
        sqlite.index(db, "scifact", model, corpus.docs, ids=corpus.doc_ids)
        indexed = time.perf_counter()
        hits = sqlite.search(db, "scifact", model, corpus.queries, k=10)
        return _scored([[i for i, _ in row] for row in hits], corpus, start, indexed)
    finally:
        db.close()


RUNNERS: dict[str, Callable[[TextEmbedding, Corpus], StoreResult]] = {
    "exact": exact,
    "qdrant": qdrant_local,
    "sqlite-vec": sqlite_vec,
}


def compare(
    model: TextEmbedding, corpus: Corpus, stores: Sequence[str] = STORES
) -> dict[str, StoreResult]:
    """Each store's nDCG@10 and times on ``corpus`` with ``model``."""
    return {name: RUNNERS[name](model, corpus) for name in stores}


def _scored(rankings: list[list[str]], corpus: Corpus, start: float, indexed: float) -> StoreResult:
    ndcg = ranked_ndcg_at_10(rankings, corpus.query_ids, corpus.qrels)
    return StoreResult(ndcg, indexed - start, time.perf_counter() - indexed)


@click.command()
@click.option("--model", "model_name", default=None, help="Default: the embedded static model.")
@click.option("--max-docs", type=int, default=None, help="A slice of SciFact (default: all).")
@click.option("--store", "stores", multiple=True, type=click.Choice(STORES), default=STORES)
def main(model_name: str | None, max_docs: int | None, stores: tuple[str, ...]) -> None:
    model = TextEmbedding(model_name)
    corpus = scifact_corpus(max_docs)
    click.echo(
        f"SciFact test: {len(corpus.docs)} documents, {len(corpus.queries)} queries, {model!r}"
    )
    click.echo(f"{'store':<12}{'nDCG@10':>10}{'index s':>10}{'search s':>10}")
    for name, result in compare(model, corpus, stores).items():
        click.echo(
            f"{name:<12}{result.ndcg10:>10.6f}{result.index_s:>10.2f}{result.search_s:>10.2f}"
        )


if __name__ == "__main__":
    main()
