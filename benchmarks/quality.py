"""Embedding quality on shared/data: STS-B Spearman and SciFact retrieval nDCG@10.

Any engine plugs in as a function from a list of texts to a (n, dim) array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from benchmarks.datasets import scifact, sts

Encode = Callable[[list[str]], np.ndarray]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    counts = np.bincount(inverse)
    return (sums / counts)[inverse]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(np.asarray(a, dtype=np.float64)), _ranks(np.asarray(b, dtype=np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def sts_spearman(encode: Encode, name: str = "en-test", max_pairs: int | None = None) -> float:
    """Spearman correlation of pair cosines with the human scores (of the first ``max_pairs``
    pairs when given)."""
    pairs = sts(name)
    n = len(pairs.scores) if max_pairs is None else max_pairs
    a, b = _unit(encode(pairs.sentences1[:n])), _unit(encode(pairs.sentences2[:n]))
    return spearman((a * b).sum(1), np.array(pairs.scores[:n]))


def ndcg_at_10(
    scores: np.ndarray, doc_ids: list[str], query_ids: list[str], qrels: dict[str, dict[str, int]]
) -> float:
    """Mean nDCG@10 over queries; ``scores`` is (queries, docs)."""
    top = np.argsort(-scores, axis=1)[:, :10]
    return ranked_ndcg_at_10([[doc_ids[d] for d in row] for row in top], query_ids, qrels)


def ranked_ndcg_at_10(
    rankings: Sequence[Sequence[str]], query_ids: list[str], qrels: dict[str, dict[str, int]]
) -> float:
    """Mean nDCG@10 over queries from each query's ranked document ids, best first (what a
    vector store returns)."""
    total = 0.0
    for ranking, qid in zip(rankings, query_ids, strict=True):
        rels = qrels.get(qid, {})
        gains = [rels.get(d, 0) for d in ranking[:10]]
        dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
        ideal = sorted(rels.values(), reverse=True)[:10]
        idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / len(query_ids)


def scifact_slice(max_docs: int) -> tuple[list[int], list[int]]:
    """Indices of at most ``max_docs`` SciFact documents (the judged ones of the test queries
    first, in query order, then the rest of the corpus in order) and of the test queries all of
    whose judged documents are among them."""
    data = scifact("test")
    index = {d: i for i, d in enumerate(data.doc_ids)}
    chosen: dict[int, None] = {}
    for qid in data.query_ids:
        judged = [index[d] for d in data.qrels[qid] if d in index]
        if len(chosen) + len(judged) > max_docs // 2:
            break
        chosen.update(dict.fromkeys(judged))
    for i in range(len(data.docs)):
        if len(chosen) >= max_docs:
            break
        chosen.setdefault(i)
    docs = sorted(chosen)
    kept = set(docs)
    queries = [
        qi
        for qi, qid in enumerate(data.query_ids)
        if all(index.get(d) in kept for d in data.qrels[qid])
    ]
    return docs, queries


def scifact_ndcg(
    encode_queries: Encode, encode_docs: Encode | None = None, max_docs: int | None = None
) -> float:
    """nDCG@10 on SciFact test with exact search over the whole corpus, or over the slice of
    ``max_docs`` documents from :func:`scifact_slice` and the queries judged within it."""
    data = scifact("test")
    doc_idx = list(range(len(data.docs)))
    query_idx = list(range(len(data.queries)))
    if max_docs is not None and max_docs < len(data.docs):
        doc_idx, query_idx = scifact_slice(max_docs)
    docs = _unit((encode_docs or encode_queries)([data.docs[i] for i in doc_idx]))
    queries = _unit(encode_queries([data.queries[i] for i in query_idx]))
    return ndcg_at_10(
        queries @ docs.T,
        [data.doc_ids[i] for i in doc_idx],
        [data.query_ids[i] for i in query_idx],
        data.qrels,
    )
