"""Texts into a Qdrant collection and queries against it, embedded by slimembed
(``pip install "slimembed[qdrant]"``).

>>> from qdrant_client import QdrantClient
>>> from slimembed import TextEmbedding
>>> from slimembed.integrations import qdrant
>>> client, model = QdrantClient(":memory:"), TextEmbedding()
>>> qdrant.index(client, "notes", model, ["x is a letter", "y is too"], ids=[1, 2])
>>> hits = qdrant.search(client, "notes", model, ["what is x?"], limit=1)  # [[ScoredPoint]]

Works with any ``QdrantClient``: local mode (``":memory:"`` or ``path=``) or a server. A
missing collection is created with the model's ``embedding_size`` and cosine distance; an
existing one must hold vectors of that size, else ``DimensionMismatchError`` names both
before anything is embedded (fastembed's default model is 384-d, slimembed's 256-d, and a
collection filled by one is meaningless to the other). ``vector_name`` picks a named vector
(qdrant-client's own fastembed integration names its vectors, e.g. ``fast-bge-small-en``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from qdrant_client import QdrantClient, models

from slimembed.errors import DimensionMismatchError
from slimembed.text_embedding import DEFAULT_BATCH_SIZE, TextEmbedding

PointId = int | str


def ensure_collection(
    client: QdrantClient,
    collection: str,
    model: TextEmbedding,
    *,
    vector_name: str | None = None,
    distance: models.Distance = models.Distance.COSINE,
) -> None:
    """Create ``collection`` for ``model``'s vectors (``distance``, cosine by default) where
    it does not exist; else ``check_collection``."""
    if client.collection_exists(collection):
        check_collection(client, collection, model, vector_name=vector_name)
        return
    params = models.VectorParams(size=model.embedding_size, distance=distance)
    config = params if vector_name is None else {vector_name: params}
    client.create_collection(collection, vectors_config=config)


def check_collection(
    client: QdrantClient, collection: str, model: TextEmbedding, *, vector_name: str | None = None
) -> None:
    """Raise ``DimensionMismatchError`` unless ``collection``'s vectors (``vector_name``'s,
    for named vectors) have ``model``'s size; ValueError for a ``vector_name`` it lacks."""
    vectors = client.get_collection(collection).config.params.vectors
    where = f"Qdrant collection {collection!r}"
    if isinstance(vectors, dict):
        if vector_name not in vectors:
            raise ValueError(
                f"{where} has the named vectors {sorted(vectors)}: pass one as vector_name"
                + ("" if vector_name is None else f", not {vector_name!r}")
            )
        vectors, where = vectors[vector_name], f"{where} (vector {vector_name!r})"
    elif vector_name is not None:
        raise ValueError(f"{where} has one unnamed vector: pass vector_name=None")
    found = 0 if vectors is None else vectors.size
    if found != model.embedding_size:
        raise DimensionMismatchError(where, found, model.model_name, model.embedding_size)


def index(
    client: QdrantClient,
    collection: str,
    model: TextEmbedding,
    texts: Iterable[str],
    ids: Iterable[PointId],
    payloads: Iterable[dict[str, Any]] | None = None,
    *,
    vector_name: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    parallel: int | None = None,
) -> None:
    """Embed ``texts`` as documents (the model's document prompt) and upsert them as points
    ``ids`` (Qdrant's ids: unsigned integers or UUID strings) with ``payloads``; the
    collection is created or checked first (``ensure_collection``). Vectors are streamed to
    Qdrant a batch at a time."""
    ensure_collection(client, collection, model, vector_name=vector_name)
    vectors = model.embed(texts, batch_size, parallel)
    client.upload_collection(
        collection,
        vectors=_structs(vectors, vector_name),
        ids=ids,
        payload=payloads,
        batch_size=batch_size,
        wait=True,
    )


def search(
    client: QdrantClient,
    collection: str,
    model: TextEmbedding,
    queries: Sequence[str],
    limit: int = 10,
    *,
    vector_name: str | None = None,
    with_payload: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[list[models.ScoredPoint]]:
    """The ``limit`` nearest points of each query (the model's query prompt), best first,
    from one batched Qdrant request; the collection's size is checked against the model's."""
    check_collection(client, collection, model, vector_name=vector_name)
    vectors = model.encode(queries, batch_size, prompt="query")
    requests = [
        models.QueryRequest(
            query=vector.tolist(), limit=limit, using=vector_name, with_payload=with_payload
        )
        for vector in vectors
    ]
    if not requests:
        return []
    return [
        response.points for response in client.query_batch_points(collection, requests=requests)
    ]


def _structs(vectors: Iterable[Any], vector_name: str | None) -> Iterator[Any]:
    for vector in vectors:
        row = vector.tolist()
        yield row if vector_name is None else {vector_name: row}
