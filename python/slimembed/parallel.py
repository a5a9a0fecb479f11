"""Data-parallel embedding: fastembed's ``embed(..., parallel=N)``.

N worker processes, each with its own copy of the model (loaded from the cache, one ONNX
Runtime or Rust thread each), embed batches of the input while the caller's process reads
ahead; vectors come back in input order (``Pool.imap``). Workers are started with ``spawn``,
never ``fork``: a forked child would inherit ONNX Runtime sessions and thread pools that do
not survive a fork (README, "Running in production"). Worth it for large offline jobs on many
cores; each worker costs a process start and a model load.

Errors name the text's position in the caller's input, as in one process: the type check runs
here before a batch is sent, and a worker's errors about one text are counted from the batch's
offset.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from slimembed.facade import check_texts, naming_texts

if TYPE_CHECKING:
    from slimembed.text_embedding import TextEmbedding

# The model a worker process loaded in its initializer.
_WORKER_MODEL: TextEmbedding | None = None


def workers(parallel: int) -> int:
    """How many processes ``parallel`` asks for: 0 means one per core."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 0:
        raise ValueError(f"parallel must be None or an integer >= 0, got {parallel!r}")
    return parallel or (os.cpu_count() or 1)


def embed(
    model: TextEmbedding,
    texts: Iterable[str],
    prompt: str | None,
    instruction: str | None,
    batch_size: int,
    dim: int | None,
    parallel: int,
) -> Iterator[np.ndarray]:
    """Yield one vector per text, in order, embedded by ``workers(parallel)`` processes."""
    count = workers(parallel)
    context = multiprocessing.get_context("spawn")
    arguments = [
        {**model.loading, "threads": 1, "device_id": model.device_ids[i % len(model.device_ids)]}
        for i in range(count)
    ]
    # Each worker takes the next set of loading arguments (its own CUDA device).
    started = context.Value("i", 0)
    with context.Pool(count, initializer=_load, initargs=(arguments, started)) as pool:
        tasks = _batches(texts, batch_size, prompt, instruction, dim)
        for vectors in pool.imap(_embed_batch, tasks):
            yield from vectors


def _batches(
    texts: Iterable[str],
    batch_size: int,
    prompt: str | None,
    instruction: str | None,
    dim: int | None,
) -> Iterator[tuple[int, list[str], str | None, str | None, int, int | None]]:
    iterator = iter(texts)
    offset = 0
    while chunk := list(islice(iterator, batch_size)):
        check_texts(chunk, offset)
        yield offset, chunk, prompt, instruction, batch_size, dim
        offset += len(chunk)


def _load(arguments: list[dict[str, Any]], started: Any) -> None:
    from slimembed.text_embedding import TextEmbedding

    global _WORKER_MODEL
    with started.get_lock():
        index = started.value
        started.value += 1
    _WORKER_MODEL = TextEmbedding(**arguments[index % len(arguments)])


def _embed_batch(
    task: tuple[int, list[str], str | None, str | None, int, int | None],
) -> np.ndarray:
    offset, chunk, prompt, instruction, batch_size, dim = task
    assert _WORKER_MODEL is not None, "the worker's initializer loads the model"
    plan = _WORKER_MODEL.plan(prompt, instruction)
    with naming_texts(chunk, offset):
        return _WORKER_MODEL.backend.embed(chunk, plan, batch_size, dim)
