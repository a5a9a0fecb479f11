"""Two slimembed builds side by side on the same models and texts, interleaved.

    python -m benchmarks.builds --before /tmp/before-site --model minilm:fp32 --model minilm:int8
        --model default --reranker /tmp/reranker

``--before`` is a folder holding another slimembed install (``pip install --target DIR
WHEEL``); the other build is the one this interpreter imports. Each build runs in a worker
process of its own that loads every model once; the parent asks the workers in turn (A B B A
...) to embed the same texts (or score the same pairs) and reports each build's texts/s and the
median of the per-pair ratios. Used to show that a refactor keeps speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from benchmarks.datasets import sts
from benchmarks.timing import machine

CHECKOUT = Path(__file__).resolve().parent.parent


def _texts(n: int) -> list[str]:
    """``n`` STS-B en-test sentences, the list repeated where ``n`` is larger."""
    pairs = sts("en-test")
    pool = pairs.sentences1 + pairs.sentences2
    return (pool * (n // len(pool) + 1))[:n]


def _worker(spec: dict[str, Any]) -> None:
    """Load the models, then answer each stdin line (a job index) with its seconds."""
    import slimembed
    from slimembed import TextCrossEncoder, TextEmbedding

    jobs = []
    for name, precision in spec["models"]:
        model = TextEmbedding(name or None, threads=spec["threads"], precision=precision)
        jobs.append(lambda m=model: m.encode(spec["texts"], batch_size=spec["batch_size"]))
    if spec["reranker"]:
        from benchmarks.rerank_speed import bench_pairs

        reranker = TextCrossEncoder(spec["reranker"], threads=spec["threads"])
        pairs = bench_pairs(spec["pairs"])
        jobs.append(lambda: list(reranker.rerank_pairs(pairs, batch_size=16)))
    for job in jobs:  # warm-up: sessions, piece cache, allocator
        job()
    print(json.dumps({"version": slimembed.__file__}), flush=True)
    for line in sys.stdin:
        job = jobs[int(line)]
        start = time.perf_counter()
        job()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


@click.command()
@click.option("--before", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--model", "models", multiple=True, help="DIR[:precision]; 'default' = embedded.")
@click.option("--reranker", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--n-texts", type=int, default=1000, show_default=True)
@click.option("--pairs", type=int, default=160, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--reps", type=int, default=5, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--worker", hidden=True, default=None)
def main(
    before: str,
    models: tuple[str, ...],
    reranker: str | None,
    n_texts: int,
    pairs: int,
    batch_size: int,
    threads: int,
    reps: int,
    out: Path | None,
    worker: str | None,
) -> None:
    if worker is not None:
        _worker(json.loads(Path(worker).read_text()))
        return
    parsed = []
    for item in models:
        name, _, precision = item.partition(":")
        parsed.append(("" if name == "default" else name, precision or None))
    spec = {
        "models": parsed,
        "reranker": reranker,
        "texts": _texts(n_texts),
        "pairs": pairs,
        "batch_size": batch_size,
        "threads": threads,
    }
    labels = [*models, *(["reranker"] if reranker else [])]
    # The spec (texts included) travels in a file: it may exceed the command line's limit.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec_file:
        json.dump(spec, spec_file)
    procs = {}
    for build, path in (("before", before), ("after", None)):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (path, str(CHECKOUT)) if p)
        cmd = [sys.executable, "-m", "benchmarks.builds", "--before", before]
        procs[build] = subprocess.Popen(
            [*cmd, "--worker", spec_file.name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=CHECKOUT,
        )
    versions = {b: json.loads(_line(p))["version"] for b, p in procs.items()}
    times: dict[str, dict[str, list[float]]] = {b: {label: [] for label in labels} for b in procs}
    for rep in range(reps):
        for index, label in enumerate(labels):
            # A B, then B A: neither build always runs second (after the other warmed the CPU).
            order = list(procs.items())
            for build, proc in order if rep % 2 == 0 else order[::-1]:
                assert proc.stdin is not None
                proc.stdin.write(f"{index}\n")
                proc.stdin.flush()
                times[build][label].append(json.loads(_line(proc))["seconds"])
    for proc in procs.values():
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
    os.unlink(spec_file.name)
    rows = {}
    for label in labels:
        units = pairs if label == "reranker" else n_texts
        b, a = times["before"][label], times["after"][label]
        ratios = sorted(x / y for x, y in zip(b, a, strict=True))
        rows[label] = {
            "before_per_s": units / sorted(b)[len(b) // 2],
            "after_per_s": units / sorted(a)[len(a) // 2],
            "after_over_before_median": ratios[len(ratios) // 2],
            "ratio_range": [ratios[0], ratios[-1]],
        }
        click.echo(
            f"{label:40} before {rows[label]['before_per_s']:9.1f}/s  after "
            f"{rows[label]['after_per_s']:9.1f}/s  after/before {ratios[len(ratios) // 2]:.3f} "
            f"({ratios[0]:.3f}-{ratios[-1]:.3f})"
        )
    report = {"machine": machine(), "builds": versions, "reps": reps, "results": rows}
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")


def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise click.ClickException("a worker stopped; run it alone to see its error")
    return line


if __name__ == "__main__":
    main()
