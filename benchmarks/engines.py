"""One small adapter per engine: load a model folder, then encode a list of texts to a
``(n, dim)`` float32 array with a given batch size and thread count.

An :class:`EngineSpec` names the engine and the folder it loads in the form that engine reads
(a slimembed model directory, a sentence-transformers folder, an ONNX folder for fastembed, a
model2vec folder). It is plain data, so a fresh process can rebuild the same engine from its
JSON (cold start and peak memory are measured that way, one process per engine).

Each library is imported inside its adapter: a missing one is reported by :func:`missing`
before anything is loaded, and the benchmark skips that engine with a note.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

Encoder = Callable[[list[str], int], np.ndarray]


@dataclass(frozen=True)
class EngineSpec:
    engine: str  # a key of ENGINES
    label: str  # the column name in reports, e.g. "slimembed int8"
    path: str  # the folder this engine loads
    threads: int
    # Same truncation for every engine of a model (None: none).
    max_length: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineSpec:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Engine:
    name: str  # its label
    engine: str
    path: str
    encode: Encoder


@dataclass(frozen=True)
class Adapter:
    modules: tuple[str, ...]  # import names that must be importable
    distribution: str  # whose dependency closure is the install footprint
    load: Callable[[EngineSpec], Encoder]


def _slimembed(spec: EngineSpec) -> Encoder:
    from slimembed import TextEmbedding

    model = TextEmbedding(spec.path, threads=spec.threads)
    return lambda texts, batch_size: model.encode(texts, batch_size=batch_size)


def _sentence_transformers(spec: EngineSpec) -> Encoder:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(spec.threads)
    kwargs: dict[str, Any] = {"device": "cpu"}
    backend = spec.options.get("backend")
    if backend:
        kwargs["backend"] = backend
    model = SentenceTransformer(spec.path, **kwargs)
    first = model[0]
    if type(first).__name__ == "StaticEmbedding":
        # Its max_seq_length is fixed at infinity: it truncates only through its tokenizer.
        if spec.max_length is None:
            first.tokenizer.no_truncation()
        else:
            first.tokenizer.enable_truncation(spec.max_length)
    elif spec.max_length is not None:
        model.max_seq_length = spec.max_length

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)

    return encode


def _fastembed(spec: EngineSpec) -> Encoder:
    from fastembed import TextEmbedding
    from fastembed.common.model_description import (
        DenseModelDescription,
        ModelSource,
        PoolingType,
    )

    opts = spec.options
    name = f"slimembed-bench/{opts['name']}"
    known = {m["model"].lower() for m in TextEmbedding.list_supported_models()}
    if opts["kind"] == "static":
        # fastembed 0.9 reads model2vec folders (StaticTextEmbedding) but offers no public
        # way to register one: the supported list is module data, extended here for the run.
        from fastembed.text import static_embedding

        if name.lower() not in known:
            static_embedding.supported_static_models.append(
                DenseModelDescription(
                    model=name,
                    dim=opts["dim"],
                    sources=ModelSource(hf=name),
                    model_file="model.safetensors",
                    description="a model2vec folder given to slimembed bench",
                    license="",
                    size_in_GB=0.0,
                )
            )
        model = TextEmbedding(name, specific_model_path=spec.path)
    else:
        if name.lower() not in known:
            TextEmbedding.add_custom_model(
                name,
                pooling={"mean": PoolingType.MEAN, "cls": PoolingType.CLS}[opts["pooling"]],
                normalization=opts["normalize"],
                sources=ModelSource(hf=name),
                dim=opts["dim"],
                model_file="model.onnx",
            )
        model = TextEmbedding(name, specific_model_path=spec.path, threads=spec.threads)

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        rows = list(model.embed(texts, batch_size=batch_size))
        return np.stack(rows).astype(np.float32, copy=False)

    return encode


def _model2vec(spec: EngineSpec) -> Encoder:
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(spec.path)

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        out = model.encode(
            texts, batch_size=batch_size, max_length=spec.max_length, use_multiprocessing=False
        )
        return np.asarray(out, dtype=np.float32)

    return encode


ENGINES: dict[str, Adapter] = {
    "slimembed": Adapter(("slimembed",), "slimembed", _slimembed),
    "sentence-transformers": Adapter(
        ("sentence_transformers", "torch"), "sentence-transformers", _sentence_transformers
    ),
    # sentence-transformers' ONNX backend runs through optimum-onnx.
    "sentence-transformers-onnx": Adapter(
        ("sentence_transformers", "optimum.onnxruntime"),
        "sentence-transformers",
        _sentence_transformers,
    ),
    "fastembed": Adapter(("fastembed",), "fastembed", _fastembed),
    "model2vec": Adapter(("model2vec",), "model2vec", _model2vec),
}


INSTALL = "pip install ./benchmarks from a slimembed checkout"
HINTS = {
    "fastembed": "pip install './benchmarks[fastembed]' from a slimembed checkout",
    "sentence-transformers-onnx": "pip install optimum-onnx; its 0.1.0 needs transformers < 4.58",
}


def missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here (a module not installed), or None when it can."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: one of {', '.join(ENGINES)}")
    for module in ENGINES[engine].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is absent
            found = False
        if not found:
            return f"{module} is not installed ({HINTS.get(engine, INSTALL)})"
    return None


def load(spec: EngineSpec) -> Engine:
    return Engine(spec.label, spec.engine, spec.path, ENGINES[spec.engine].load(spec))


def configure_threads(threads: int) -> None:
    """Pin the thread pools that libraries size from the environment (the Rust tokenizers'
    rayon pool, BLAS) before any of them starts; an explicit setting by the user wins."""
    for name in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    # tokenizers turns its parallelism off in a forked child; the engines here are not forked.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def folder_size(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
