"""Corpus throughput: one process, the file command, and Ray Data with 1 and 2 actors.

    python -m benchmarks.corpus --texts 20000 --reps 3 --out benchmarks/results/corpus.json

On the same texts (the first N of shared/data, repeated when N is larger) and the same cores,
for the static default and all-MiniLM-L6-v2 INT8 (real weights, exported into the bench
cache): texts/s of

- ``encode``: one process, ``TextEmbedding.encode`` on the whole list (the baseline);
- ``file``: ``slimembed.corpus.run`` from a Parquet corpus to a Parquet output (what
  ``slimembed embed --input`` runs), shards, the final assembly and the reading included;
- ``ray-1``, ``ray-2``: ``embed_dataset`` on a local Ray cluster over the same texts held in
  the object store, 1 actor with all cores, or 2 actors with one core each, to completion.

Runs are interleaved (A B C D, A B C D, ...) after one warm-up each; a ratio is the median of
the per-round ratios against ``encode``. The local cluster starts once, outside the timings; an
actor pool starts in each ``ray-*`` run, so its model loads are inside, as a job pays them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import timing
from benchmarks.datasets import all_texts
from slimembed import TextEmbedding, corpus, env

BATCH = 256


def texts(n: int) -> list[str]:
    pool = all_texts()
    return [pool[i % len(pool)] for i in range(n)]


def engines(
    model_dir: str | None, items: list[str], work: Path, cores: int
) -> dict[str, Callable[[], Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from slimembed.integrations.ray import embed_dataset

    model = TextEmbedding(model_dir, threads=cores)
    source = work / "corpus.parquet"
    pq.write_table(pa.table({"id": list(range(len(items))), "text": items}), source)
    table = pa.table({"id": list(range(len(items))), "text": items})
    # Blocks of 1,000 texts, as a read of the Parquet file in row groups would give.
    blocks = [table.slice(start, 1000) for start in range(0, len(items), 1000)]
    ds = ray.data.from_arrow(blocks).materialize()

    def encode() -> None:
        model.encode(items, BATCH)

    def file() -> None:
        output = work / "vectors.parquet"
        output.unlink(missing_ok=True)
        corpus.run(model, str(model_dir), source, output, batch_size=BATCH, progress=False)

    def on_ray(actors: int) -> Callable[[], None]:
        def run() -> None:
            out = embed_dataset(
                ds, model_dir, actors=actors, num_cpus=cores // actors, batch_size=BATCH
            )
            rows = out.count()
            assert rows == len(items), rows

        return run

    return {"encode": encode, "file": file, "ray-1": on_ray(1), "ray-2": on_ray(2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--model", action="append", default=None, help="default, minilm-int8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ray

    from benchmarks import models as bench_models

    cores = 2
    items = texts(args.texts)
    chosen = args.model or ["default", "minilm-int8"]
    ray.init(
        num_cpus=cores, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    report: dict[str, Any] = {"machine": timing.machine(), "texts": len(items), "runs": {}}
    try:
        for name in chosen:
            if name == "default":
                model_dir = None
            else:
                minilm = bench_models.minilm(env.cache_dir() / "bench", ("int8",))
                model_dir = str(minilm.slimembed["int8"])
            with tempfile.TemporaryDirectory() as work:
                fns = engines(model_dir, items, Path(work), cores)
                started = time.perf_counter()
                times = timing.interleaved(fns, args.reps)
                wall = time.perf_counter() - started
            result = {
                "texts_per_s": {k: timing.summary(v, len(items)) for k, v in times.items()},
                "vs_encode": timing.ratios_vs(times, "encode"),
                "seconds": times,
                "wall_s": wall,
            }
            report["runs"][name] = result
            print(
                name,
                json.dumps({k: round(v["median"], 1) for k, v in result["texts_per_s"].items()}),
            )
            print(
                name,
                "vs encode",
                json.dumps({k: round(v["median"], 3) for k, v in result["vs_encode"].items()}),
            )
    finally:
        ray.shutdown()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
