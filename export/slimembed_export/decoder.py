"""Fused decoder graphs: Llama, Mistral, Qwen2 and Qwen3 written straight from their weights
into ONNX Runtime's fused operators, instead of traced.

torch.onnx spells each decoder layer out as dozens of small nodes (RMSNorm as Pow, ReduceMean,
Add, Sqrt, Div, Mul; rotary embeddings as Slice, Neg, Concat, Mul, Add over gathered cos/sin;
attention as head reshapes, repeat_kv's Expand, the scores MatMul, a 4D mask built from the
padding mask and a causal triangle, Softmax and a NaN guard). None of ONNX Runtime's own
fusions (onnxruntime.transformers) recognises the dynamo exporter's form of these, and matching
it after the fact, as slimembed.optimize.fusion does for encoders, would depend on the exporter's
spelling of rotary and masks, which changes between torch releases. A decoder layer of these
four families is a short, fixed recipe, so it is written directly:

    SkipSimplifiedLayerNormalization  (residual add + RMSNorm in one kernel)
    MatMul x @ [Wq Wk Wv]             (one packed projection; biases for Qwen2)
    SimplifiedLayerNormalization      (Qwen3's per-head q_norm / k_norm)
    RotaryEmbedding                   (com.microsoft; positions from the mask, see below)
    MultiHeadAttention                (com.microsoft; causal via ``unidirectional``, or
                                       bidirectional with padded keys masked)
    MatMul Wo, SkipSimplifiedLayerNormalization
    MatMul x @ [Wgate Wup], SiLU(gate) * up, MatMul Wdown

Padding is removed: the projections, norms and MLP, nearly all of the work, run on the real
tokens only, packed as (1, T, dim); attention gathers them into (batch, seq) rows laid out
right-aligned whatever the input's padding side, so rotary positions are the column (the
positions of the text alone, as ``cumsum(mask) - 1`` in the traced graphs) and a causal row
never sees padding; the output goes back to the input's layout with zeros at padding. cos/sin
tables come from the model's own rotary module (any rope_scaling, attention scaling included)
for positions up to the export's max length. Grouped KV heads are repeated for
MultiHeadAttention, which takes equal head counts.

Measured on Qwen3-Embedding-0.6B's shape (2 threads; benchmarks/RESULTS.md "Decoders on CPU"):
removing padding made 64 short texts 1.53x faster than the same fused graph on padded rows;
GroupQueryAttention (no K/V repeat) was slower over the whole graph (10.2 s against 9.7 s for
4 x 512 tokens) and ONNX's own Attention (opset 23, is_causal) no faster than
MultiHeadAttention (1.95 s against 2.06 s of attention), so MultiHeadAttention it is.

Why not ONNX Runtime's builders: onnxruntime-genai's model builder writes the same operators
but for generation (GroupQueryAttention with a KV cache, past/present inputs and outputs,
right-padded prompts only, and always causal); its graph would need surgery for embedding
(no cache, left padding, bidirectional GritLM/gte-Qwen2) and it installs its own runtime.

Weights are written tensor by tensor to the external data file as they are read from the
PyTorch module, so building holds one tensor beside the model, never a second copy of all of
them. A built graph is accepted only after its hidden states match the PyTorch model's on a
probe batch with left- and right-padded rows (``check``); otherwise the caller exports the traced
graph instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slimembed.optimize.onnx_file import OPSET
from slimembed_export.errors import ExportError

MS = "com.microsoft"
# The architectures this builder writes (transformers' base model classes, by name).
SUPPORTED = ("LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model")
# Hidden states of the built graph must match PyTorch's this closely on the probe batch.
CHECK_MAX_ABS = 1e-3
CHECK_MIN_COSINE = 0.99999
_ALIGN = 4096


def unsupported_reason(model: Any, max_length: int) -> str | None:
    """Why ``model`` cannot be built fused (None when it can)."""
    name = type(model).__name__
    if name not in SUPPORTED:
        return f"{name} is not one of the fused decoder architectures {SUPPORTED}"
    config = model.config
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the fused graph writes SiLU)"
    # Mistral: sliding_window alone; Qwen2/Qwen3: use_sliding_window and layer_types.
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ()
    sliding = getattr(config, "use_sliding_window", True) or "sliding_attention" in layer_types
    if window and sliding and window < max_length:
        return f"sliding-window attention ({window}) below the max length {max_length}"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    # Dynamic NTK scaling changes the frequencies with the sequence length: one cos/sin table
    # cannot hold it.
    for rope in (getattr(config, "rope_scaling", None), getattr(config, "rope_parameters", None)):
        if isinstance(rope, dict) and "dynamic" in (rope.get("rope_type"), rope.get("type")):
            return "dynamic rotary scaling"
    attn = model.layers[0].self_attn
    expected = attn.head_dim**-0.5
    if abs(float(getattr(attn, "scaling", expected)) - expected) > 1e-9:
        return f"attention scaling {attn.scaling} is not head_dim ** -0.5"
    return None


class _Writer:
    """Initializers of the graph, written to the external data file as they come."""

    def __init__(self, path: Path, external: bool) -> None:
        self.inits: list[Any] = []
        self.location = path.name + ".data"
        self.file = open(path.with_name(self.location), "wb") if external else None  # noqa: SIM115

    def add(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        array = np.ascontiguousarray(array)
        if self.file is None or array.nbytes < 1024:
            self.inits.append(numpy_helper.from_array(array, name))
            return name
        from onnx import TensorProto, helper

        tensor = TensorProto(name=name, dims=array.shape)
        tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        offset = self.file.tell()
        offset += -offset % _ALIGN
        self.file.seek(offset)
        self.file.write(array.tobytes())
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", self.location),
            ("offset", offset),
            ("length", array.nbytes),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
        self.inits.append(tensor)
        return name

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _np(tensor: Any) -> np.ndarray:
    return tensor.detach().to("cpu").float().numpy()


def build_decoder_graph(
    model: Any,
    path: Path,
    max_length: int,
    bidirectional: bool,
    external: bool,
) -> str:
    """Write ``model``'s fused embedding graph (input_ids, attention_mask ->
    last_hidden_state) to ``path``; returns a description of what was fused. Raises
    ExportError when ``unsupported_reason`` says the model cannot be built."""
    import onnx
    import torch
    from onnx import TensorProto, helper

    reason = unsupported_reason(model, max_length)
    if reason:
        raise ExportError(f"no fused decoder graph: {reason}")
    config = model.config
    attn0 = model.layers[0].self_attn
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(attn0.head_dim)
    hidden_size = int(config.hidden_size)
    group = heads // kv_heads
    eps = float(config.rms_norm_eps)
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    inter = int(config.intermediate_size)
    writer = _Writer(path, external)
    nodes: list[Any] = []
    consts: dict[str, str] = {}

    # Every tensor's element type goes into the graph's value_info: the float16 converter
    # needs it to put casts around the operators that stay float32, and ONNX's type
    # inference does not know the com.microsoft ones. An output takes its data input's type
    # (weights are float32), but for the ops that say otherwise.
    types: dict[str, int] = {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64}
    fixed = {"Less": TensorProto.BOOL, "Shape": TensorProto.INT64, "NonZero": TensorProto.INT64}

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any) -> str:
        name = f"{op}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        data = inputs[1] if op == "Where" else inputs[0]
        kind = attrs.get("to", fixed.get(op, types.get(data, TensorProto.FLOAT)))
        types.update((o, kind) for o in outputs if o)
        return outputs[0]

    def const(name: str, value: Any, dtype: Any = np.int64) -> str:
        if name not in consts:
            array = np.asarray(value, dtype=dtype)
            consts[name] = writer.add(name, array)
            types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        return consts[name]

    # Padding removed: the projections, norms and MLP run on the real tokens only, packed as
    # (1, T, dim) in input order. Attention runs on (batch, seq, dim) rows laid out right-
    # aligned whatever the input's padding side (token j of a text at column j, so rotary
    # positions are the column and a causal row never sees padding); the output goes back to
    # the input's layout. Padding reads an extra zero row appended at T.
    flat, axes0 = const("flat", [-1]), const("axes0", [0])
    one = const("one", 1)
    node("Shape", ["attention_mask"], ["batch_seq"])
    node("Reshape", ["attention_mask", flat], ["mask_flat"])
    node("NonZero", ["mask_flat"], ["input_real_nz"])
    node("Reshape", ["input_real_nz", flat], ["input_real"])
    node("ReduceSum", ["mask_flat"], ["real_count"], keepdims=0)
    node("CumSum", ["mask_flat", const("axis0", 0)], ["mask_flat_cumsum"])
    node("Sub", ["mask_flat_cumsum", one], ["input_rank"])
    node("Cast", ["mask_flat"], ["mask_flat_bool"], to=TensorProto.BOOL)
    node("Where", ["mask_flat_bool", "input_rank", "real_count"], ["output_slot_flat"])
    node("Reshape", ["output_slot_flat", "batch_seq"], ["output_slot"])
    # The attention layout: lengths, each text's first packed row, columns 0..seq-1.
    node("ReduceSum", ["attention_mask", const("axes1", [1])], ["lengths"], keepdims=1)
    node("CumSum", ["lengths", const("axis0", 0)], ["ends"])
    node("Sub", ["ends", "lengths"], ["starts"])
    node("Gather", ["batch_seq", one], ["seq"], axis=0)
    node("Range", [const("zero", 0), "seq", one], ["columns_1d"])
    node("Unsqueeze", ["columns_1d", axes0], ["columns"])
    node("Less", ["columns", "lengths"], ["attn_valid"])
    node("Add", ["starts", "columns"], ["attn_rank"])
    node("Where", ["attn_valid", "attn_rank", "real_count"], ["attn_slot"])
    node("Reshape", ["attn_valid", flat], ["attn_valid_flat"])
    node("NonZero", ["attn_valid_flat"], ["attn_real_nz"])
    node("Reshape", ["attn_real_nz", flat], ["attn_real"])
    node("Expand", ["columns", "batch_seq"], ["positions"])
    node("Cast", ["attn_valid"], ["key_mask"], to=TensorProto.INT32)

    node("Reshape", ["input_ids", flat], ["ids_flat"])
    node("Gather", ["ids_flat", "input_real"], ["ids_real"])
    node("Unsqueeze", ["ids_real", axes0], ["ids_packed"])
    writer.add("embed_tokens", _np(model.embed_tokens.weight))
    node("Gather", ["embed_tokens", "ids_packed"], ["embedded"])
    with torch.no_grad():
        cos, sin = model.rotary_emb(torch.zeros(1, 1, head_dim), torch.arange(max_length)[None])
    cos_cache = writer.add("cos_cache", _np(cos[0, :, : head_dim // 2]))
    sin_cache = writer.add("sin_cache", _np(sin[0, :, : head_dim // 2]))

    def unpack(packed: str, width: int, slot: str, out: str) -> str:
        """(1, T, width) packed rows -> (batch, seq, width) at ``slot``, padding zero."""
        zero = const(f"zero_row_{width}", np.zeros((1, 1, width)), np.float32)
        node("Concat", [packed, zero], [out + "_z"], axis=1)
        node("Squeeze", [out + "_z", axes0], [out + "_rows"])
        return node("Gather", [out + "_rows", slot], [out])

    def pack(padded: str, width: int, out: str) -> str:
        """(batch, seq, width) in the attention layout -> (1, T, width)."""
        node("Reshape", [padded, const(f"rows_{width}", [-1, width])], [out + "_rows"])
        node("Gather", [out + "_rows", "attn_real"], [out + "_real"])
        return node("Unsqueeze", [out + "_real", axes0], [out])

    residual = "embedded"
    pending: str | None = None  # the sublayer output still to be added to the residual

    def norm(gamma: str, out: str) -> str:
        """RMSNorm of pending + residual (one fused add) or of the residual alone."""
        nonlocal pending, residual
        if pending is None:
            node("SimplifiedLayerNormalization", [residual, gamma], [out], axis=-1, epsilon=eps)
            return out
        outputs = [out, "", "", out + "_sum"]
        node(
            "SkipSimplifiedLayerNormalization",
            [pending, residual, gamma],
            outputs,
            domain=MS,
            epsilon=eps,
        )
        pending, residual = None, out + "_sum"
        return out

    def linear(x: str, modules: list[Any], name: str) -> str:
        """x @ [W1 W2 ...] (+ biases): one packed MatMul."""
        w = torch.cat([m.weight for m in modules]).T
        y = node("MatMul", [x, writer.add(name, _np(w))], [name + "_out"])
        del w
        if modules[0].bias is not None:
            b = writer.add(name + "_bias", _np(torch.cat([m.bias for m in modules])))
            y = node("Add", [y, b], [name + "_out_b"])
        return y

    for i, layer in enumerate(model.layers):
        p = f"layers.{i}."
        sa, mlp = layer.self_attn, layer.mlp
        x = norm(
            writer.add(p + "input_layernorm", _np(layer.input_layernorm.weight)), p + "attn_in"
        )
        qkv = linear(x, [sa.q_proj, sa.k_proj, sa.v_proj], p + "qkv_proj")
        qkv = unpack(qkv, q_dim + 2 * kv_dim, "attn_slot", p + "qkv_padded")
        q, k, v = p + "q", p + "k", p + "v"
        node("Split", [qkv, const("split_qkv", [q_dim, kv_dim, kv_dim])], [q, k, v], axis=-1)
        if hasattr(sa, "q_norm"):  # Qwen3: RMSNorm of each head of Q and K
            normed = []
            for name, module, n in (("q", sa.q_norm, heads), ("k", sa.k_norm, kv_heads)):
                shape = const(f"heads_shape_{n}", [0, 0, n, head_dim])
                t = node("Reshape", [p + name, shape], [p + name + "_heads"])
                g = writer.add(p + name + "_norm", _np(module.weight))
                t = node(
                    "SimplifiedLayerNormalization", [t, g], [t + "_normed"], axis=-1, epsilon=eps
                )
                flat_n = const(f"flat_heads_{n}", [0, 0, n * head_dim])
                normed.append(node("Reshape", [t, flat_n], [p + name + "_n"]))
            q, k = normed
        rot = [cos_cache, sin_cache]
        q = node(
            "RotaryEmbedding", [q, "positions", *rot], [p + "q_rot"], domain=MS, num_heads=heads
        )
        k = node(
            "RotaryEmbedding", [k, "positions", *rot], [p + "k_rot"], domain=MS, num_heads=kv_heads
        )
        scale = float(head_dim**-0.5)
        if group > 1:  # MultiHeadAttention takes as many K/V heads as Q heads
            grouped = const("grouped_shape", [0, 0, kv_heads, 1, head_dim])
            repeat = const("repeat_shape", [1, 1, 1, group, 1])
            flat_q = const(f"flat_heads_{heads}", [0, 0, q_dim])
            kv = []
            for name, t in (("k", k), ("v", v)):
                t = node("Reshape", [t, grouped], [p + name + "_g"])
                t = node("Expand", [t, repeat], [p + name + "_e"])
                kv.append(node("Reshape", [t, flat_q], [p + name + "_rep"]))
            k, v = kv
        context = node(
            "MultiHeadAttention",
            [q, k, v, "", "key_mask" if bidirectional else ""],
            [p + "context"],
            domain=MS,
            num_heads=heads,
            unidirectional=0 if bidirectional else 1,
            scale=scale,
        )
        context = pack(context, q_dim, p + "context_packed")
        pending = linear(context, [sa.o_proj], p + "o_proj")
        gamma = writer.add(
            p + "post_attention_layernorm", _np(layer.post_attention_layernorm.weight)
        )
        x = norm(gamma, p + "mlp_in")
        gate_up = linear(x, [mlp.gate_proj, mlp.up_proj], p + "gate_up_proj")
        gate, up = p + "gate", p + "up"
        node("Split", [gate_up, const("split_mlp", [inter, inter])], [gate, up], axis=-1)
        node("Sigmoid", [gate], [p + "gate_sigmoid"])
        node("Mul", [gate, p + "gate_sigmoid"], [p + "silu"])
        node("Mul", [p + "silu", up], [p + "act"])
        pending = linear(p + "act", [mlp.down_proj], p + "down_proj")
    packed = norm(writer.add("norm", _np(model.norm.weight)), "last_hidden_packed")
    unpack(packed, hidden_size, "output_slot", "last_hidden_state")
    writer.close()

    graph = helper.make_graph(
        nodes,
        "slimembed_decoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [
            helper.make_tensor_value_info(
                "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", hidden_size]
            )
        ],
        initializer=writer.inits,
        value_info=[
            helper.make_tensor_value_info(name, kind, None)
            for name, kind in types.items()
            if name != "last_hidden_state"
        ],
    )
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)],
        producer_name="slimembed_export.decoder",
    )
    onnx_model.ir_version = 10
    onnx.save(onnx_model, str(path))
    mask = "bidirectional" if bidirectional else "causal"
    return (
        f"slimembed fused decoder (opset {OPSET}): {len(model.layers)} layers of "
        f"MultiHeadAttention ({mask}), RotaryEmbedding and SkipSimplifiedLayerNormalization, "
        "padding removed"
    )


def check(model: Any, path: Path, pad_id: int, bidirectional: bool) -> dict[str, float]:
    """Hidden states of the graph at ``path`` against the PyTorch model on a probe batch with a
    full row, a right-padded and a left-padded one; raises ExportError past the bounds."""
    import onnxruntime as ort
    import torch

    from slimembed_export.graph import HiddenStates

    rng = np.random.default_rng(0)
    vocab = int(model.config.vocab_size)
    ids = rng.integers(3, vocab, size=(3, 13)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    ids[mask == 0] = pad_id
    with torch.no_grad():
        reference = HiddenStates(model, True, bidirectional)(
            torch.from_numpy(ids), torch.from_numpy(mask)
        ).numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    real = mask.astype(bool)
    a, b = got[real], reference[real]
    max_abs = float(np.abs(a - b).max())
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    figures = {"max_abs": max_abs, "min_cosine": float(cos.min())}
    scale = float(np.abs(b).max())
    if (
        not np.isfinite(got[real]).all()
        or figures["min_cosine"] < CHECK_MIN_COSINE
        or max_abs > CHECK_MAX_ABS * max(1.0, scale)
    ):
        raise ExportError(f"the fused decoder graph does not match PyTorch: {figures}")
    return figures
