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
from llama_index.core.callbacks import CallbackManager

from slimembed.text_embedding import DEFAULT_BATCH_SIZE, TextEmbedding


class SlimembedEmbedding(BaseEmbedding):
    """A LlamaIndex embedding model that embeds with a slimembed ``TextEmbedding``.

    ``model_name`` is what ``TextEmbedding`` loads (``None``: the embedded 256-d static
    default, not fastembed's 384-d BAAI/bge-small-en-v1.5); ``instruction`` replaces the
    query prompt's default task instruction; other keywords go to ``TextEmbedding``
    (``threads``, ``cuda``, ``max_length``, ``cache_dir``, ``precision``, ...).
    """

    instruction: str | None = Field(
        default=None, description="Replaces the query prompt's default task instruction."
    )
    _model: TextEmbedding = PrivateAttr()

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        *,
        embed_batch_size: int = DEFAULT_BATCH_SIZE,
        instruction: str | None = None,
        callback_manager: CallbackManager | None = None,
        **model_kwargs: Any,
    ) -> None:
        model = TextEmbedding(model_name, **model_kwargs)
        super().__init__(
            model_name=model.model_name,
            embed_batch_size=embed_batch_size,
            callback_manager=CallbackManager([]) if callback_manager is None else callback_manager,
        )
        self.instruction = instruction
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
