"""Data-parallel embedding and reranking: fastembed's ``embed(..., parallel=N)`` and
``rerank_pairs(..., parallel=N)``.

N worker processes, each with its own copy of the model (the caller's class, loaded from the
cache, one ONNX Runtime or Rust thread each), work through batches of the input while the
caller's process reads ahead; results come back in input order (``Pool.imap``). Workers are
started with ``spawn``, never ``fork``: a forked child would inherit ONNX Runtime sessions and
thread pools that do not survive a fork (README, "Running in production"). Worth it for large
offline jobs on many cores; each worker costs a process start and a model load.

Errors name the text's position in the caller's input, as in one process: the type check runs
in the caller's process before a batch is sent, and a worker's errors about one text are
counted from the batch's offset. A worker that cannot load the model raises that error with
its first batch, in the caller's process (``Pool`` would otherwise start a new worker after
each failed initializer, for ever). Workers are spawned afresh, so the models registered in
this process with ``add_custom_model`` are registered again in each.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from slimembed import registry
from slimembed.facade import Facade, check_texts, naming_texts

if TYPE_CHECKING:
    from slimembed.text_embedding import TextEmbedding

Task = TypeVar("Task")
Result = TypeVar("Result")

# The model a worker process loaded in its initializer, or why it could not.
_WORKER_MODEL: Facade | None = None
_WORKER_ERROR: Exception | None = None


def workers(parallel: int) -> int:
    """How many processes ``parallel`` asks for: 0 means one per core."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 0:
        raise ValueError(f"parallel must be None or an integer >= 0, got {parallel!r}")
    return parallel or (os.cpu_count() or 1)


def imap(
    model: Facade,
    tasks: Iterable[Task],
    work: Callable[[Any, Task], Result],
    parallel: int,
) -> Iterator[Result]:
    """``work(worker_model, task)`` for each task, in ``workers(parallel)`` processes that
    each load ``model`` again (its class and its loading arguments); results in task order.
    ``work`` must be a module-level function (it is pickled by name)."""
    count = workers(parallel)
    context = multiprocessing.get_context("spawn")
    arguments = [
        {**model.loading, "threads": 1, "device_id": model.device_ids[i % len(model.device_ids)]}
        for i in range(count)
    ]
    # Each worker takes the next set of loading arguments (its own CUDA device).
    started = context.Value("i", 0)
    custom = [spec for spec in registry.all_specs() if spec.custom]
    initargs = (type(model), arguments, started, custom)
    with context.Pool(count, initializer=_load, initargs=initargs) as pool:
        yield from pool.imap(partial(_run, work), tasks)


def embed(
    model: TextEmbedding,
    texts: Iterable[str],
    prompt: str | None,
    instruction: str | None,
    batch_size: int,
    dim: int | None,
    normalize: bool | None,
    parallel: int,
) -> Iterator[np.ndarray]:
    """Yield one vector per text, in order, embedded by ``workers(parallel)`` processes."""
    tasks = _batches(texts, batch_size, prompt, instruction, dim, normalize)
    for vectors in imap(model, tasks, _embed_batch, parallel):
        yield from vectors


def _batches(
    texts: Iterable[str],
    batch_size: int,
    prompt: str | None,
    instruction: str | None,
    dim: int | None,
    normalize: bool | None,
) -> Iterator[tuple[int, list[str], str | None, str | None, int, int | None, bool | None]]:
    iterator = iter(texts)
    offset = 0
    while chunk := list(islice(iterator, batch_size)):
        check_texts(chunk, offset)
        yield offset, chunk, prompt, instruction, batch_size, dim, normalize
        offset += len(chunk)


def _load(
    cls: type[Facade],
    arguments: list[dict[str, Any]],
    started: Any,
    custom: list[registry.ModelSpec],
) -> None:
    global _WORKER_MODEL, _WORKER_ERROR
    with started.get_lock():
        index = started.value
        started.value += 1
    for spec in custom:
        registry.register(spec)
    # Any error is kept to be raised by _run: a worker that let it out would be replaced by
    # one that fails again.
    try:
        _WORKER_MODEL = cls(**arguments[index % len(arguments)])
    except Exception as err:  # noqa: BLE001 -- not a fallback: _run raises it
        _WORKER_ERROR = err


def _run(work: Callable[[Any, Task], Result], task: Task) -> Result:
    if _WORKER_ERROR is not None:
        raise _WORKER_ERROR
    assert _WORKER_MODEL is not None, "the worker's initializer loads the model"
    return work(_WORKER_MODEL, task)


def _embed_batch(
    model: TextEmbedding,
    task: tuple[int, list[str], str | None, str | None, int, int | None, bool | None],
) -> np.ndarray:
    offset, chunk, prompt, instruction, batch_size, dim, normalize = task
    plan = model.plan(prompt, instruction)
    with naming_texts(chunk, offset):
        return model.backend.embed(chunk, plan, batch_size, dim, normalize=normalize)
