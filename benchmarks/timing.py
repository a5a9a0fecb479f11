"""Side-by-side timing: warm-up, then repetitions interleaved between engines (A B A B ...)
so that drift of the machine hits every engine alike; ratios are taken pair by pair."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def interleaved(engines: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds per repetition for each engine, after one warm-up call each."""
    for fn in engines.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(reps):
        for name, fn in engines.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float], items: int) -> dict[str, float]:
    """Items per second: median, min and max over repetitions."""
    return {
        "median": items / statistics.median(times),
        "min": items / max(times),
        "max": items / min(times),
    }


def ratio(faster: list[float], slower: list[float]) -> dict[str, float]:
    """Speed-up of ``faster`` over ``slower``, median and range of the per-pair ratios."""
    pairs = [b / a for a, b in zip(faster, slower, strict=True)]
    return {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "git": revision,
    }
