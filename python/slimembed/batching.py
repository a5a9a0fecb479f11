"""Length-sorted batches under a token budget.

Texts are sorted longest first so each batch pads to lengths close to its own, and a batch
holds at most ``batch_size`` texts and ``max_tokens`` padded tokens, so one long text runs with
few companions instead of inflating a whole batch. The longest batch runs first: a budget that
does not fit in memory fails at once, not at the end of a long job.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def plan_batches(
    lengths: npt.NDArray[np.int64], batch_size: int, max_tokens: int
) -> list[npt.NDArray[np.int64]]:
    """Split row indices into batches; every index appears in exactly one batch.

    A row longer than ``max_tokens`` gets a batch of its own.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    order = np.argsort(-lengths, kind="stable").astype(np.int64)
    batches = []
    start, n = 0, len(order)
    while start < n:
        longest = max(int(lengths[order[start]]), 1)
        size = max(1, min(batch_size, max_tokens // longest, n - start))
        batches.append(order[start : start + size])
        start += size
    return batches
