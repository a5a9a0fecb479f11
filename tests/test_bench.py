"""The benchmark's statistics, text sources, footprint and report: pure code, no engines."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, texts
from benchmarks.footprint import closure, footprint
from benchmarks.timing import (
    interleaved,
    interleaved_each,
    latency,
    percentile,
    ratio,
    ratios_vs,
    summary,
)


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_percentile_matches_numpy(n: int) -> None:
    rng = random.Random(n)
    values = [rng.expovariate(1.0) for _ in range(n)]
    for q in (0, 1, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_rejects_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


def test_latency_in_milliseconds() -> None:
    times = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    got = latency(times)
    assert got["p50"] == pytest.approx(50.5)
    assert got["p95"] == pytest.approx(95.05)
    assert got["p99"] == pytest.approx(99.01)
    assert got["min"] == pytest.approx(1.0)
    assert got["max"] == pytest.approx(100.0)


def test_summary_is_items_per_second() -> None:
    got = summary([2.0, 1.0, 4.0], items=100)
    assert got == {"median": 50.0, "min": 25.0, "max": 100.0}


def test_ratio_is_the_median_of_per_pair_ratios() -> None:
    faster, slower = [1.0, 2.0, 3.0], [3.0, 2.0, 9.0]
    got = ratio(faster, slower)
    # Pairs give 3, 1, 3: median 3, whereas the ratio of medians would be 2 / 2... = 1.5.
    assert got == {"median": 3.0, "min": 1.0, "max": 3.0}
    assert got["median"] != pytest.approx(np.median(slower) / np.median(faster))


def test_ratio_needs_pairs() -> None:
    with pytest.raises(ValueError, match="shorter"):
        ratio([1.0, 2.0], [1.0])


def test_ratios_vs_baseline_direction() -> None:
    times = {"base": [1.0, 1.0, 1.2], "slow": [2.0, 2.0, 2.4], "fast": [0.25, 0.5, 0.4]}
    got = ratios_vs(times, "base")
    assert got["base"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert got["slow"]["median"] == pytest.approx(0.5)  # half the baseline's speed
    assert got["fast"] == pytest.approx({"median": 3.0, "min": 2.0, "max": 4.0})


def test_interleaved_alternates_engines_after_one_warm_up() -> None:
    calls: list[str] = []
    got = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3)
    assert calls == ["a", "b"] * 4  # warm-up, then A B three times
    assert [len(t) for t in got.values()] == [3, 3]


def test_interleaved_each_times_every_item_for_every_engine() -> None:
    calls: list[tuple[str, int]] = []
    engines = {
        "a": lambda x: calls.append(("a", x)),
        "b": lambda x: calls.append(("b", x)),
    }
    got = interleaved_each(engines, [1, 2, 3], warmup=1)
    assert calls == [("a", 1), ("b", 1), ("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    assert [len(t) for t in got.values()] == [3, 3]


def test_generated_texts_are_seeded() -> None:
    a, b, c = texts.generated(50, seed=1), texts.generated(50, seed=1), texts.generated(50, 2)
    assert a == b
    assert a != c
    assert all(t and t.endswith(".") for t in a)


def test_texts_from_files(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    rows = [{"id": 1, "text": "alpha"}, {"id": 2, "body": "beta"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert texts.load(str(tmp_path / "t.txt")) == ["one", "two"]
    assert texts.load(str(tmp_path / "t.jsonl")) == ["alpha", "beta"]
    assert texts.load("sts", 3) == texts.english_sentences()[:3]
    with pytest.raises(ValueError, match="unknown text source"):
        texts.load("nope")


def test_texts_from_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="parquet input needs pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"n": [1, 2], "text": ["x", "y"]}), tmp_path / "t.parquet")
    assert texts.load(str(tmp_path / "t.parquet")) == ["x", "y"]


def test_texts_of_length() -> None:
    from tests.tiny import minilm_source

    tokenizer = minilm_source() / "tokenizer.json"
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128
    for n in (16, 300):
        batch = texts.of_length(tokenizer, n, 4)
        counts = [len(tok.encode(t, add_special_tokens=False).ids) for t in batch]
        # Decoding WordPiece and encoding again can merge or split a piece at the edges.
        assert all(abs(c - n) <= max(2, n // 50) for c in counts), counts


def test_footprint_follows_requirements() -> None:
    names, absent = closure("model2vec")
    assert names[0] == "model2vec"
    assert {"numpy", "tokenizers"} <= set(names)
    assert absent == []
    got = footprint("model2vec")
    assert got["mib"] > got["largest"]["numpy"] > 1  # type: ignore[index, operator]
    assert closure("no-such-distribution-xyz") == ([], ["no-such-distribution-xyz"])


def _throughput(engine: str, seconds: list[float]) -> dict[str, object]:
    return {
        "measure": "throughput",
        "model": "m",
        "engine": engine,
        "source": "sts",
        "texts": 100,
        "tokens": 1000,
        "batch_size": 32,
        "seconds": seconds,
        "texts_per_s": summary(seconds, 100),
        "tokens_per_s": summary(seconds, 1000),
        "baseline": "slimembed fp32",
        "vs_baseline": ratio(seconds, [1.0, 1.0, 1.0]),
    }


def _report() -> dict[str, object]:
    records = [
        {
            "measure": "model",
            "model": "m",
            "kind": "transformer",
            "max_length": 256,
            "dim": 8,
            "engines": {"slimembed fp32": {}, "fastembed": {}},
            "reference": "fastembed",
        },
        _throughput("slimembed fp32", [1.0, 1.0, 1.0]),
        _throughput("fastembed", [2.0, 3.0, 2.5]),
    ]
    return {
        "command": "slimembed bench",
        "machine": {"cpu": "cpu", "cores": 2, "memory_gib": 1, "python": "3", "git": "abc"},
        "versions": {"slimembed": "0.1.0"},
        "config": {
            "threads": 2,
            "reps": 3,
            "sources": ["sts"],
            "n_texts": 100,
            "batch_sizes": [32],
            "latency_calls": 10,
            "probe_reps": 1,
            "probe_batch_size": 32,
        },
        "records": records,
        "notes": ["m: model2vec skipped: no model2vec form of this model"],
    }


def test_report_speedups_are_pairwise() -> None:
    lines = report.speedups(_report()["records"])  # type: ignore[arg-type]
    assert lines == ["m, sts, batch 32: slimembed fp32 vs fastembed 2.50x (2.00-3.00)"]


def test_report_tables_and_files(tmp_path: Path) -> None:
    rep = _report()
    text = report.terminal(rep)
    assert "slimembed fp32" in text
    assert "fastembed" in text
    assert "model2vec skipped" in text
    paths = report.write(rep, tmp_path)
    assert json.loads(paths["json"].read_text())["records"][1]["engine"] == "slimembed fp32"
    md = paths["markdown"].read_text()
    assert "| slimembed fp32 | 100 |" in md
    if "plots skipped" not in md:
        assert (tmp_path / "throughput-m.png").stat().st_size > 1000
