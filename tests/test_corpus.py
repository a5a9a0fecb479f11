"""``slimembed embed --input CORPUS --output VECTORS``: every input and output format, ids kept,
bad rows reported or skipped and listed, an existing output kept without --overwrite, and a
run killed at a random point then rerun giving exactly the rows of an uninterrupted run.

All on the embedded static default model (offline; its vectors do not depend on the batch,
so the file command's vectors equal one ``encode`` call's bit for bit). The kill test runs
the real command in a subprocess; every wait in it is bounded.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from benchmarks.datasets import all_texts
from slimembed import TextEmbedding, cli

pa = pytest.importorskip("pyarrow", reason="the corpus tests read Parquet")
import pyarrow.parquet as pq  # noqa: E402

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def model() -> TextEmbedding:
    return TextEmbedding()


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli.main, ["embed", *args])


def write_corpus(path: Path, texts: list[Any], ids: list[Any] | None = None) -> Path:
    """``texts`` (and ``ids`` under "id") as a .txt, .jsonl or .parquet corpus."""
    if path.suffix == ".txt":
        path.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    elif path.suffix == ".jsonl":
        rows = [{"text": t} | ({} if ids is None else {"id": ids[i]}) for i, t in enumerate(texts)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        table = {"text": texts} | ({} if ids is None else {"id": ids})
        # Small row groups, so that reading crosses their boundaries within a shard.
        pq.write_table(pa.table(table), path, row_group_size=37)
    return path


def read_vectors(path: Path) -> tuple[list[Any], np.ndarray]:
    """(ids, vectors) of a .parquet output (ids: its first column), or (None, vectors)."""
    if path.suffix == ".npy":
        return [], np.load(path)
    table = pq.read_table(path)
    width = table.schema.field("embedding").type.list_size
    flat = table.column("embedding").combine_chunks().flatten()
    vectors = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, width)
    return table.column(0).to_pylist(), vectors


def texts_for(n: int) -> list[str]:
    """``n`` real texts of shared/data (single-line: a .txt corpus holds a text per line)."""
    pool = [" ".join(text.split()) for text in all_texts()]
    return [pool[i % len(pool)] for i in range(n)]


@pytest.mark.parametrize("source", [".txt", ".jsonl", ".parquet"])
@pytest.mark.parametrize("target", [".npy", ".parquet"])
def test_each_format_gives_the_vectors_of_encode(
    source: str, target: str, model: TextEmbedding, tmp_path: Path
) -> None:
    texts = texts_for(1000)
    corpus = write_corpus(tmp_path / f"corpus{source}", texts)
    output = tmp_path / f"vectors{target}"
    result = invoke("--input", str(corpus), "--output", str(output), "--shard-size", "300")
    assert result.exit_code == 0, result.output
    assert "wrote 1000 vectors of 1000 rows" in result.output
    ids, vectors = read_vectors(output)
    np.testing.assert_array_equal(vectors, model.encode(texts))
    if target == ".parquet":
        assert ids == list(range(1000))  # the row numbers, under "row"
        assert pq.read_schema(output).names == ["row", "embedding"]
    assert not (tmp_path / f"vectors{target}.parts").exists()


def test_ids_prompts_and_dims_are_kept(model: TextEmbedding, tmp_path: Path) -> None:
    texts = texts_for(500)
    ids = [f"doc-{i}" for i in range(500)]
    corpus = write_corpus(tmp_path / "corpus.parquet", texts, ids)
    output = tmp_path / "vectors.parquet"
    args = ["--id-column", "id", "--query", "--dim", "64", "--shard-size", "128"]
    result = invoke("--input", str(corpus), "--output", str(output), *args)
    assert result.exit_code == 0, result.output
    got_ids, vectors = read_vectors(output)
    assert got_ids == ids
    assert pq.read_schema(output).names == ["id", "embedding"]
    np.testing.assert_array_equal(vectors, model.encode(texts, prompt="query", dim=64))


@pytest.mark.parametrize("source", [".jsonl", ".parquet"])
def test_bad_rows_stop_the_run_naming_the_row_and_id(source: str, tmp_path: Path) -> None:
    texts: list[Any] = texts_for(50)
    texts[17] = None
    corpus = write_corpus(tmp_path / f"corpus{source}", texts, [f"d{i}" for i in range(50)])
    output = tmp_path / "vectors.parquet"
    result = invoke("--input", str(corpus), "--output", str(output), "--id-column", "id")
    assert result.exit_code != 0
    assert "row 17 (id 'd17')" in result.output
    assert "null" in result.output
    assert "--skip-bad-rows" in result.output
    assert not output.exists()


def test_skipped_bad_rows_are_listed(model: TextEmbedding, tmp_path: Path) -> None:
    texts: list[Any] = texts_for(60)
    bad = {5: None, 33: 42, 59: ["a", "list"]}
    for row, value in bad.items():
        texts[row] = value
    corpus = write_corpus(tmp_path / "corpus.jsonl", texts, [f"d{i}" for i in range(60)])
    output = tmp_path / "vectors.parquet"
    args = ["--id-column", "id", "--skip-bad-rows", "--shard-size", "20"]
    result = invoke("--input", str(corpus), "--output", str(output), *args)
    assert result.exit_code == 0, result.output
    assert "skipped 3 rows" in result.output
    for row in bad:
        assert f"row {row} (id 'd{row}')" in result.output
    listing = (tmp_path / "vectors.parquet.skipped.jsonl").read_text().splitlines()
    listed = [json.loads(line) for line in listing]
    assert [(item["row"], item["id"]) for item in listed] == [(r, f"d{r}") for r in bad]
    ids, vectors = read_vectors(output)
    good = [i for i in range(60) if i not in bad]
    assert ids == [f"d{i}" for i in good]
    np.testing.assert_array_equal(vectors, model.encode([texts[i] for i in good]))


def test_an_existing_output_needs_overwrite(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", texts_for(10))
    output = tmp_path / "vectors.npy"
    np.save(output, np.ones(3))
    result = invoke("--input", str(corpus), "--output", str(output))
    assert result.exit_code != 0
    assert "--overwrite" in result.output
    np.testing.assert_array_equal(np.load(output), np.ones(3))
    result = invoke("--input", str(corpus), "--output", str(output), "--overwrite")
    assert result.exit_code == 0, result.output
    assert np.load(output).shape == (10, 256)


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus.txt", texts_for(10))
    cases = {
        ("--output", str(tmp_path / "v.csv")): ".parquet or .npy",
        ("--output", str(tmp_path / "v.npy"), "--id-column", "id"): "write .parquet",
        (): "--input needs --output",
        ("--output", str(tmp_path / "v.npy"), "hello"): "no TEXTS",
    }
    for args, message in cases.items():
        result = invoke("--input", str(corpus), *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
    jsonl = write_corpus(tmp_path / "c.parquet", texts_for(10))
    result = invoke("--input", str(jsonl), "--output", str(tmp_path / "v.npy"), "--column", "body")
    assert result.exit_code != 0
    assert "no column 'body'" in result.output


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    """Parts left by an interrupted job are never mixed with another job's."""
    corpus = write_corpus(tmp_path / "corpus.txt", texts_for(100))
    output = tmp_path / "vectors.npy"
    parts = tmp_path / "vectors.npy.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"dim": 32}))
    result = invoke("--input", str(corpus), "--output", str(output))
    assert result.exit_code != 0
    assert "another job" in result.output
    assert "dim: 32 then, None now" in result.output
    result = invoke("--input", str(corpus), "--output", str(output), "--overwrite")
    assert result.exit_code == 0, result.output


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_killed_then_rerun_gives_the_rows_of_an_uninterrupted_run(
    how: signal.Signals, tmp_path: Path
) -> None:
    n, shard = 60_000, 2_000
    texts = texts_for(n)
    corpus = write_corpus(tmp_path / "corpus.parquet", texts, [f"id{i}" for i in range(n)])
    complete = tmp_path / "complete.parquet"
    args = ["--id-column", "id", "--shard-size", str(shard)]
    assert invoke("--input", str(corpus), "--output", str(complete), *args).exit_code == 0

    output = tmp_path / "vectors.parquet"
    parts = tmp_path / "vectors.parquet.parts"
    command = [sys.executable, "-m", "slimembed", "embed", "--input", str(corpus)]
    command += ["--output", str(output), *args]
    log = tmp_path / "log.txt"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not list(parts.glob("000001.json")):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no shard after {DEADLINE_S} s"
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.2))  # somewhere in a later shard, or between files
        process.send_signal(how)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait(timeout=30)
    assert not output.exists(), "the run was killed before its end"
    shards_done = len(list(parts.glob("0*.json")))
    assert 1 <= shards_done < n // shard

    result = invoke("--input", str(corpus), "--output", str(output), *args)
    assert result.exit_code == 0, result.output
    assert "shards resumed" in result.output
    got_ids, got = read_vectors(output)
    want_ids, want = read_vectors(complete)
    assert got_ids == want_ids
    np.testing.assert_array_equal(got, want)
    assert not parts.exists()


@pytest.mark.parametrize("target", [".npy", ".parquet"])
def test_an_empty_corpus_gives_an_empty_output_of_the_models_width(
    target: str, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"")
    output = tmp_path / f"vectors{target}"
    result = invoke("--input", str(corpus), "--output", str(output))
    assert result.exit_code == 0, result.output
    assert read_vectors(output)[1].shape == (0, 256)
