"""Texts into a sqlite-vec table and queries against it, embedded by slimembed
(``pip install "slimembed[sqlite-vec]"``).

>>> from slimembed import TextEmbedding
>>> from slimembed.integrations import sqlite
>>> db, model = sqlite.connect("notes.db"), TextEmbedding()
>>> left_out = sqlite.index(db, "notes", model, ["x is a letter", "y"], ids=["x", "y"])
>>> hits = sqlite.search(db, "notes", model, ["what is x?"], k=1)  # [[("x", distance)]]

A table is a ``vec0`` virtual table ``(id TEXT PRIMARY KEY, embedding float[dim]
distance_metric=cosine)``. A missing one is created with the model's ``embedding_size``; an
existing one must declare that size, else ``DimensionMismatchError`` names both before
anything is embedded. ``search`` gives sqlite-vec's cosine distance (1 - cosine similarity),
nearest first. Texts whose vector is zero are left out of the table, with a warning (see
``index``): sqlite-vec would rank them first for every query.

The module is not named ``sqlite_vec`` so as not to shadow the package it drives. Python's
``sqlite3`` loads extensions only where Python was built with
``--enable-loadable-sqlite-extensions`` (pyenv's builds and macOS's system Python are not);
there ``connect`` opens the database with pysqlite3 (``pip install pysqlite3-binary``), the
same DB-API with extensions enabled, and says so where neither can load sqlite-vec.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sqlite3
import warnings
from collections.abc import Iterable, Iterator, Sequence
from types import ModuleType

import numpy as np
import numpy.typing as npt
import sqlite_vec  # type: ignore[import-untyped]

from slimembed.errors import DimensionMismatchError
from slimembed.text_embedding import DEFAULT_BATCH_SIZE, TextEmbedding


def connect(database: str | os.PathLike[str] = ":memory:") -> sqlite3.Connection:
    """A connection to ``database`` (a path or ``":memory:"``) with sqlite-vec loaded.

    The stdlib ``sqlite3`` where it can load extensions, else pysqlite3's; ImportError saying
    what to install where neither can.
    """
    db: sqlite3.Connection = _dbapi().connect(os.fspath(database))
    db.enable_load_extension(True)
    try:
        sqlite_vec.load(db)
    finally:
        db.enable_load_extension(False)
    return db


def ensure_table(db: sqlite3.Connection, table: str, model: TextEmbedding) -> None:
    """Create ``table`` for ``model``'s vectors where it does not exist; else
    ``check_table``."""
    if _schema(db, table) is not None:
        check_table(db, table, model)
        return
    db.execute(
        f"CREATE VIRTUAL TABLE {_quote(table)} USING vec0("
        f"id TEXT PRIMARY KEY, embedding float[{model.embedding_size}] distance_metric=cosine)"
    )


def check_table(db: sqlite3.Connection, table: str, model: TextEmbedding) -> None:
    """Raise ``DimensionMismatchError`` unless ``table``'s ``embedding`` column holds vectors
    of ``model``'s size; ValueError where the table is missing or has no such column."""
    schema = _schema(db, table)
    if schema is None:
        raise ValueError(f"sqlite table {table!r} does not exist: index texts into it first")
    declared = re.search(r"\bembedding\s+float\[(\d+)\]", schema, re.IGNORECASE)
    if declared is None:
        raise ValueError(
            f"sqlite table {table!r} has no 'embedding float[dim]' column of sqlite-vec: {schema}"
        )
    found = int(declared.group(1))
    if found != model.embedding_size:
        where = f"sqlite-vec table {table!r}"
        raise DimensionMismatchError(where, found, model.model_name, model.embedding_size)


def index(
    db: sqlite3.Connection,
    table: str,
    model: TextEmbedding,
    texts: Iterable[str],
    ids: Iterable[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    parallel: int | None = None,
) -> list[str]:
    """Embed ``texts`` as documents (the model's document prompt) and insert them as rows
    ``ids`` in one transaction; the table is created or checked first (``ensure_table``).

    Returns the ids of the texts left out because they embed to the zero vector (an empty
    text, or one of unknown tokens only, in a static model), with a ``ZeroVectorWarning``:
    sqlite-vec's cosine distance to a zero vector is NULL, and ``vec0`` ranks NULL before
    every real match, so such a row would come first for every query. Exact search gives it
    cosine 0: it would be found only where fewer than ``k`` texts have a positive cosine.
    """
    ensure_table(db, table, model)
    vectors = model.embed(texts, batch_size, parallel)
    left_out: list[str] = []

    def rows() -> Iterator[tuple[str, bytes]]:
        for i, vector in zip(ids, vectors, strict=True):
            if vector.any():
                yield str(i), _blob(vector)
            else:
                left_out.append(str(i))

    with db:
        db.executemany(f"INSERT INTO {_quote(table)}(id, embedding) VALUES (?, ?)", rows())
    if left_out:
        warnings.warn(
            f"{len(left_out)} texts embed to the zero vector and were left out of sqlite-vec "
            f"table {table!r} (its cosine distance to them is NULL, ranked first): ids "
            f"{left_out[:5]}{' ...' if len(left_out) > 5 else ''}",
            ZeroVectorWarning,
            stacklevel=2,
        )
    return left_out


def search(
    db: sqlite3.Connection,
    table: str,
    model: TextEmbedding,
    queries: Sequence[str],
    k: int = 10,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[list[tuple[str, float]]]:
    """The ``k`` nearest rows of each query (the model's query prompt) as ``(id, cosine
    distance)`` pairs, nearest first (sqlite-vec's exact KNN); the table's size is checked
    against the model's. A query that embeds to the zero vector has no nearest rows: its
    distances are NaN, in no meaningful order."""
    check_table(db, table, model)
    sql = (
        f"SELECT id, distance FROM {_quote(table)} "
        "WHERE embedding MATCH ? AND k = ? ORDER BY distance"
    )
    vectors = model.encode(queries, batch_size, prompt="query")
    return [[(str(i), _distance(d)) for i, d in db.execute(sql, (_blob(v), k))] for v in vectors]


class ZeroVectorWarning(UserWarning):
    """Texts that embed to the zero vector were left out of a sqlite-vec table."""


def _distance(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _dbapi() -> ModuleType:
    if hasattr(sqlite3.Connection, "enable_load_extension"):
        return sqlite3
    try:
        return importlib.import_module("pysqlite3.dbapi2")
    except ImportError:
        raise ImportError(
            "this Python's sqlite3 was built without loadable extensions, so it cannot load "
            "sqlite-vec: pip install pysqlite3-binary (the same DB-API with extensions), or "
            "use a Python built with --enable-loadable-sqlite-extensions"
        ) from None


def _schema(db: sqlite3.Connection, table: str) -> str | None:
    row = db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    return None if row is None else str(row[0])


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _blob(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()
