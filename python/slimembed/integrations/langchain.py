"""LangChain's ``Embeddings`` on a slimembed model (``pip install "slimembed[langchain]"``).

>>> from slimembed.integrations.langchain import SlimembedEmbeddings
>>> embeddings = SlimembedEmbeddings()  # the embedded 256-d static default
>>> vector = embeddings.embed_query("what is x?")

Shaped as langchain-community's ``FastEmbedEmbeddings``: the model's name first, then
``batch_size`` and ``parallel``; every other keyword goes to ``TextEmbedding``. Documents get
the model's document prompt and queries its query prompt (fastembed's ``embed`` and
``query_embed``), so a decoder embedder's instruction reaches queries only. The async methods
run the sync ones in the loop's default executor: embedding releases the GIL in Rust and
ONNX Runtime, so the event loop keeps running while a batch is embedded.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.embeddings import Embeddings

from slimembed.text_embedding import DEFAULT_BATCH_SIZE, TextEmbedding


class SlimembedEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that embeds with a slimembed ``TextEmbedding``.

    Args:
        model_name: what ``TextEmbedding`` loads: a model directory, a registry name or a hub
            id; ``None``: the embedded 256-d static default (fastembed's default is the 384-d
            BAAI/bge-small-en-v1.5, so vectors stored by it do not mix with these).
        batch_size: texts per batch.
        parallel: fastembed's data-parallel mode for ``embed_documents`` (``None``: this
            process; N > 1: N worker processes; 0: one per core).
        instruction: replaces the query prompt's default task instruction (decoder
            embedders such as Qwen3-Embedding); ``None`` keeps the model's.
        **model_kwargs: ``TextEmbedding``'s other arguments (``threads``, ``cuda``,
            ``max_length``, ``cache_dir``, ``precision``, ...).
    """

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        parallel: int | None = None,
        instruction: str | None = None,
        **model_kwargs: Any,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = TextEmbedding(model_name, **model_kwargs)
        self.batch_size = batch_size
        self.parallel = parallel
        self.instruction = instruction

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, with the model's document prompt, in input order."""
        rows = self.model.embed(texts, self.batch_size, self.parallel)
        return [row.tolist() for row in rows]

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query, with the model's query prompt."""
        vectors = self.model.encode(
            [text], self.batch_size, prompt="query", instruction=self.instruction
        )
        return vectors[0].tolist()  # type: ignore[no-any-return]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """``embed_documents`` in a worker thread, not blocking the event loop."""
        return await asyncio.to_thread(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        """``embed_query`` in a worker thread, not blocking the event loop."""
        return await asyncio.to_thread(self.embed_query, text)

    def __repr__(self) -> str:
        return f"SlimembedEmbeddings({self.model!r}, batch_size={self.batch_size})"
