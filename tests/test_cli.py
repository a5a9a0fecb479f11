"""The ``slimembed embed`` command: an output file exists only once it is complete, and bad
arguments or input get a one-line click error, never a traceback.

The signal tests run the real command (``python -m slimembed``) in a subprocess, because only
there do SIGTERM and SIGINT reach the process as they do from a shell or a job scheduler; every
wait in them is bounded and the child is killed in a ``finally``. The rest use click's
``CliRunner``. All run on the embedded static default model: offline, no download.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result

from slimembed import cli

LINES = 60_000
# The embedded static default model's width.
DIM = 256
# Poll for this long at most for the output to appear or grow, and wait this long at most for
# the process to exit after a signal.
DEADLINE_S = 60.0
EXIT_S = 30.0

signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "slimembed", "embed", *args]


def files_in(folder: Path) -> dict[str, int]:
    """Name -> size of every entry in ``folder`` (a file may vanish between listing and stat)."""
    sizes = {}
    for path in folder.iterdir():
        try:
            sizes[path.name] = path.stat().st_size
        except FileNotFoundError:
            continue
    return sizes


def wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    """Return once ``ready()``; fail if the process exits first or DEADLINE_S passes."""
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        if process.poll() is not None:
            pytest.fail(
                f"the command exited ({process.returncode}) before {what}:\n"
                + log.read_text(errors="replace")[-2000:]
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_S:.0f} s")
        time.sleep(0.02)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m slimembed embed ARGS`` (stderr to a log beside the output folder);
    whatever a test leaves running is killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"stderr-{len(started)}.txt").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            command(*args), stdin=stdin, stdout=subprocess.DEVNULL, stderr=log, cwd=tmp_path
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=EXIT_S)
            if process.stdin is not None:
                process.stdin.close()
        for log in logs:
            log.close()


@pytest.fixture
def many_texts(tmp_path: Path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text("".join(f"short text number {i}\n" for i in range(LINES)), encoding="utf-8")
    return path


@signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_jsonl_leaves_no_file(
    signum: signal.Signals,
    tmp_path: Path,
    many_texts: Path,
    running: Callable[..., subprocess.Popen[bytes]],
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "vectors.jsonl"
    process = running("-f", str(many_texts), "-o", str(target))

    # Some file in the folder (the temporary one; before the fix, the target itself) holds
    # more than a megabyte: the command is writing lines.
    def writing() -> bool:
        return any(size > 1 << 20 for size in files_in(folder).values())

    wait_until(writing, process, "output growing past 1 MB", tmp_path / "stderr-0.txt")
    process.send_signal(signum)
    returncode = process.wait(timeout=EXIT_S)

    assert returncode != 0
    assert files_in(folder) == {}, "a partial output or temporary file was left"


@signals
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupted_npy_keeps_the_older_output(
    signum: signal.Signals, tmp_path: Path, running: Callable[..., subprocess.Popen[bytes]]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "vectors.npy"
    np.save(target, np.arange(12, dtype=np.float32).reshape(3, 4))
    before = target.read_bytes()
    # Texts on stdin, which stays open: the command is mid-run for as long as the test wants.
    process = running("-o", str(target), stdin=subprocess.PIPE)
    assert process.stdin is not None
    process.stdin.write(b"".join(b"text %d\n" % i for i in range(1000)))
    process.stdin.flush()

    def started() -> bool:
        return set(files_in(folder)) != {target.name}

    wait_until(started, process, "temporary output file", tmp_path / "stderr-0.txt")
    process.send_signal(signum)
    returncode = process.wait(timeout=EXIT_S)

    assert returncode != 0
    assert set(files_in(folder)) == {target.name}, "a temporary file was left"
    assert target.read_bytes() == before


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_complete_jsonl_run(tmp_path: Path) -> None:
    target = tmp_path / "vectors.jsonl"
    target.write_text("an older output\n", encoding="utf-8")
    handler = signal.getsignal(signal.SIGTERM)

    result = CliRunner().invoke(cli.main, ["embed", "a", "b", "café", "-o", str(target)])

    assert result.exit_code == 0, result.output
    assert "wrote 3 JSON lines" in result.output
    rows = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == ["a", "b", "café"]
    assert all(len(row["embedding"]) == DIM for row in rows)
    assert os.listdir(tmp_path) == [target.name]
    if sys.platform != "win32":
        # Made with the permissions a plain open() gives, not a temporary file's 0600.
        assert target.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert signal.getsignal(signal.SIGTERM) == handler


def test_complete_npy_run_replaces_the_older_output(tmp_path: Path, many_texts: Path) -> None:
    target = tmp_path / "out" / "vectors.npy"
    target.parent.mkdir()
    np.save(target, np.zeros((2, 3), dtype=np.float32))

    result = CliRunner().invoke(cli.main, ["embed", "-f", str(many_texts), "-o", str(target)])

    assert result.exit_code == 0, result.output
    vectors = np.load(target)
    assert vectors.shape == (LINES, DIM)
    assert vectors.dtype == np.float32
    assert os.listdir(target.parent) == [target.name]


class _FailingJson:
    """``json`` whose ``dumps`` raises KeyboardInterrupt at its third call."""

    def __init__(self) -> None:
        self.calls = 0

    def dumps(self, obj: Any) -> str:
        self.calls += 1
        if self.calls == 3:
            raise KeyboardInterrupt
        return json.dumps(obj)


def _failing_save(file: Any, array: Any) -> None:
    """``np.save`` that writes a little and then finds the disk full."""
    if hasattr(file, "write"):
        file.write(b"\x93NUMPY partial")
    else:
        Path(file).write_bytes(b"\x93NUMPY partial")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_failed_write_keeps_the_older_output(
    suffix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "json", _FailingJson())
    monkeypatch.setattr(cli.np, "save", _failing_save)
    target = tmp_path / f"vectors{suffix}"
    target.write_bytes(b"an older, complete output")

    result = CliRunner().invoke(cli.main, ["embed", "a", "b", "c", "d", "-o", str(target)])

    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    assert target.read_bytes() == b"an older, complete output"
    assert os.listdir(tmp_path) == [target.name]


def assert_clean_error(result: Result, *named: str) -> None:
    assert result.exit_code != 0
    # Exited through click's error path, not an exception escaping the command.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output
    assert "Error" in result.output, result.output
    for text in named:
        assert text in result.output, result.output


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--dim", "0"], ["--dim"]),
        (["--dim", "-3"], ["--dim"]),
        (["--dim", "100000"], ["dim", str(DIM)]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--threads", "0"], ["--threads"]),
    ],
)
def test_bad_numbers_are_click_errors(args: list[str], named: list[str]) -> None:
    assert_clean_error(CliRunner().invoke(cli.main, ["embed", "hello", *args]), *named)


@pytest.mark.parametrize("suffix", [".jsonl", ".npy"])
def test_output_into_a_missing_folder_is_a_click_error(suffix: str, tmp_path: Path) -> None:
    target = tmp_path / "missing" / f"vectors{suffix}"
    result = CliRunner().invoke(cli.main, ["embed", "hello", "-o", str(target)])
    assert_clean_error(result, "does not exist")
    assert not target.parent.exists()


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("first line\ncafé au lait\n".encode("latin-1"), "line 2"),
        (bytes(range(256)) * 4, "line 2"),
    ],
    ids=["latin-1", "binary"],
)
def test_input_file_not_utf8_is_a_click_error(content: bytes, where: str, tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes(content)
    result = CliRunner().invoke(cli.main, ["embed", "-f", str(path)])
    assert_clean_error(result, "texts.txt", "UTF-8", where)


def test_stdin_not_utf8_is_a_click_error() -> None:
    result = CliRunner().invoke(cli.main, ["embed"], input="ok\ncafé\n".encode("latin-1"))
    assert_clean_error(result, "stdin", "UTF-8", "line 2")


def test_a_real_run_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "texts.txt"
    path.write_bytes("café\n".encode("latin-1"))
    result = subprocess.run(
        command("-f", str(path)), capture_output=True, text=True, timeout=EXIT_S, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
