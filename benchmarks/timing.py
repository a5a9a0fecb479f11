"""Side-by-side timing: warm-up, then repetitions interleaved between engines (A B A B ...)
so that drift of the machine hits every engine alike; ratios are taken pair by pair."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def interleaved(
    engines: dict[str, Callable[[], Any]], reps: int, *, alternate: bool = False
) -> dict[str, list[float]]:
    """Seconds per repetition for each engine, after one warm-up call each. With
    ``alternate``, every other repetition runs the engines in reverse order (A B, B A, ...),
    so that what one engine leaves behind (ONNX Runtime's threads spinning on after a run)
    does not always fall on the same engine."""
    for fn in engines.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in engines}
    for rep in range(reps):
        order = list(engines.items())
        for name, fn in reversed(order) if alternate and rep % 2 else order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved_each(
    engines: dict[str, Callable[[T], Any]], items: Sequence[T], warmup: int = 3
) -> dict[str, list[float]]:
    """Seconds per call for each engine on each item in turn (item 1: A B, item 2: A B, ...),
    after ``warmup`` untimed calls each: the per-call latency distribution."""
    for fn in engines.values():
        for item in items[:warmup]:
            fn(item)
    times: dict[str, list[float]] = {name: [] for name in engines}
    for item in items:
        for name, fn in engines.items():
            start = time.perf_counter()
            fn(item)
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


def ratios_vs(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Speed-up of every engine over ``baseline`` (above 1: faster than the baseline), each
    from the per-pair ratios of repetitions that ran side by side."""
    return {name: ratio(t, times[baseline]) for name, t in times.items()}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be between 0 and 100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency(times: Sequence[float]) -> dict[str, float]:
    """Milliseconds per call: p50, p95, p99, mean, min and max."""
    ms = [t * 1000 for t in times]
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": statistics.fmean(ms),
        "min": min(ms),
        "max": max(ms),
    }


def versions(distributions: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None where it is not installed)."""
    found: dict[str, str | None] = {}
    for name in distributions:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# CPU flags that change which ONNX Runtime kernels run (INT8 above all): recorded with every
# speed figure, since this project's machines differ from one session to the next.
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        revision = "unknown"
    return {
        "cpu": cpu,
        "cpu_flags": [f for f in SIMD_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "system": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "git": revision,
    }
