"""Reranking with a causal LM's log-probabilities (SGPT's cross-encoder), shaped after fastembed's
``TextCrossEncoder``.

A pair's score is the sum of the log-probabilities of the query's tokens after a prompt that
holds the document (github.com/Muennighoff/sgpt, crossencoder/beir/sgptce.py): the prompt and the
query are tokenized apart, without special tokens; when the pair is longer than the model's max
length the document is cut from its left end, the prompt's head before ``{document}`` and the
query are never cut. The graph gathers the hidden states at the query's positions only, so the
(batch, seq, vocab) logits are never built.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed import _core, env, hub
from slimembed.batching import plan_batches
from slimembed.errors import ModelFileError
from slimembed.manifest import Manifest
from slimembed.session import create_session
from slimembed.text_embedding import (
    CHUNK_SIZE,
    DEFAULT_MAX_TOKENS,
    TextEmbedding,
    _check_texts,
    _native,
    check_limits,
)

DEFAULT_BATCH_SIZE = 64


class TextCrossEncoder:
    """Score (query, document) pairs with a model exported by ``slimembed export --task rerank``.

    Arguments as ``TextEmbedding``'s. Scores are log-probabilities: higher is more relevant, 0
    is the maximum.
    """

    def __init__(
        self,
        model_name: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        cuda: bool = False,
        device_id: int = 0,
        lazy_load: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        max_tokens: int = DEFAULT_MAX_TOKENS,
    ) -> None:
        check_limits(max_tokens, threads)
        self.model_name = str(model_name)
        self.model_dir: Path = hub.resolve_model(
            model_name, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only
        )
        self.manifest = Manifest.load(self.model_dir)
        if self.manifest.task != "rerank":
            raise ModelFileError(
                f"{self.model_dir} is an embedding model (task {self.manifest.task!r}): load it "
                "with TextEmbedding; export a causal LM with `--task rerank` for TextCrossEncoder"
            )
        assert self.manifest.rerank_template is not None  # the manifest checks it
        self.max_tokens = max_tokens
        self._tokenizer = _native(_core.Tokenizer, self.model_dir / self.manifest.tokenizer_file)
        head, _, _ = self.manifest.rerank_template.partition("{document}")
        self._head_len = len(self._tokenizer.encode([head], add_special_tokens=False).row(0))
        self._session_args: dict[str, Any] = {
            "providers": providers,
            "cuda": cuda,
            "device_id": device_id,
            "threads": env.default_threads() if threads is None else threads,
        }
        self._session: Any = None
        self._lock = threading.Lock()
        if not lazy_load:
            self._load()

    def rerank(
        self,
        query: str,
        documents: Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        mean: bool = False,
    ) -> Iterator[float]:
        """Yield one score per document, in document order. ``mean`` divides each sum by the
        number of query tokens."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if isinstance(documents, str):
            documents = [documents]
        return self.rerank_pairs(((query, d) for d in documents), batch_size, mean=mean)

    def rerank_pairs(
        self,
        pairs: Iterable[tuple[str, str]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        mean: bool = False,
    ) -> Iterator[float]:
        """Yield one score per (query, document) pair, in input order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return self._scores(iter(pairs), batch_size, mean)

    def _scores(
        self, pairs: Iterator[tuple[str, str]], batch_size: int, mean: bool
    ) -> Iterator[float]:
        offset = 0
        while chunk := list(islice(pairs, CHUNK_SIZE)):
            for i, pair in enumerate(chunk):
                if not (isinstance(pair, tuple | list) and len(pair) == 2):
                    raise TypeError(f"pairs[{offset + i}] is not a (query, document) pair")
            queries = [q for q, _ in chunk]
            documents = [d for _, d in chunk]
            _check_texts(queries, offset)
            _check_texts(documents, offset)
            yield from self._score_chunk(queries, documents, batch_size, mean, offset).tolist()
            offset += len(chunk)

    def _score_chunk(
        self, queries: list[str], documents: list[str], batch_size: int, mean: bool, offset: int
    ) -> npt.NDArray[np.float64]:
        rows, targets = self._rows(queries, documents, offset)
        scores = np.zeros(len(rows), dtype=np.float64)
        lengths = np.array([len(r) for r in rows])
        for batch in plan_batches(lengths, batch_size, self.max_tokens):
            logprobs = self._run([rows[i] for i in batch], [targets[i] for i in batch])
            for b, i in enumerate(batch):
                k = len(targets[i])
                total = float(logprobs[b, :k].astype(np.float64).sum())
                scores[i] = total / k if mean else total
        return scores

    def _rows(
        self, queries: list[str], documents: list[str], offset: int
    ) -> tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int64]]]:
        """Each pair's model input (prompt, document, query, last token dropped) and the query's
        token ids, the targets scored at the input's last positions."""
        template = self.manifest.rerank_template
        assert template is not None
        contexts = [template.replace("{document}", d) for d in documents]
        ctx = self._tokenizer.encode(contexts, add_special_tokens=False)
        qry = self._tokenizer.encode(queries, add_special_tokens=False)
        head = self._head_len
        room = None if self.manifest.max_length is None else self.manifest.max_length + 1 - head
        rows, targets = [], []
        for i in range(len(queries)):
            c, q = ctx.row(i), qry.row(i)
            if len(q) == 0:
                raise ValueError(f"query of pair {offset + i} has no tokens to score")
            if room is not None and len(q) >= room:
                raise ValueError(
                    f"query of pair {offset + i} has {len(q)} tokens; with the prompt it must "
                    f"stay under the max length {self.manifest.max_length} (queries are never cut)"
                )
            tail = np.concatenate([c[head:], q])
            full = np.concatenate([c[:head], tail if room is None else tail[-room:]])
            rows.append(full[:-1])
            targets.append(q)
        return rows, targets

    def _run(
        self, rows: list[npt.NDArray[np.int64]], targets: list[npt.NDArray[np.int64]]
    ) -> npt.NDArray[np.float32]:
        m = self.manifest
        seq, width = max(len(r) for r in rows), max(len(t) for t in targets)
        ids = np.full((len(rows), seq), m.pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        positions = np.zeros((len(rows), width), dtype=np.int64)
        wanted = np.zeros_like(positions)
        for b, (row, target) in enumerate(zip(rows, targets, strict=True)):
            start = seq - len(row) if m.padding_side == "left" else 0
            ids[b, start : start + len(row)] = row
            mask[b, start : start + len(row)] = 1
            # The query's k tokens are predicted by the row's last k positions.
            k = len(target)
            positions[b, :k] = np.arange(start + len(row) - k, start + len(row))
            wanted[b, :k] = target
        session = self._session or self._load()
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            "target_positions": positions,
            "target_ids": wanted,
        }
        out: npt.NDArray[np.float32] = session.run([m.graph_output], feeds)[0]
        return out

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = create_session(self.model_dir, self.manifest, **self._session_args)
            return self._session

    def __repr__(self) -> str:
        return f"TextCrossEncoder({self.model_name!r})"


def retrieve_then_rerank(
    query: str,
    documents: Sequence[str],
    embedder: TextEmbedding,
    reranker: TextCrossEncoder,
    top_k: int = 10,
    *,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[tuple[int, float]]:
    """The bi-encoder's ``top_k`` documents for ``query`` by cosine, reordered by the
    cross-encoder: ``(document index, rerank score)``, best first."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    docs = list(documents)
    if not docs:
        return []
    doc_vecs = embedder.encode(docs, prompt="document").astype(np.float64)
    query_vec = embedder.encode([query], prompt="query", instruction=instruction)[0]
    norms = np.linalg.norm(doc_vecs, axis=1) * max(float(np.linalg.norm(query_vec)), 1e-12)
    similarity = doc_vecs @ query_vec.astype(np.float64) / np.maximum(norms, 1e-12)
    # Stable: equal similarities keep document order.
    top = np.argsort(-similarity, kind="stable")[:top_k]
    scores = list(reranker.rerank(query, [docs[i] for i in top], batch_size))
    ranked = sorted(zip(top.tolist(), scores, strict=True), key=lambda p: -p[1])
    return [(int(i), float(s)) for i, s in ranked]
