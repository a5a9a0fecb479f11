"""Length-sorted batching: every text in exactly one batch, within both limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from slimembed.batching import plan_batches


@given(
    lengths=st.lists(st.integers(0, 600), max_size=300),
    batch_size=st.integers(1, 64),
    max_tokens=st.integers(1, 4096),
)
def test_batches_partition_rows_within_limits(
    lengths: list[int], batch_size: int, max_tokens: int
) -> None:
    arr = np.array(lengths, dtype=np.int64)
    batches = plan_batches(arr, batch_size, max_tokens)
    rows = np.concatenate(batches) if batches else np.array([], dtype=np.int64)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    previous_longest = None
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        longest = int(arr[batch].max())
        # The padded batch fits the budget, unless one text alone exceeds it.
        assert len(batch) == 1 or len(batch) * longest <= max_tokens
        # Longest first, so padding within a batch is small.
        assert previous_longest is None or longest <= previous_longest
        previous_longest = int(arr[batch].min())


def test_invalid_limits() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches(np.array([1]), 0, 10)
    with pytest.raises(ValueError, match="max_tokens"):
        plan_batches(np.array([1]), 1, 0)
