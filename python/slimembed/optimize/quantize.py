"""Quantized copies of an exported FP32 graph: INT8 for CPU, FP16 for CUDA.

INT8, the recipe that measured best (benchmarks/RESULTS.md, "INT8 and FP16"):
- every MatMul whose right side is a weight matrix gets int8 weights with one scale per output
  column, and uint8 activations with one scale **per token** (per row of the flattened
  ``(batch * seq, dim)`` input) computed in the graph from that row alone, so a text's vector
  never depends on what it is batched with. ONNX's DynamicQuantizeLinear (and ONNX Runtime's
  dynamic quantization) take one scale per tensor, i.e. per batch; the per-row form is spelled
  out: ReduceMax/ReduceMin -> scale -> per-axis QuantizeLinear -> MatMulIntegerToFloat (ONNX
  Runtime's fused integer GEMM, column scales applied on output) -> Mul by the row scales;
- the zero point is fixed per MatMul input (ONNX Runtime's integer GEMM takes a scalar one),
  set from the input's typical row range on calibration text; the scale still fits each row's
  own range, so nothing is ever clipped;
- SmoothQuant divides each input channel by ``max|x|^a / max|W|^(1-a)`` and multiplies the
  weights' rows by it, moving activation outliers into the weights; the strength ``a`` is
  searched per input on the calibration rows (0.3-0.8: the one whose simulated INT8 product
  moves least); for the
  attention output (a fused MultiHeadAttention's, slimembed.optimize.fusion) the division is
  folded into V's projection instead of a pass over the tensor;
- GELU outputs (the FFN down-projection's input, the most sensitive) are instead shifted by
  0.17 (GELU >= -0.16997) so every row starts at 0 and uses all 256 levels (its scale then
  needs only the row's maximum); the shift's product is folded into the bias;
- weights are rounded by GPTQ (error feedback weighted by the calibration inputs' Gram matrix,
  dampened) instead of to nearest: the worst short texts lose about a third less;
- calibration: 128 pseudo-sentences drawn from the tokenizer's own vocabulary (no data set);
- attention products (Q K^T, softmax V), norms, softmax and everything outside those MatMuls stay
  float32; the graph keeps int64 inputs and a float32 output.

FP16: onnxruntime's float16 converter with float32 inputs/outputs kept and norms, softmax,
reductions and the mask arithmetic on a block list (they stay float32).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from slimembed import TextEmbedding
from slimembed.backends import TransformerBackend
from slimembed.errors import QuantizeError
from slimembed.manifest import GraphVariant, Manifest
from slimembed.optimize.fidelity import PROBE_TEXTS, cosines
from slimembed.optimize.onnx_file import EXTERNAL_DATA_BYTES, load_into

PRECISION_FILES = {"int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
# A quantized graph whose vectors move with the batch they are in is broken, not imprecise
# (per-batch scales give 0.97 on MiniLM). Per-token INT8 is bit-identical on encoders, but on a
# 28-layer decoder with left padding FP32 attention's last-bit differences between paddings
# can flip a rounding: 0.9997 was measured on Qwen3-0.6B's shape with random weights.
MIN_BATCH_INVARIANCE = 0.999
CALIBRATION_TEXTS = 128
# Texts per calibration run: each run returns every MatMul input of its tokens at once.
CALIBRATION_BATCH = 4
# SmoothQuant's migration strengths, searched per input (quantize_int8(alpha=None)). One
# strength for all (0.5, best of 0.3-0.7 on all-MiniLM-L6-v2) gave probe mean/min cosine
# 0.99917/0.99635 there and 0.99839/0.99461 on SmolLM2-135M; searched, 0.99930/0.99745 and
# 0.99892/0.99789. Searching up to 0.95 did worse on SmolLM2 (0.99869/0.99725).
SMOOTH_ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# GPTQ's dampening (share of the Gram matrix's mean diagonal): 0.1 measured best on
# all-MiniLM-L6-v2's worst short texts (0.01-1 tried; 0.01 fits the calibration text too well).
GPTQ_DAMP = 0.1
# Blocked QuantizeLinear (one scale per token without reshaping) needs this opset.
BLOCKED_QUANTIZE_OPSET = 21
# A bound on -GELU(x) (its minimum is -0.16997).
GELU_SHIFT = 0.17
# FP16: ops that stay float32 (norms, softmax, reductions, positions and the mask guard).
FP16_KEEP_FP32 = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "CumSum",
    "Range",
    "IsNaN",
    "Where",
    "Cos",
    "Sin",
)


def _fidelity_texts() -> tuple[str, ...]:
    """64 texts of mixed length built from the export probe texts (never from evaluation
    data): each probe text, pairs of them, and the long one cut at several lengths."""
    probe = [t for t in PROBE_TEXTS if len(t) < 200]
    long_words = max(PROBE_TEXTS, key=len).split()
    texts = list(probe)
    texts += [f"{a} {b}" for a in probe for b in reversed(probe)][: 64 - len(probe) - 16]
    texts += [" ".join(long_words[: 8 + 12 * i]) for i in range(16)]
    return tuple(texts)


FIDELITY_TEXTS = _fidelity_texts()


def _weight_matmuls(graph: Any, inits: dict[str, Any]) -> list[Any]:
    return [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in inits
        and len(inits[node.input[1]].dims) == 2
    ]


def quantize_int8(
    source: Path,
    target: Path,
    keep_fp32: Collection[str] = (),
    stats: dict[str, Calibration] | None = None,
    alpha: float | None = None,
    gptq_damp: float | None = None,
    weight_bits: int = 8,
) -> dict[str, Any]:
    """Write ``target``: ``source`` with its weight MatMuls in INT8 (per-token activations,
    per-column weights), except the nodes named in ``keep_fp32``. Returns what was done.

    ``stats`` (input tensor name -> (max |x| per channel, sample rows) on calibration text)
    turns on SmoothQuant: the input is divided by ``s = max|x|^alpha / max|W|^(1 - alpha)`` per
    channel (one Mul, shared by the MatMuls reading it) and the weights' rows multiplied by
    ``s``; and sets each input's fixed zero point from its typical row range (128 without).
    ``alpha`` None searches the strength per input (``_smooth_alpha``).
    With ``gptq_damp`` its Gram matrices are divided by ``s`` in place: ``stats`` is spent.
    ``weight_bits`` 7 keeps every weight within +-63, where x86's u8 x s8 GEMM without VNNI
    cannot saturate its int16 pair sums (255 * 63 * 2 < 32767).
    """
    import onnx
    from onnx import helper, numpy_helper

    # Weights stay in the source's external data (a large decoder's) until each is quantized:
    # one weight matrix in memory at a time, not a second copy of all of them.
    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    matmuls = _weight_matmuls(graph, inits)
    consts: list[Any] = []
    named: set[str] = set()

    def const(name: str, array: np.ndarray) -> str:
        if name not in named:
            named.add(name)
            consts.append(numpy_helper.from_array(array, name))
        return name

    last_axis = const("q8_axes_last", np.array([-1], dtype=np.int64))
    one = const("q8_one", _f32(1.0))
    eps = const("q8_eps", np.array(1e-12, dtype=np.float32))

    if weight_bits not in (7, 8):
        raise QuantizeError(f"INT8 weights are 7 or 8 bits, not {weight_bits}")
    qmax = float(2 ** (weight_bits - 1) - 1)
    chosen = [n for n in matmuls if n.name not in keep_fp32]
    smoothed: dict[str, str] = {}
    smooth_nodes: dict[str, Any] = {}
    zero_points: dict[str, int] = {}
    weights = _Weights(inits, source.parent)
    # The Gram matrix of each weight's input as the quantized GEMM will see it (smoothed).
    grams = {
        n.input[1]: stats[n.input[0]].gram
        for n in chosen
        if gptq_damp is not None and stats is not None and n.input[0] in stats
    }
    producers = {o: n.op_type for n in graph.node for o in n.output}
    shifts: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for x in sorted({n.input[0] for n in chosen}):
        readers = [n for n in chosen if n.input[0] == x]
        if producers.get(x) == "Gelu":
            # GELU(x) >= -0.16997: shifted by GELU_SHIFT every row is >= 0 and takes all 256
            # levels from 0 up (zero point 0); the shift's product is taken off the bias.
            shifts[x] = GELU_SHIFT
            zero_points[x] = 0
            smoothed[x] = f"{x}_shifted"
            smooth_nodes[x] = helper.make_node(
                "Add", [x, const(f"{x}_shift", _f32(GELU_SHIFT))], [smoothed[x]]
            )
            continue
        if stats is None or x not in stats:
            continue
        top, rows, _ = stats[x]
        read = np.concatenate([weights[n.input[1]] for n in readers], axis=1)
        w_max = np.abs(read).max(axis=1)
        strength = _smooth_alpha(rows, top, read, w_max) if alpha is None else alpha
        alphas[x] = strength
        scale = _smooth_scale(top, w_max, strength)
        del read
        zero_points[x] = _zero_point(rows / scale)
        for n in readers:
            weights.scale_rows(n.input[1], scale)
        if any(n.input[1] in grams for n in readers):
            # The input's Gram matrix, shared by its readers, as the smoothed input's: divided
            # once, in place (a divided copy of each would briefly double the largest).
            gram = stats[x].gram
            gram /= scale[:, None]
            gram /= scale[None, :]
        if _fold_into_values(x, scale, graph, inits, chosen, weights, const):
            continue  # the division happened in V's projection already
        smoothed[x] = f"{x}_smoothed"
        inverse = const(f"{x}_smooth_inv", (1 / scale).astype(np.float32))
        smooth_nodes[x] = helper.make_node("Mul", [x, inverse], [smoothed[x]])

    replaced = []
    new_nodes: dict[str, list[Any]] = {}
    quantized_inputs: set[str] = set()
    done_weights: dict[str, tuple[str, str]] = {}
    for node in matmuls:
        if node.name in keep_fp32:
            continue
        x, wname = node.input
        z = zero_points.get(x, 128)
        x = smoothed.get(x, x)
        out = node.output[0]
        p = f"q8_{node.name}"
        if wname not in done_weights:
            w = weights[wname]
            wscale = np.maximum(np.abs(w).max(axis=0), 1e-12) / qmax
            if wname in grams:
                assert gptq_damp is not None
                wq = _gptq(w, grams[wname], wscale, gptq_damp, qmax)
            else:
                wq = np.clip(np.rint(w / wscale), -qmax, qmax).astype(np.int8)
            done_weights[wname] = (
                const(f"{wname}_q8", wq),
                const(f"{wname}_q8scale", wscale.astype(np.float32)),
            )
        wq_name, wscale_name = done_weights[wname]
        correction = None
        if node.input[0] in shifts:
            wdeq = numpy_helper.to_array(next(c for c in consts if c.name == wq_name)).astype(
                np.float64
            ) * numpy_helper.to_array(next(c for c in consts if c.name == wscale_name))
            correction = (shifts[node.input[0]] * wdeq.sum(axis=0)).astype(np.float32)
            bias_add = _bias_add(graph, out, inits)
            if bias_add is not None:  # folded into the bias the graph adds next
                add, slot = bias_add
                bias = np.array(weights.raw(add.input[slot]), dtype=np.float32)
                add.input[slot] = const(f"{p}_bias", bias - correction)
                correction = None
        k = inits[wname].dims[0]
        # The input's quantization is shared by every MatMul reading it (Q, K and V).
        qx = f"q8_in_{node.input[0]}"
        nodes = []
        if qx not in quantized_inputs:
            quantized_inputs.add(qx)
            if node.input[0] in smooth_nodes:
                nodes.append(smooth_nodes[node.input[0]])
            nodes += [
                helper.make_node("ReduceMax", [x, last_axis], [f"{qx}_max"], keepdims=1),
                # The smallest scale that fits the row's range around the fixed zero point.
                helper.make_node(
                    "Mul", [f"{qx}_max", const(f"{qx}_hi", _f32(1 / (255 - z)))], [f"{qx}_shi"]
                ),
            ]
            if z:
                nodes += [
                    helper.make_node("ReduceMin", [x, last_axis], [f"{qx}_min"], keepdims=1),
                    helper.make_node(
                        "Mul", [f"{qx}_min", const(f"{qx}_lo", _f32(-1 / z))], [f"{qx}_slo"]
                    ),
                    helper.make_node("Max", [f"{qx}_shi", f"{qx}_slo", eps], [f"{qx}_scale"]),
                    helper.make_node("Shape", [f"{qx}_scale"], [f"{qx}_rows"]),
                    helper.make_node(
                        "ConstantOfShape",
                        [f"{qx}_rows"],
                        [f"{qx}_zps"],
                        value=numpy_helper.from_array(np.array([z], dtype=np.uint8)),
                    ),
                ]
            else:
                # Zero point 0 (shifted GELU, never negative): the row's maximum alone sets
                # the scale, and QuantizeLinear's default zero point is uint8 0.
                nodes.append(helper.make_node("Max", [f"{qx}_shi", eps], [f"{qx}_scale"]))
            # One block spanning the last axis: a scale (and zero point) per token, on the
            # (batch, seq, dim) tensor as it is (blocked QuantizeLinear, opset 21).
            nodes.append(
                helper.make_node(
                    "QuantizeLinear",
                    [x, f"{qx}_scale", *([f"{qx}_zps"] if z else [])],
                    [f"{qx}_q"],
                    axis=-1,
                    block_size=k,
                )
            )
        y = f"{p}_y2" if correction is not None else out
        nodes += [
            # ONNX Runtime's fused integer GEMM with the column scales applied on output.
            helper.make_node(
                "MatMulIntegerToFloat",
                [f"{qx}_q", wq_name, one, wscale_name, const(f"{p}_zp", np.array(z, np.uint8))],
                [f"{p}_y1"],
                domain="com.microsoft",
            ),
            helper.make_node("Mul", [f"{p}_y1", f"{qx}_scale"], [y]),
            *(
                [helper.make_node("Sub", [y, const(f"{p}_unshift", correction)], [out])]
                if correction is not None
                else []
            ),
        ]
        new_nodes[node.name] = nodes
        replaced.append(node.name)

    rebuilt = []
    for node in graph.node:
        rebuilt.extend(new_nodes.get(node.name, [node]))
    del graph.node[:]
    graph.node.extend(rebuilt)
    if replaced and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and replaced:
            opset.version = max(opset.version, BLOCKED_QUANTIZE_OPSET)
    used = {i for node in graph.node for i in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    for tensor in kept:  # the target gets its own copy of what it keeps (the embeddings)
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            load_into(tensor, source.parent)
    del graph.initializer[:]
    graph.initializer.extend(kept + consts)
    _save(model, target)
    done: dict[str, Any] = {
        "int8_matmuls": len(replaced),
        "fp32_matmuls": len(matmuls) - len(replaced),
    }
    if alphas:
        done["smooth_alpha"] = {
            "median": float(np.median(list(alphas.values()))),
            "min": float(min(alphas.values())),
            "max": float(max(alphas.values())),
        }
    return done


def _smooth_scale(top: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant's per-channel divisor of an input: ``max|x|^a / max|W|^(1 - a)``."""
    scale = np.maximum(top, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
    clipped: np.ndarray = np.clip(scale, 1e-2, 1e2).astype(np.float32)
    return clipped


def _smooth_alpha(rows: np.ndarray, top: np.ndarray, w: np.ndarray, w_max: np.ndarray) -> float:
    """The SmoothQuant strength, of SMOOTH_ALPHAS, under which the INT8 product of the
    calibration ``rows`` with ``w`` (every reader's weights side by side; ``w_max`` its max |w|
    per row) moves least from the
    float product: activations quantized per row around their fixed zero point, weights per
    column to nearest, as the graph does (AWQ searches its scales this way)."""
    x = rows.astype(np.float32)
    exact = x @ w
    errors = []
    for alpha in SMOOTH_ALPHAS:
        scale = _smooth_scale(top, w_max, alpha)
        xs = x / scale
        z = _zero_point(xs)
        hi, lo = xs.max(axis=1, keepdims=True), xs.min(axis=1, keepdims=True)
        step = np.maximum(np.maximum(hi / (255 - z), -lo / z), 1e-12)
        xq = (np.clip(np.rint(xs / step) + z, 0, 255) - z) * step
        ws = w * scale[:, None]
        wstep = np.maximum(np.abs(ws).max(axis=0), 1e-12) / 127.0
        wq = np.clip(np.rint(ws / wstep), -127, 127) * wstep
        errors.append(float(np.linalg.norm(xq @ wq - exact)))
    return SMOOTH_ALPHAS[int(np.argmin(errors))]


class _Weights:
    """The weight matrices of a graph, read from its file (external data or not) when asked
    for, with the row and column scalings SmoothQuant gives them applied on the way."""

    def __init__(self, inits: dict[str, Any], base: Path) -> None:
        self.inits, self.base = inits, base
        self.rows: dict[str, np.ndarray] = {}
        self.columns: dict[str, np.ndarray] = {}

    def raw(self, name: str) -> np.ndarray:
        """The stored matrix (memory-mapped when it lives in external data)."""
        from onnx import TensorProto, helper, numpy_helper
        from onnx.external_data_helper import ExternalDataInfo

        tensor = self.inits[name]
        if tensor.data_location != TensorProto.EXTERNAL:
            return np.asarray(numpy_helper.to_array(tensor), dtype=np.float32)
        info = ExternalDataInfo(tensor)
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        return np.memmap(
            self.base / info.location, dtype, "r", int(info.offset or 0), tuple(tensor.dims)
        )

    def __getitem__(self, name: str) -> np.ndarray:
        w = np.array(self.raw(name), dtype=np.float32)
        if name in self.rows:
            w *= self.rows[name][:, None]
        if name in self.columns:
            w /= self.columns[name][None, :]
        return w

    def row_max(self, name: str) -> np.ndarray:
        """max |w| of each row, after the scalings so far."""
        top: np.ndarray = np.abs(self[name]).max(axis=1)
        return top

    def scale_rows(self, name: str, scale: np.ndarray) -> None:
        self.rows[name] = self.rows.get(name, 1.0) * scale

    def divide_columns(self, name: str, scale: np.ndarray) -> None:
        self.columns[name] = self.columns.get(name, 1.0) * scale


def _gptq(
    w: np.ndarray,
    gram: np.ndarray,
    wscale: np.ndarray,
    damp: float,
    qmax: float = 127.0,
    block: int = 128,
) -> np.ndarray:
    """int8 ``w`` (k, n) within +-``qmax`` on the column scales ``wscale``, rounded row by row
    with GPTQ's error feedback (Frantar et al. 2022): each row's rounding error is pushed onto
    the rows not yet rounded, weighted by the input's Gram matrix, so that ``x @ w`` moves
    least on inputs like the calibration ones. ``damp`` (a share of the mean diagonal added to
    it) pulls the result towards round-to-nearest, which generalises better to short texts
    than the calibration."""
    k = w.shape[0]
    work = w.astype(np.float64)
    h = gram.astype(np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    h = h + damp * float(np.mean(np.diag(h))) * np.eye(k)
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    q = np.zeros((k, w.shape[1]), dtype=np.int8)
    for b0 in range(0, k, block):
        b1 = min(b0 + block, k)
        errors = np.zeros((b1 - b0, w.shape[1]))
        for i in range(b0, b1):
            q[i] = np.clip(np.rint(work[i] / wscale), -qmax, qmax)
            error = (work[i] - q[i] * wscale) / upper[i, i]
            work[i + 1 : b1] -= np.outer(upper[i, i + 1 : b1], error)
            errors[i - b0] = error
        work[b1:] -= upper[b0:b1, b1:].T @ errors
    return q


def _fold_into_values(
    x: str,
    scale: np.ndarray,
    graph: Any,
    inits: dict[str, Any],
    chosen: list[Any],
    weights: _Weights,
    const: Any,
) -> bool:
    """Divide V's projection (weights and bias) by ``scale`` per channel when ``x`` is a
    MultiHeadAttention output whose V MatMul is quantized here: each output channel of
    attention is a weighted sum of the same channel of V, so this is SmoothQuant's division
    of ``x`` without a pass over it. Returns whether it did."""

    mha = next((n for n in graph.node if x in n.output), None)
    if mha is None or mha.op_type != "MultiHeadAttention" or len(mha.input) < 3:
        return False
    v_matmul = next((n for n in chosen if n.output[0] == mha.input[2]), None)
    if v_matmul is None or sum(mha.input[2] in n.input for n in graph.node) != 1:
        return False
    weights.divide_columns(v_matmul.input[1], scale)
    if len(mha.input) > 3 and mha.input[3]:
        bias = np.array(weights.raw(mha.input[3]), dtype=np.float32)
        dim = len(scale)
        bias[2 * dim :] = bias[2 * dim :] / scale
        mha.input[3] = const(f"{mha.input[3]}_smoothed", bias)
    return True


def _bias_add(graph: Any, tensor: str, inits: dict[str, Any]) -> tuple[Any, int] | None:
    """The Add node (and its bias slot) that alone reads ``tensor`` and adds a 1-D weight."""
    readers = [n for n in graph.node if tensor in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add":
        return None
    add = readers[0]
    slot = 1 - list(add.input).index(tensor)
    other = add.input[slot]
    return (add, slot) if other in inits and len(inits[other].dims) == 1 else None


def _f32(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def _zero_point(rows: np.ndarray) -> int:
    """The uint8 zero point that fits a typical row of ``rows``: the median share of the row's
    range (0 included) below zero. The scale is still set per row, so a row unlike the
    typical one loses resolution, never range."""
    lo, hi = np.minimum(rows.min(axis=1), 0), np.maximum(rows.max(axis=1), 0)
    share = -lo / np.maximum(hi - lo, 1e-12)
    return int(np.clip(np.rint(255 * np.median(share)), 1, 254))


def _save(model: Any, target: Path) -> None:
    import onnx

    size = sum(len(i.raw_data) for i in model.graph.initializer)
    data = target.name + ".data"
    (target.parent / data).unlink(missing_ok=True)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(target), save_as_external_data=True, location=data)
    else:
        onnx.save(model, str(target))


def convert_fp16(source: Path, target: Path) -> dict[str, Any]:
    """Write ``target``: ``source`` in float16 with float32 inputs/outputs kept and the ops of
    FP16_KEEP_FP32 left in float32 (casts inserted around them)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32), disable_shape_infer=True
    )
    _save(converted, target)
    kinds = [n.op_type for n in converted.graph.node]
    return {"fp32_ops": sorted(set(kinds) & set(FP16_KEEP_FP32)), "casts": kinds.count("Cast")}


def measure_fidelity(
    model_dir: Path, manifest: Manifest, precision: str, texts: Sequence[str] = FIDELITY_TEXTS
) -> dict[str, Any]:
    """Cosine of ``precision``'s vectors to the main graph's, each text alone against inside
    one padded batch of all ``texts``, and the graph file's size."""
    # One padded batch of all texts where it fits 16,384 tokens (64 texts of MiniLM's 256);
    # larger models' long texts split into a few batches, still of mixed lengths.
    budget = min(len(texts) * (manifest.max_length or 512), 16_384)
    main = TextEmbedding(model_dir, precision=manifest.precision, max_tokens=budget)
    other = TextEmbedding(model_dir, precision=precision, max_tokens=budget)
    items = list(texts)
    reference = main.encode(items, batch_size=len(items))
    batched = other.encode(items, batch_size=len(items))
    alone = other.encode(items, batch_size=1)
    to_main = cosines(reference, batched)
    invariance = cosines(alone, batched)
    graph = manifest.variants[precision].graph_file
    files = [model_dir / graph, model_dir / (graph + ".data")]
    return {
        "probe_texts": len(items),
        f"cosine_to_{manifest.precision}_mean": float(to_main.mean()),
        f"cosine_to_{manifest.precision}_min": float(to_main.min()),
        "batch_invariance_min_cosine": float(invariance.min()),
        "finite": bool(np.isfinite(batched).all() and np.isfinite(alone).all()),
        "bytes": sum(f.stat().st_size for f in files if f.is_file()),
    }


def add_variants(
    model_dir: Path,
    manifest: Manifest,
    precisions: Collection[str],
    command: str,
    keep_fp32: Collection[str] = (),
    weight_bits: int = 8,
) -> Manifest:
    """Write the INT8 and/or FP16 graphs of the FP32 graph in ``model_dir``, measure each
    against it, and return the manifest listing them with their figures.

    Raises QuantizeError when a quantized graph gives non-finite vectors or is not
    batch-invariant.
    """
    if manifest.precision != "fp32" or manifest.graph_file is None:
        raise QuantizeError("quantized graphs are made from an fp32 graph")
    source = model_dir / manifest.graph_file
    variants = dict(manifest.variants)
    for precision in precisions:
        if precision == "fp32":
            continue
        target = model_dir / PRECISION_FILES[precision]
        if precision == "int8":
            ranges = calibrate(model_dir, manifest, matmul_inputs(source))
            release_freed_memory()  # the calibration session's
            recipe = quantize_int8(source, target, keep_fp32, ranges, None, GPTQ_DAMP, weight_bits)
            del ranges  # a Gram matrix per MatMul input: not needed by the fidelity check
            release_freed_memory()
            recipe["recipe"] = (
                "per-token uint8 activations (fixed zero point per input; GELU outputs shifted), "
                f"per-column int8 weights{' within +-63' if weight_bits == 7 else ''} rounded "
                f"by GPTQ (damp {GPTQ_DAMP}), SmoothQuant "
                f"strength searched per input among {SMOOTH_ALPHAS}; calibrated on "
                f"{CALIBRATION_TEXTS} pseudo-sentences of the tokenizer's vocabulary"
            )
        elif precision == "fp16":
            recipe = convert_fp16(source, target)
            recipe["recipe"] = "float16, norms/softmax/reductions in float32"
        else:
            raise QuantizeError(f"unknown precision {precision!r}")
        variants[precision] = GraphVariant(target.name, {**recipe, "command": command})
        manifest = manifest.with_changes(variants=dict(variants))
        manifest.save(model_dir)  # the runtime reads the directory's manifest
        figures = measure_fidelity(model_dir, manifest, precision)
        if not figures["finite"] or figures["batch_invariance_min_cosine"] < MIN_BATCH_INVARIANCE:
            raise QuantizeError(f"the {precision} graph fails its checks (figures: {figures})")
        variants[precision] = GraphVariant(target.name, {**figures, **recipe, "command": command})
        manifest = manifest.with_changes(variants=dict(variants))
    return manifest


class Calibration(NamedTuple):
    """What calibration text shows of one MatMul input (real tokens only)."""

    top: np.ndarray  # max |x| per channel
    rows: np.ndarray  # a sample of rows (tokens)
    gram: np.ndarray  # X^T X / tokens, for GPTQ's rounding


def activation_stats(
    source: Path, tensors: Collection[str], feeds: list[dict[str, np.ndarray]]
) -> dict[str, Calibration]:
    """Calibration figures of each named tensor of ``source`` over ``feeds``, real tokens only
    (where the attention mask is 1; a tensor of as many rows as real tokens, as a fused
    decoder's packed activations, holds nothing else)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(source), load_external_data=False)
    for name in tensors:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    # Saved beside the source, so that its external data (if any) resolves.
    probe = source.with_name(source.stem + ".calibration.onnx")
    onnx.save(model, str(probe))
    # Every MatMul input of a batch comes back at once (a 28-layer decoder's 112 of them are
    # gigabytes for 16 texts): no arena that would keep the largest of them allocated. No
    # prepacked copies of the weights either: external data is memory-mapped, and packing
    # would add a second copy of every MatMul's weights for a few calibration runs.
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.disable_prepacking", "1")
    try:
        session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    finally:
        probe.unlink()
    names = list(tensors)
    top: dict[str, np.ndarray] = {}
    gram: dict[str, np.ndarray] = {}
    sample: dict[str, list[np.ndarray]] = {name: [] for name in names}
    tokens = 0
    for feed in feeds:
        outs = session.run(names, feed)
        real = feed["attention_mask"].reshape(-1).astype(bool)
        tokens += int(real.sum())
        for name, value in zip(names, outs, strict=True):
            rows = value.reshape(-1, value.shape[-1])
            if len(rows) != real.sum():
                rows = rows[real]
            found = np.abs(rows).max(axis=0)
            top[name] = np.maximum(top[name], found) if name in top else found
            product = rows.T @ rows
            gram[name] = gram[name] + product if name in gram else product
            # A copy: a strided view would keep the run's whole output alive.
            sample[name].append(rows[:: max(1, len(rows) // 16)].copy())
    for name in names:  # in place: a divided copy of every Gram matrix would double them
        gram[name] /= max(tokens, 1)
    return {
        name: Calibration(top[name], np.concatenate(sample[name]), gram[name]) for name in names
    }


def calibration_texts(tokenizer_file: Path, count: int = CALIBRATION_TEXTS) -> list[str]:
    """Pseudo-sentences of whole words from the model's own vocabulary (seeded): calibration
    that needs no data set, and shares no text with any evaluation."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    words = sorted(
        {
            word
            for i in range(tokenizer.get_vocab_size())
            if (word := tokenizer.decode([i]).strip()).isalpha() and len(word) > 2
        }
    )
    if not words:
        raise QuantizeError(f"{tokenizer_file}: no whole words in the vocabulary to calibrate on")
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=rng.randint(3, 60))) for _ in range(count)]


def calibrate(
    model_dir: Path, manifest: Manifest, tensors: Collection[str]
) -> dict[str, Calibration]:
    """``activation_stats`` of ``tensors`` on the vocabulary calibration texts."""
    # Only its tokenizer is used: no session (a second copy of a large model's weights).
    runtime = TextEmbedding(model_dir, precision=manifest.precision, lazy_load=True)
    assert isinstance(runtime.backend, TransformerBackend)
    runner = runtime.backend.runner
    encoded = runtime.tokenize(calibration_texts(model_dir / manifest.tokenizer_file))
    rows = np.arange(len(encoded.lengths()))
    feeds = [
        runner.feeds(runner.pad(encoded, rows[start : start + CALIBRATION_BATCH]))
        for start in range(0, len(rows), CALIBRATION_BATCH)
    ]
    assert manifest.graph_file is not None
    return activation_stats(model_dir / manifest.graph_file, tensors, feeds)


def matmul_inputs(source: Path) -> list[str]:
    """The activations that weight MatMuls of ``source`` read."""
    import onnx

    model = onnx.load(str(source), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    return sorted({n.input[0] for n in _weight_matmuls(model.graph, inits)})


def release_freed_memory() -> None:
    """Collect garbage and give freed memory back to the system (glibc keeps freed heap for
    reuse: after a PyTorch model, a session or calibration statistics, gigabytes of it), so
    the next step does not start on top of it. A no-op where there is no glibc."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def variants_in_fresh_process(
    model_dir: Path, precisions: Collection[str], command: str
) -> Manifest:
    """``add_variants`` on ``model_dir`` (its saved manifest) in a new Python process, so
    that what the export held before (PyTorch, the FP32 graph's parity session) is not
    resident beside calibration and quantization; returns the manifest it saved."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "slimembed.optimize.quantize", str(model_dir), *precisions]
    done = subprocess.run([*args, "--command", command], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"quantization exited with {done.returncode}"
        raise QuantizeError(last.removeprefix("QuantizeError: "))
    return Manifest.load(model_dir)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m slimembed.optimize.quantize MODEL_DIR PRECISION... --command CMD``."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=variants_in_fresh_process.__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("precisions", nargs="+")
    parser.add_argument("--command", default="")
    args = parser.parse_args(argv)
    try:
        manifest = add_variants(
            args.model_dir, Manifest.load(args.model_dir), args.precisions, args.command
        )
    except QuantizeError as err:
        sys.exit(f"QuantizeError: {err}")
    manifest.save(args.model_dir)


if __name__ == "__main__":
    main()
