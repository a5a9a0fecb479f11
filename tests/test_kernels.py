"""The Rust kernels against the plain numpy reference, and the tokenizer against the Python
``tokenizers`` library on every text in shared/data."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tokenizers import Tokenizer as PyTokenizer

from benchmarks.datasets import all_texts
from slimembed import _core
from tests import reference, tiny

MODES = list(_core.POOLING_MODES)


@st.composite
def pool_case(draw: st.DrawFn) -> dict[str, object]:
    batch = draw(st.integers(0, 4))
    seq = draw(st.integers(0, 6))
    dim = draw(st.integers(1, 5))
    hidden = draw(hnp.arrays(np.float32, (batch, seq, dim), elements=st.floats(-8, 8, width=32)))
    # Any 0/1 pattern: left padding, right padding, holes and all-zero rows alike.
    mask = draw(hnp.arrays(np.int64, (batch, seq), elements=st.integers(0, 1)))
    skip = draw(st.none() | hnp.arrays(np.int64, (batch,), elements=st.integers(0, seq + 1)))
    return {
        "hidden": hidden,
        "mask": mask,
        "mode": draw(st.sampled_from(MODES)),
        "skip": skip,
        "normalize": draw(st.booleans()),
        "dim": draw(st.none() | st.integers(1, dim)),
    }


@settings(max_examples=400, deadline=None)
@given(pool_case())
def test_pool_matches_reference(case: dict[str, object]) -> None:
    got = _core.pool(
        case["hidden"],
        case["mask"],
        case["mode"],
        skip=case["skip"],
        normalize=case["normalize"],
        dim=case["dim"],
    )
    want = reference.pool(**case)  # type: ignore[arg-type]
    assert got.dtype == np.float32
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_pool_accepts_non_contiguous_arrays() -> None:
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((3, 10, 8)).astype(np.float32)[:, ::2, ::2]
    mask = np.ones((3, 10), dtype=np.int64)[:, ::2]
    got = _core.pool(hidden, mask, "mean")
    np.testing.assert_allclose(got, reference.pool(hidden, mask, "mean"), rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": np.ones((2, 4), np.int64)}, "mask has shape"),
        ({"mode": "max"}, "unknown pooling"),
        ({"dim": 0}, "dim must be"),
        ({"dim": 9}, "dim must be"),
        ({"skip": np.array([-1, 0], np.int64)}, "skip must be"),
        ({"skip": np.array([0], np.int64)}, "skip has 1 rows"),
    ],
)
def test_pool_contract_violations_raise_value_error(
    kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "hidden": np.zeros((2, 3, 8), np.float32),
        "mask": np.ones((2, 3), np.int64),
        "mode": "mean",
    }
    args.update(kwargs)
    hidden, mask, mode = args.pop("hidden"), args.pop("mask"), args.pop("mode")
    with pytest.raises(ValueError, match=message):
        _core.pool(hidden, mask, mode, **args)  # type: ignore[arg-type]


def test_pool_rejects_wrong_dtypes() -> None:
    with pytest.raises(TypeError):
        _core.pool(np.zeros((1, 2, 3)), np.ones((1, 2), np.int64), "mean")  # float64


def _number_tokenizer() -> _core.Tokenizer:
    return _core.Tokenizer.from_json(tiny.number_tokenizer_json())


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(0, 49), max_size=7), max_size=6),
    side=st.sampled_from(["left", "right"]),
    pad_id=st.integers(-1, 60),
    data=st.data(),
)
def test_pad_matches_reference(
    rows: list[list[int]], side: str, pad_id: int, data: st.DataObject
) -> None:
    encoded = _number_tokenizer().encode(
        [" ".join(map(str, r)) for r in rows], add_special_tokens=False
    )
    np.testing.assert_array_equal(encoded.lengths(), [len(r) for r in rows])
    picked = data.draw(st.lists(st.integers(0, max(len(rows) - 1, 0)), max_size=len(rows)))
    picked = picked if rows else []
    ids, mask, skip, positions = encoded.pad(
        np.array(picked, dtype=np.int64), padding_side=side, pad_id=pad_id, positions=True
    )
    want_ids, want_mask = reference.pad([rows[i] for i in picked], side, pad_id)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
    np.testing.assert_array_equal(skip, np.zeros(len(picked)))
    assert positions is not None
    # transformers' convention: cumsum(mask) - 1 on real tokens, 1 on padding.
    want_positions = np.where(want_mask == 1, np.cumsum(want_mask, axis=1) - 1, 1)
    np.testing.assert_array_equal(positions, want_positions)


def test_pad_rejects_bad_rows() -> None:
    encoded = _number_tokenizer().encode(["1 2", "3"], add_special_tokens=False)
    with pytest.raises(ValueError, match="out of range"):
        encoded.pad(np.array([2], np.int64))
    with pytest.raises(ValueError, match="negative"):
        encoded.pad(np.array([-1], np.int64))
    with pytest.raises(ValueError, match="padding side"):
        encoded.pad(np.array([0], np.int64), padding_side="middle")


def test_inserted_ids_leave_room_when_truncating() -> None:
    tok = _number_tokenizer()
    encoded = tok.encode(
        ["1 2 3 4 5 6 7 8", "9"], max_length=5, prefix_ids=[40], suffix_ids=[41, 42]
    )
    assert encoded.row(0).tolist() == [40, 1, 2, 41, 42]
    assert encoded.row(1).tolist() == [40, 9, 41, 42]
    with pytest.raises(ValueError, match="leaves no room"):
        tok.encode(["1"], max_length=3, prefix_ids=[40], suffix_ids=[41, 42])
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        tok.encode(["1"], prefix_ids=[10_000])


def test_instruction_prefix_length_is_kept_per_row() -> None:
    tok = _number_tokenizer()
    encoded = tok.encode(["7 8", "9"], instruction="1 2 3 ", prefix_ids=[40])
    assert encoded.row(0).tolist() == [40, 1, 2, 3, 7, 8]
    assert encoded.row(1).tolist() == [40, 1, 2, 3, 9]
    _, _, skip, _ = encoded.pad(np.array([0, 1], np.int64))
    assert skip.tolist() == [4, 4]
    # Truncated inside the instruction: the skip stops at the row's end.
    cut = tok.encode(["7 8"], instruction="1 2 3 ", prefix_ids=[40], max_length=3)
    assert cut.row(0).tolist() == [40, 1, 2]
    assert cut.pad(np.array([0], np.int64))[2].tolist() == [3]


def test_tokenizer_errors_name_the_file(tmp_path: object) -> None:
    from pathlib import Path

    missing = Path(str(tmp_path)) / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        _core.Tokenizer(missing)
    missing.write_text("{ not json")
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        _core.Tokenizer(missing)


def test_bare_string_is_not_a_list_of_texts() -> None:
    with pytest.raises(TypeError):
        _number_tokenizer().encode("1 2")  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["bert", "llama", "qwen3"])
def test_ids_equal_python_tokenizers_on_shared_data(family: str, tiny_source) -> None:  # type: ignore[no-untyped-def]
    """Every text in shared/data (STS-B in five languages, SciFact) tokenizes exactly as the
    reference library does, with special tokens and truncation."""
    path = tiny_source(family) / "tokenizer.json"
    texts = list(all_texts())
    ref = PyTokenizer.from_file(str(path))
    ref.no_padding()
    ref.enable_truncation(max_length=128)
    want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=True)]
    got = _core.Tokenizer(path).encode(texts, max_length=128)
    assert len(got) == len(texts)
    np.testing.assert_array_equal(got.lengths(), [len(w) for w in want])
    mismatched = [i for i, w in enumerate(want) if got.row(i).tolist() != w]
    assert mismatched == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_tokenizer_keeps_working_in_a_forked_child(tiny_source) -> None:  # type: ignore[no-untyped-def]
    """After the parent used rayon's pool, a forked child (whose pool threads are gone) must
    still tokenize instead of waiting forever."""
    tokenizer = _core.Tokenizer(tiny_source("bert") / "tokenizer.json")
    texts = list(all_texts()[:2000])
    want = tokenizer.encode(texts).lengths()
    pid = os.fork()
    if pid == 0:  # child: report through the exit code only, never return into pytest
        code = 2
        try:
            code = 0 if np.array_equal(tokenizer.encode(texts).lengths(), want) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("tokenizing in a forked child deadlocked")
