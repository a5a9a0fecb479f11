"""ONNX Runtime sessions: choosing providers and checking a graph against its manifest.

A CUDA request is honoured or refused, never quietly served on CPU: ONNX Runtime itself falls
back to CPU when the CUDA provider is listed but cannot start, so the providers the session
really got are checked after it is created.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from slimembed import _core, env
from slimembed.errors import ModelFileError, ProviderError
from slimembed.manifest import PAST, POOLED, Manifest, model_file

# ONNX tensor types a KV cache's inputs may have, as ONNX Runtime names them.
PAST_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# ONNX tensor types an output may have: float16 (Transformers.js' model_fp16.onnx) is cast to
# float32 by the runner, so the kernels still see float32.
OUTPUT_TYPES = ("tensor(float)", "tensor(float16)")
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# An execution provider as ONNX Runtime takes it: a name, or a name and its options.
Provider = str | tuple[str, dict[str, Any]]
# onnxruntime's own exception types for a graph it cannot read.
_LOAD_ERRORS: tuple[type[BaseException], ...] = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("Fail", "InvalidGraph", "InvalidProtobuf", "NoSuchFile", "InvalidArgument")
    if hasattr(ort.capi.onnxruntime_pybind11_state, name)
)
# ONNX Runtime's CPU SkipLayerNormalization is a scalar loop: on CPU, Add then
# LayerNormalization measured 10-20% faster for whole MiniLM graphs (FP32 and INT8, 2 threads;
# benchmarks/RESULTS.md "INT8 and FP16"), so that fusion is left out of CPU-only sessions.
_CPU_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
# On x86 without VNNI, ONNX Runtime's u8 x s8 integer GEMM adds pairs of products into a
# saturating int16 and gets large ones wrong (slimembed._core.int8_gemm_saturates): there INT8
# sessions take its exact u8 x u8 kernels instead (the weights are converted when the session
# is made). On all-MiniLM-L6-v2 the saturating kernel moved mean cosine to FP32 from 0.9992 to
# 0.9968 (benchmarks/RESULTS.md, "INT8 on a CPU without VNNI").
_EXACT_INT8_GEMM = ("session.x64quantprecision", "1")


def int8_kernel() -> str:
    """In words, the integer GEMM an INT8 graph's MatMulIntegerToFloat runs on in this CPU's
    sessions (``slimembed info`` prints it)."""
    if _core.int8_gemm_saturates():
        return (
            "uint8 x uint8, exact (session.x64quantprecision: the int8 weights are converted "
            "when the session is made); this x86 CPU has no AVX-512 VNNI or AVX-VNNI, where "
            "ONNX Runtime's uint8 x int8 GEMM saturates its int16 pair sums"
        )
    return "uint8 x int8, ONNX Runtime's default (int32 sums, exact on this CPU)"


def provider_name(provider: Provider) -> str:
    """The name of a provider given as a name or as ``(name, options)``; TypeError otherwise."""
    if isinstance(provider, str):
        return provider
    if (
        isinstance(provider, tuple)
        and len(provider) == 2
        and isinstance(provider[0], str)
        and isinstance(provider[1], dict)
    ):
        return provider[0]
    raise TypeError(
        f"a provider is a name or a (name, options dict) pair, as ONNX Runtime takes them; "
        f"got {provider!r}"
    )


def choose_providers(
    providers: Sequence[Provider] | None = None,
    cuda: bool = False,
    device_id: int = 0,
) -> list[Provider]:
    """The provider list for a session: ``cuda=True`` means CUDA first, then CPU. Providers
    may carry their options (``("CUDAExecutionProvider", {"device_id": "1"})``); CUDA gets
    ``device_id`` unless its options name one.

    Raises ProviderError when a provider is asked for that this onnxruntime build lacks.
    """
    chosen: list[Provider] = list(providers) if providers else ([CUDA, CPU] if cuda else [CPU])
    names = [provider_name(p) for p in chosen]
    if cuda and CUDA not in names:
        chosen.insert(0, CUDA)
        names.insert(0, CUDA)
    available = ort.get_available_providers()
    missing = [n for n in names if n not in available]
    if missing:
        hint = " Install onnxruntime-gpu in place of onnxruntime." if CUDA in missing else ""
        raise ProviderError(
            f"execution provider(s) {missing} requested but this onnxruntime offers only "
            f"{available}.{hint}"
        )
    out: list[Provider] = []
    for provider, name in zip(chosen, names, strict=True):
        if name == CUDA:
            options = {} if isinstance(provider, str) else dict(provider[1])
            out.append((CUDA, {"device_id": str(device_id), **options}))
        else:
            out.append(provider)
    return out


def cuda_available() -> bool:
    """Whether this onnxruntime build offers the CUDA provider (fastembed's ``Device.AUTO``
    picks CUDA then)."""
    return CUDA in ort.get_available_providers()


def choose_precision(
    manifest: Manifest,
    precision: str | None = None,
    providers: Sequence[Provider] | None = None,
    cuda: bool = False,
) -> tuple[str, str | None]:
    """The precision to run and its graph file: as asked, else INT8 on CPU and FP16 on CUDA
    where the directory holds them, else the main graph.

    Raises ValueError for a precision the directory does not hold.
    """
    graphs = {manifest.precision: manifest.graph_file}
    graphs.update({name: v.graph_file for name, v in manifest.variants.items()})
    if precision is None:
        on_cuda = cuda or CUDA in [provider_name(p) for p in providers or ()]
        preferred = "fp16" if on_cuda else "int8"
        precision = preferred if preferred in graphs else manifest.precision
    if precision not in graphs:
        raise ValueError(
            f"precision {precision!r} is not in this model directory (it holds "
            f"{sorted(graphs)}); export it with `slimembed export ... --precision {precision}`"
        )
    return precision, graphs[precision]


def create_session(
    model_dir: Path,
    manifest: Manifest,
    providers: Sequence[Provider] | None = None,
    cuda: bool = False,
    device_id: int = 0,
    threads: int | None = None,
    graph_file: str | None = None,
) -> ort.InferenceSession:
    """Load the manifest's graph (or ``graph_file``, one of its variants) with the chosen
    providers and check it keeps the contract."""
    graph_file = graph_file or manifest.graph_file
    if graph_file is None:
        raise ModelFileError(f"{model_dir}: the manifest names no graph file")
    path = model_file(model_dir, graph_file, "graph_file")
    if not path.is_file():
        raise ModelFileError(f"{path} not found: the manifest names it as the model graph")
    chosen = choose_providers(providers, cuda, device_id)
    loadable = _beside_its_data(model_dir, graph_file)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    names = [provider_name(p) for p in chosen]
    cpu_only = all(name == CPU for name in names)
    if CPU in names and _core.int8_gemm_saturates():
        options.add_session_config_entry(*_EXACT_INT8_GEMM)
    try:
        session = ort.InferenceSession(
            str(loadable),
            sess_options=options,
            providers=chosen,
            disabled_optimizers=_CPU_DISABLED_OPTIMIZERS if cpu_only else None,
        )
    except _LOAD_ERRORS as err:
        raise ModelFileError(f"{path} is not a loadable ONNX graph: {err}") from err
    wanted = set(names)
    lost = wanted - set(session.get_providers())
    if lost:
        raise ProviderError(
            f"onnxruntime could not start {sorted(lost)} for {path} (it got "
            f"{session.get_providers()}); check the CUDA and cuDNN libraries onnxruntime-gpu needs"
        )
    check_graph(session, manifest, path)
    return session


def _beside_its_data(model_dir: Path, graph_file: str) -> Path:
    """The graph, or where it and its external data (``<graph>.data``) sit together as real
    files.

    ONNX Runtime refuses external data that resolves outside the graph's directory, and the
    Hugging Face cache stores each file of a snapshot as a symlink into a shared ``blobs/``
    folder under a hash name. Such a graph gets a folder of its own under the cache (readable
    by its owner only), holding hard links to the two files under their own names, or copies
    with the files' own permissions where links cannot be made (another file system); it is
    made once per pair of files. The data file must resolve inside the model directory or its
    snapshot's ``blobs/`` as the graph must, so no other file is ever linked or copied.
    """
    path = model_dir / graph_file
    data = path.with_name(path.name + ".data")
    if not (path.is_symlink() or data.is_symlink()) or not data.is_file():
        return path
    model_file(model_dir, f"{graph_file}.data", "the graph's external data")
    graph_real, data_real = path.resolve(), data.resolve()
    if graph_real.parent == data_real.parent and data_real.name == data.name:
        return graph_real  # the links lead to a folder that keeps both together
    key = hashlib.sha256(f"{graph_real}\0{data_real}".encode()).hexdigest()[:24]
    linked = env.cache_dir() / "linked"
    folder = linked / key
    target = folder / path.name
    if target.is_file() and (folder / data.name).is_file():
        return target
    linked.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.", suffix=".partial", dir=linked))
    try:
        for real, name in ((graph_real, path.name), (data_real, data.name)):
            try:
                os.link(real, staging / name)
            except OSError:
                shutil.copy2(real, staging / name)
        staging.rename(folder)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_file():  # not made by another process first
            raise
    return target


def check_graph(session: ort.InferenceSession, manifest: Manifest, path: Path) -> None:
    """The graph takes the manifest's int64 inputs and gives a float32 or float16 (batch, seq,
    dim) output (an embedder; (batch, dim) where the graph pools) or (batch, targets)
    log-probabilities (a reranker)."""
    inputs = {i.name: i for i in session.get_inputs()}
    past = {name for name in inputs if name.startswith(PAST + ".")}
    declared = set(inputs) - past | ({PAST} if past else set())
    if declared != set(manifest.graph_inputs):
        raise ModelFileError(
            f"{path}: graph inputs {sorted(inputs)} differ from the manifest's "
            f"{sorted(manifest.graph_inputs)}"
        )
    for name, meta in inputs.items():
        if name in past and meta.type not in PAST_DTYPES:
            raise ModelFileError(
                f"{path}: input {name!r} is {meta.type}; a KV cache of float or float16 is "
                "supported"
            )
        if name not in past and meta.type != "tensor(int64)":
            raise ModelFileError(f"{path}: input {name!r} is {meta.type}, the contract says int64")
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get(manifest.graph_output)
    if out is None:
        raise ModelFileError(
            f"{path}: no output {manifest.graph_output!r} (outputs: {sorted(outputs)})"
        )
    if manifest.task == "rerank":
        rank, shape = 2, "(batch, targets)"
    elif manifest.pooling == POOLED:
        rank, shape = 2, "(batch, dim)"
    else:
        rank, shape = 3, "(batch, seq, dim)"
    if out.type not in OUTPUT_TYPES or len(out.shape) != rank:
        raise ModelFileError(
            f"{path}: output {out.name!r} is {out.type} of rank {len(out.shape)}; the contract "
            f"says float32 or float16 {shape}"
        )
    width = out.shape[-1] if manifest.task == "embed" else None
    if isinstance(width, int) and width != manifest.dim:
        raise ModelFileError(f"{path}: output dim {width} but the manifest says {manifest.dim}")
