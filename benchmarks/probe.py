"""One engine in a fresh process: cold start (import, load, first vector) and peak memory.

    python -m benchmarks.probe SPEC_JSON TEXTS_JSON BATCH_SIZE

prints one JSON line. The parent notes the wall clock before starting the process, so the
cold start it reports covers interpreter start-up too: what a serverless function pays on its
first request (with the files already in the page cache).
"""

from __future__ import annotations

import importlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.engines import ENGINES, EngineSpec, configure_threads, load


def _run(spec: EngineSpec, texts: list[str], batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    for module in ENGINES[spec.engine].modules:
        importlib.import_module(module)
    imported = time.perf_counter()
    engine = load(spec)
    loaded = time.perf_counter()
    engine.encode(texts[:1], 1)
    first = time.perf_counter()
    first_wall = time.time()
    engine.encode(texts, batch_size)
    done = time.perf_counter()
    return {
        "import_s": imported - started,
        "load_s": loaded - imported,
        "first_vector_s": first - loaded,
        "first_vector_wall": first_wall,
        "workload_s": done - first,
        "peak_rss_mib": peak_rss_mib(),
    }


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's VmHWM starts afresh at exec, whereas
    ru_maxrss keeps the peak of the parent that forked it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    # macOS reports ru_maxrss in bytes, other systems in KiB.
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def run_probe(
    spec: EngineSpec, texts_file: Path, batch_size: int, timeout: float = 600
) -> dict[str, Any]:
    """Run the probe for ``spec`` in a fresh interpreter and return its figures, with
    ``cold_start_s``: from before the process started to the first vector."""
    configure_threads(spec.threads)
    root = Path(__file__).resolve().parents[1]
    start = time.time()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.probe",
            spec.to_json(),
            str(texts_file),
            str(batch_size),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{spec.label} probe failed:\n{result.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    report["cold_start_s"] = report.pop("first_vector_wall") - start
    return report


def main() -> None:
    spec = EngineSpec.from_json(sys.argv[1])
    texts = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
    print(json.dumps(_run(spec, texts, int(sys.argv[3]))))


if __name__ == "__main__":
    main()
