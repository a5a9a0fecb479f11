"""Reranking with a causal LM's log-probabilities (SGPT's cross-encoder), shaped after fastembed's
``TextCrossEncoder``.

A pair's score is the sum of the log-probabilities of the query's tokens after a prompt that
holds the document (github.com/Muennighoff/sgpt, crossencoder/beir/sgptce.py): the prompt and the
query are tokenized apart, without special tokens; when the pair is longer than the model's max
length the document is cut from its left end, the prompt's head before ``{document}`` and the
query are never cut. The graph gathers the hidden states at the query's positions only, so the
(batch, seq, vocab) logits are never built.

fastembed's surface: the constructor is ``Facade``'s (fastembed's keywords included),
``rerank``, ``rerank_pairs`` (``parallel=N``: the data-parallel workers of
``slimembed.parallel``), ``token_count``, ``list_supported_models`` and ``add_custom_model``.
fastembed's own rerankers (ms-marco MiniLM, bge-reranker, jina: BERT-style sequence
classifiers) are not among the models this class runs, so no built-in list is shipped: the
models listed are those registered with ``add_custom_model``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed import _core
from slimembed import parallel as data_parallel
from slimembed.backends import TransformerBackend
from slimembed.batching import plan_batches
from slimembed.errors import TooLongError
from slimembed.facade import CHUNK_SIZE, Facade, check_texts
from slimembed.runner import GraphRunner
from slimembed.text_embedding import TextEmbedding, _hf_source

DEFAULT_BATCH_SIZE = 64

Pair = tuple[str, str]
# A batch for a data-parallel worker: (offset, queries, documents, batch_size, mean).
Task = tuple[int, list[str], list[str], int, bool]

# Rerankers registered by add_custom_model, as fastembed describes a model, by name.
_CUSTOM: dict[str, dict[str, Any]] = {}


class TextCrossEncoder(Facade):
    """Score (query, document) pairs with a model exported by ``slimembed export --task rerank``.

    The arguments are ``Facade.__init__``'s, as ``TextEmbedding``'s (fastembed's keywords:
    ``model_name``, ``cache_dir``, ``threads``, ``providers``, ``cuda``, ``device_ids``,
    ``lazy_load``, ``device_id``, ``specific_model_path``, ``local_files_only``); a model must be
    named: a directory exported with ``--task rerank``, a hub repository holding one, or a name
    given to ``add_custom_model``. Unlike fastembed, ``cuda`` defaults to ``False`` (CPU), as
    for ``TextEmbedding``; ``cuda="auto"`` is fastembed's default.

    Scores are log-probabilities: higher is more relevant, 0 is the maximum.
    """

    task = "rerank"

    @classmethod
    def source_of(cls, model_name: str | os.PathLike[str]) -> str | os.PathLike[str]:
        """The hub id or folder a name given to ``add_custom_model`` stands for."""
        custom = _CUSTOM.get(os.fspath(model_name))
        return model_name if custom is None else custom["sources"]["hf"]

    @classmethod
    def list_supported_models(cls) -> list[dict[str, Any]]:
        """The rerankers registered with ``add_custom_model``, one dict each with fastembed's
        fields (``model``, ``sources``, ``model_file``, ``description``, ``license``,
        ``size_in_GB``, ``additional_files``).

        Any causal LM exported with ``slimembed export SOURCE DIR --task rerank`` runs, so
        there is no fixed list; fastembed's built-in rerankers (BERT-style sequence
        classifiers) are not models this class runs."""
        return [dict(entry, sources=dict(entry["sources"])) for entry in _CUSTOM.values()]

    @classmethod
    def add_custom_model(
        cls,
        model: str,
        sources: Any,
        model_file: str | None = None,
        description: str = "",
        license: str = "",
        size_in_gb: float = 0.0,
        additional_files: Sequence[str] | None = None,
    ) -> None:
        """Register ``model`` as a name for a reranker, as fastembed's ``add_custom_model``:
        ``TextCrossEncoder(model)`` then loads it. ``sources`` is fastembed's ``ModelSource``
        (or a dict) whose ``hf`` names a hub repository holding a ``--task rerank`` export, or
        that repository's id or a local folder as a string.

        ``model_file`` and ``additional_files`` are refused (ValueError): a slimembed
        reranker's manifest names its graph and its files (``precision=`` chooses among its
        graphs). ValueError too for a name already registered (names differing in case only
        included, as fastembed) and for a source with no Hugging Face id.
        """
        if model_file is not None:
            raise ValueError(
                f"model_file={model_file!r}: a slimembed reranker directory's manifest names "
                "its graph; pass precision= to TextCrossEncoder to choose among its graphs"
            )
        if additional_files:
            raise ValueError(
                "additional_files: a slimembed reranker directory's manifest names every "
                "file it needs, and those are the files downloaded"
            )
        if isinstance(sources, str | os.PathLike):
            hub_id = _hf_source(sources, None)
        else:
            hub_id = _hf_source(None, sources)
        taken = [name for name in _CUSTOM if name.lower() == model.lower()]
        if taken:
            raise ValueError(
                f"model {model!r} is already registered as {taken[0]!r}: choose another name"
            )
        _CUSTOM[model] = {
            "model": model,
            "sources": {"hf": hub_id, "url": None},
            "model_file": "model.onnx",
            "description": description,
            "license": license,
            "size_in_GB": float(size_in_gb),
            "additional_files": [],
        }

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
        parallel: int | None = None,
        *,
        mean: bool = False,
    ) -> Iterator[float]:
        """Yield one score per document, in document order (fastembed's ``rerank``).

        ``parallel`` and ``mean`` as in ``rerank_pairs``; a bare string is one document."""
        if not isinstance(query, str):
            raise TypeError(f"query must be a string, got {type(query).__name__}")
        if isinstance(documents, str):
            documents = [documents]
        return self.rerank_pairs(((query, d) for d in documents), batch_size, parallel, mean=mean)

    def rerank_pairs(
        self,
        pairs: Iterable[Pair],
        batch_size: int = DEFAULT_BATCH_SIZE,
        parallel: int | None = None,
        *,
        mean: bool = False,
    ) -> Iterator[float]:
        """Yield one score per (query, document) pair, in input order; a bare pair (a tuple
        of two strings) is one pair, as in fastembed.

        A document is cut from its left end to fit the max length; a query never is: one too
        long for the model with its prompt raises TooLongError (a ValueError) naming the pair.
        ``mean`` divides each sum by the number of query tokens. ``parallel`` (fastembed's
        data-parallel mode): ``None`` or 1 scores in this process; N > 1 in N worker
        processes (``spawn``, one model with one thread each, ``slimembed.parallel``), 0 one
        per core; scores still come in input order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if _is_pair(pairs):
            pairs = [pairs]  # type: ignore[list-item]
        if parallel is not None and data_parallel.workers(parallel) > 1:
            tasks = _tasks(iter(pairs), batch_size, batch_size, mean)
            scored = data_parallel.imap(self, tasks, _score_task, parallel)
            return (score for scores in scored for score in scores.tolist())
        return self._scores(iter(pairs), batch_size, mean)

    def token_count(self, pairs: Iterable[Pair], batch_size: int = 1024) -> int:
        """How many tokens the model scores ``pairs`` with (fastembed's ``token_count``):
        for each pair, the prompt holding the document (cut to the max length as in
        ``rerank_pairs``) and the query."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if _is_pair(pairs):
            pairs = [pairs]  # type: ignore[list-item]
        total = 0
        for offset, queries, documents, _, _ in _tasks(iter(pairs), batch_size, batch_size, False):
            rows, _ = self._rows(queries, documents, offset)
            # The rows leave out each query's last token: a target, never an input.
            total += int(rows.lengths().sum()) + len(queries)
        return total

    def _scores(self, pairs: Iterator[Pair], batch_size: int, mean: bool) -> Iterator[float]:
        for offset, queries, documents, _, _ in _tasks(pairs, CHUNK_SIZE, batch_size, mean):
            yield from self._score_chunk(queries, documents, batch_size, mean, offset).tolist()

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


def _is_pair(pairs: object) -> bool:
    return isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(t, str) for t in pairs)


def _tasks(pairs: Iterator[Pair], size: int, batch_size: int, mean: bool) -> Iterator[Task]:
    """``pairs`` in chunks of ``size``, checked, as (offset, queries, documents, batch_size,
    mean); TypeError naming the position of anything that is not a pair of strings."""
    offset = 0
    while chunk := list(islice(pairs, size)):
        for i, pair in enumerate(chunk):
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise TypeError(f"pairs[{offset + i}] is not a (query, document) pair")
        queries = [q for q, _ in chunk]
        documents = [d for _, d in chunk]
        check_texts(queries, offset)
        check_texts(documents, offset)
        yield offset, queries, documents, batch_size, mean
        offset += len(chunk)


def _score_task(model: TextCrossEncoder, task: Task) -> npt.NDArray[np.float64]:
    """A data-parallel worker's share: one chunk of pairs scored."""
    offset, queries, documents, batch_size, mean = task
    return model._score_chunk(queries, documents, batch_size, mean, offset)


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
