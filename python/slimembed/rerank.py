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

from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from itertools import islice

import numpy as np
import numpy.typing as npt

from slimembed import _core
from slimembed.backends import TransformerBackend
from slimembed.batching import plan_batches
from slimembed.errors import TooLongError
from slimembed.facade import CHUNK_SIZE, Facade, check_texts
from slimembed.runner import GraphRunner
from slimembed.text_embedding import TextEmbedding

DEFAULT_BATCH_SIZE = 64


class TextCrossEncoder(Facade):
    """Score (query, document) pairs with a model exported by ``slimembed export --task rerank``.

    The arguments are ``Facade.__init__``'s, as ``TextEmbedding``'s; a model must be named.
    Scores are log-probabilities: higher is more relevant, 0 is the maximum.
    """

    task = "rerank"

    @property
    def runner(self) -> GraphRunner:
        """The graph runner under the reranker."""
        assert isinstance(self.backend, TransformerBackend)  # a rerank manifest says so
        return self.backend.runner

    @property
    def tokenizer(self) -> _core.Tokenizer:
        return self.backend.tokenizer

    @cached_property
    def _head_len(self) -> int:
        """Tokens of the prompt's head (before ``{document}``), never cut."""
        assert self.manifest.rerank_template is not None  # the manifest checks it
        head, _, _ = self.manifest.rerank_template.partition("{document}")
        return len(self.tokenizer.encode([head], add_special_tokens=False).row(0))

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
        """Yield one score per (query, document) pair, in input order.

        A document is cut from its left end to fit the max length; a query never is: one too
        long for the model with its prompt raises TooLongError (a ValueError) naming the pair.
        """
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
            check_texts(queries, offset)
            check_texts(documents, offset)
            yield from self._score_chunk(queries, documents, batch_size, mean, offset).tolist()
            offset += len(chunk)

    def _score_chunk(
        self, queries: list[str], documents: list[str], batch_size: int, mean: bool, offset: int
    ) -> npt.NDArray[np.float64]:
        rows, targets = self._rows(queries, documents, offset)
        lengths, counts = rows.lengths(), targets.lengths()
        scores = np.zeros(len(queries), dtype=np.float64)
        for batch in plan_batches(lengths, batch_size, self.max_tokens):
            padded = self.runner.pad(rows, batch)
            wanted, scored, _, _ = targets.pad(batch)
            # The query's k tokens are predicted by the row's last k positions.
            ends = padded.ids.shape[1] if self.manifest.padding_side == "left" else lengths[batch]
            positions = (ends - counts[batch])[:, None] + np.arange(wanted.shape[1])
            logprobs = self.runner.run(
                padded, {"target_positions": positions * scored, "target_ids": wanted}
            )
            sums = np.where(scored == 1, logprobs.astype(np.float64), 0.0).sum(axis=1)
            scores[batch] = sums / counts[batch] if mean else sums
        return scores

    def _rows(
        self, queries: list[str], documents: list[str], offset: int
    ) -> tuple[_core.Encoded, _core.Encoded]:
        """Each pair's model input (prompt, document, query, last token dropped) and the query's
        token ids, the targets scored at the input's last positions."""
        template = self.manifest.rerank_template
        assert template is not None
        contexts = [template.replace("{document}", d) for d in documents]
        ctx = self.tokenizer.encode(contexts, add_special_tokens=False)
        qry = self.tokenizer.encode(queries, add_special_tokens=False)
        head = self._head_len
        room = None if self.manifest.max_length is None else self.manifest.max_length + 1 - head
        try:
            return ctx.rerank_rows(qry, keep=head, room=room, first=offset), qry
        except _core.QueryTooLong as err:
            raise TooLongError(str(err.args[0]), int(err.args[1])) from None

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
