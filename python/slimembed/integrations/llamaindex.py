"""LlamaIndex's ``BaseEmbedding`` on a slimembed model (``pip install "slimembed[llamaindex]"``).

>>> from llama_index.core import Settings
>>> from slimembed.integrations.llamaindex import SlimembedEmbedding
>>> Settings.embed_model = SlimembedEmbedding()  # the embedded 256-d static default

Shaped as llama-index-embeddings-fastembed's ``FastEmbedEmbedding``: a pydantic model whose
``model_name`` field names the model, the ``TextEmbedding`` kept in a private attribute. Texts
(nodes) get the model's document prompt, queries its query prompt. LlamaIndex cuts a batch of
texts into ``embed_batch_size`` pieces before calling ``_get_text_embeddings``; each piece is
one ``encode`` call. The async methods run the sync ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from slimembed.text_embedding import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_DIR, TextEmbedding


class SlimembedEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model that embeds with a slimembed ``TextEmbedding``.

    Args:
        model_name: what ``TextEmbedding`` loads: a model directory, a registry name or a hub
            id; ``None``: the embedded 256-d static default (not fastembed's 384-d
            BAAI/bge-small-en-v1.5), whose directory the ``model_name`` field then holds, so
            that ``from_dict(to_dict())`` loads the same model.
        embed_batch_size: texts per ``encode`` call.
        instruction: replaces the query prompt's default task instruction (decoder
            embedders such as Qwen3-Embedding); ``None`` keeps the model's.
        model_kwargs: ``TextEmbedding``'s other arguments (``threads``, ``cuda``,
            ``max_length``, ``cache_dir``, ``precision``, ...). A dict, not loose keywords,
            because the loose ones are ``BaseEmbedding``'s (``callback_manager``,
            ``num_workers``, ``embeddings_cache``, ...), which ``from_dict`` passes back.
    """

    instruction: str | None = Field(
        default=None, description="Replaces the query prompt's default task instruction."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="TextEmbedding's arguments besides the model name."
    )
    _model: TextEmbedding = PrivateAttr()

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        embed_batch_size: int = DEFAULT_BATCH_SIZE,
        instruction: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        options = dict(model_kwargs or {})
        model = TextEmbedding(model_name, **options)
        super().__init__(
            model_name=str(DEFAULT_MODEL_DIR if model_name is None else model_name),
            embed_batch_size=embed_batch_size,
            **kwargs,
        )
        self.instruction = instruction
        self.model_kwargs = options
        self._model = model

    @classmethod
    def class_name(cls) -> str:
        return "SlimembedEmbedding"

    @property
    def model(self) -> TextEmbedding:
        """The ``TextEmbedding`` that embeds."""
        return self._model

    def _get_query_embedding(self, query: str) -> Embedding:
        vectors = self._model.encode(
            [query], self.embed_batch_size, prompt="query", instruction=self.instruction
        )
        return vectors[0].tolist()  # type: ignore[no-any-return]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        vectors = self._model.encode(texts, self.embed_batch_size, prompt="document")
        return vectors.tolist()  # type: ignore[no-any-return]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
