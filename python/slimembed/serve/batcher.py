"""Cross-request dynamic batching: the requests of one model share one queue and one worker.

A request puts its texts on the queue and awaits a future. The worker takes every job queued
with the same prompt, width and normalization as the oldest one (up to ``max_step_texts``
texts), runs them as
one ``TextEmbedding.encode`` call on a thread of its own (the Rust core and ONNX Runtime release
the GIL, so the event loop keeps accepting meanwhile), and completes each job's future with its
rows. ``encode`` length-sorts the texts and pads each batch under the token budget, so a request
larger than the budget is split, never refused; a text's vector does not depend on what it was
batched with (bit-identical for INT8 and static models, within 1e-6 for FP32).

While one step runs, new requests queue up and go together into the next: the batch grows with
the load, and a lone request runs at once. A job whose request went away (the client
disconnected) is dropped from the queue before it costs anything.

Written here rather than taken from a library: what it batches is ``encode``'s own chunk (not a
fixed count or a timer), and the job groups depend on slimembed's prompts and dims.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed.errors import TooLongError
from slimembed.facade import CHUNK_SIZE
from slimembed.text_embedding import TextEmbedding

Vectors = npt.NDArray[np.float32]


class QueueFull(Exception):
    """The model's queue holds ``max_queued`` requests already (HTTP 429)."""


@dataclass(frozen=True)
class Key:
    """What must be equal for jobs to share one ``encode`` call."""

    prompt: str | None
    instruction: str | None
    dim: int | None
    #: Whether the vectors are L2-normalized: the request's choice, else the model's rule, so
    #: requests asking for what the model does anyway share a step with those asking nothing.
    normalize: bool
    #: The inputs are token-id rows (``TextEmbedding.encode_ids``), not texts.
    ids: bool = False


@dataclass(eq=False)  # a job is itself: the queue finds it by identity
class Job:
    texts: list[Any]  # strings, or token-id rows when key.ids
    key: Key
    truncate: bool
    future: asyncio.Future[tuple[Vectors, int]]
    #: Tokens the model sees for these texts (truncated), set by the worker.
    tokens: int = 0


@dataclass
class Step:
    """What one worker step did, for metrics."""

    texts: int
    tokens: int
    seconds: float


class Batcher:
    """One model's queue and worker.

    ``embed`` is called from the event loop; ``start`` and ``stop`` bracket the worker (the
    server's lifespan). A step runs in model batches of ``batch_size`` texts at most (small
    batches of short texts run faster on CPU than one large one: MiniLM FP32 on 2 cores, 485
    texts/s at 32 against 354 at 256). ``on_step`` is told about every step, ``on_drop`` about
    every job dropped unrun because its request was cancelled (metrics).
    """

    def __init__(
        self,
        model: TextEmbedding,
        *,
        max_queued: int = 512,
        max_step_texts: int = CHUNK_SIZE,
        batch_size: int = 32,
        on_step: Callable[[Step], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.max_queued = max_queued
        self.batch_size = batch_size
        self.max_step_texts = max_step_texts
        self.on_step = on_step
        self.on_drop = on_drop
        self._queue: deque[Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="slimembed-batch")
        self._running = 0  # jobs taken by the worker, not yet done

    # ---- the event-loop side ------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Requests queued or running."""
        return len(self._queue) + self._running

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="slimembed-batch")

    async def stop(self) -> None:
        """Finish the queued jobs, then stop the worker."""
        if self._task is None:
            return
        while self._queue or self._running:
            await asyncio.sleep(0.01)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._pool.shutdown(wait=True)

    async def embed(
        self,
        texts: list[str],
        *,
        prompt: str | None = None,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
    ) -> tuple[Vectors, int]:
        """``(len(texts), width)`` vectors, equal to ``model.encode``'s for the same texts and
        arguments, and the number of tokens the model saw. Raises QueueFull, TooLongError (a
        text past the max length with ``truncate=False``), and the ValueError / TypeError
        ``encode`` raises for bad arguments."""
        self.model.plan(prompt, instruction)  # bad prompt arguments fail here, not in a step
        key = Key(prompt, instruction, dim, self._normalize(normalize))
        return await self._submit(texts, key, truncate)

    async def embed_ids(
        self,
        rows: list[list[int]],
        *,
        dim: int | None = None,
        normalize: bool | None = None,
        truncate: bool = True,
    ) -> tuple[Vectors, int]:
        """As ``embed`` for rows of token ids (``TextEmbedding.encode_ids``)."""
        key = Key(None, None, dim, self._normalize(normalize), ids=True)
        return await self._submit(rows, key, truncate)

    def _normalize(self, normalize: bool | None) -> bool:
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"normalize must be None, True or False, got {normalize!r}")
        return self.model.manifest.normalize if normalize is None else normalize

    async def _submit(self, inputs: list[Any], key: Key, truncate: bool) -> tuple[Vectors, int]:
        if self._wake is None:  # no lifespan (an AWS Lambda adapter): start on first use
            self.start()
        assert self._wake is not None
        self.model.check_dim(key.dim)
        if self.depth >= self.max_queued:
            raise QueueFull(f"{self.depth} requests are waiting for this model")
        job = Job(inputs, key, truncate, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wake.set()
        try:
            return await job.future
        except asyncio.CancelledError:
            # The request went away: drop its job unless the worker has it already (then its
            # result, arriving on a cancelled future, is ignored) or has skipped it (_take).
            try:
                self._queue.remove(job)
            except ValueError:
                pass
            else:
                self._dropped()
            raise

    async def _work(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = self._take()
            if not jobs:
                continue
            self._running = len(jobs)
            try:
                results = await loop.run_in_executor(self._pool, self._step, jobs)
            except BaseException as err:
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(err)
                if isinstance(err, asyncio.CancelledError):
                    raise
                continue
            finally:
                self._running = 0
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result((result, job.tokens))

    def _take(self) -> list[Job]:
        """The oldest live job and every later one with its key, up to ``max_step_texts``
        texts (the oldest is taken whole however large); jobs cancelled while queued are
        dropped. Empty when every queued job was cancelled."""
        jobs: list[Job] = []
        count, kept = 0, deque[Job]()
        while self._queue:
            job = self._queue.popleft()
            if job.future.done():  # cancelled; its request has not yet removed it
                self._dropped()
            elif not jobs or (
                job.key == jobs[0].key and count + len(job.texts) <= self.max_step_texts
            ):
                jobs.append(job)
                count += len(job.texts)
            else:
                kept.append(job)
        self._queue = kept
        return jobs

    def _dropped(self) -> None:
        if self.on_drop is not None:
            self.on_drop()

    # ---- the worker thread --------------------------------------------------------------

    def _step(self, jobs: list[Job]) -> list[Vectors | BaseException]:
        start = time.perf_counter()
        model, key = self.model, jobs[0].key
        plan = model.plan(key.prompt, key.instruction)
        limit = model.manifest.max_length
        results: list[Vectors | BaseException | None] = [None] * len(jobs)
        good: list[int] = []
        for i, job in enumerate(jobs):
            # One token past the limit tells a text that would be cut from one that fits.
            probe = limit + 1 if limit is not None and not job.truncate else None
            if key.ids:  # encode_ids cuts rows at the limit (the probe, to tell a cut row)
                lengths = np.array([len(row) for row in job.texts])
                cap = probe or limit
                if cap is not None:
                    lengths = np.minimum(lengths, cap)
            else:
                lengths = model.backend.encode(job.texts, plan, probe).lengths()
            if probe is not None and (long := np.flatnonzero(lengths >= probe)).size:
                index = int(long[0])
                results[i] = TooLongError(
                    f"inputs[{index}] is longer than the model's max length of {limit} "
                    "tokens; send truncate=true to cut it",
                    index,
                )
                continue
            job.tokens = int(lengths.sum())
            good.append(i)
        texts = [text for i in good for text in jobs[i].texts]
        if texts:
            try:
                if key.ids:
                    vectors = model.encode_ids(
                        texts, self.batch_size, dim=key.dim, normalize=key.normalize
                    )
                else:
                    vectors = model.encode(
                        texts,
                        self.batch_size,
                        prompt=key.prompt,
                        instruction=key.instruction,
                        dim=key.dim,
                        normalize=key.normalize,
                    )
            except Exception as err:  # noqa: BLE001 - reported to each request
                for i in good:
                    results[i] = err
            else:
                offset = 0
                for i in good:
                    n = len(jobs[i].texts)
                    results[i] = vectors[offset : offset + n]
                    offset += n
        if self.on_step is not None:
            tokens = sum(jobs[i].tokens for i in good)
            self.on_step(Step(len(texts), tokens, time.perf_counter() - start))
        return [r if r is not None else RuntimeError("no result") for r in results]
