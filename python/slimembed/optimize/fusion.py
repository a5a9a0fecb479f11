"""Attention fusion: the exported attention core rewritten into ONNX Runtime's
``com.microsoft.MultiHeadAttention``, for FP32 and (since quantize reads the FP32 graph) INT8.

torch.onnx's dynamo exporter spells scaled-dot-product attention out as some 20 nodes per layer
(head reshapes and transposes, a reshape-transpose-reshape for K^T, the scale on Q and K, the
scores MatMul, an additive mask, Softmax, a NaN guard, the MatMul with V, a transpose back), and
ONNX Runtime's own attention fusions do not recognise that form. MultiHeadAttention takes the
projected Q, K and V as (batch, seq, dim), adds their biases while it splits heads, and masks
padded keys from the (batch, seq) padding mask.

Performance notes (all-MiniLM-L6-v2, 2 threads; benchmarks/RESULTS.md "INT8 and FP16"): fused,
the FP32 graph ran 1.06x faster on short texts and 1.27x on 256-token ones (the guard's Where
and IsNaN over (batch, heads, seq, seq) went with it), and the INT8 graph gains the same
absolute time, which raises its ratio to FP32.

Matching is structural only up to the skeleton (MatMul -> [scale] -> Add mask -> Softmax ->
[NaN guard] -> MatMul, with Q, K and V each a plain projection: attention whose Q or K pass
through rotary embeddings, norms or head grouping is no candidate); everything a rewrite relies
on is then checked on values, by running the graph once on a probe batch with right- and
left-padded rows:
- each side's chain of Reshape/Transpose (and scalar Mul/Div) is exactly the split into heads
  of a (batch, seq, dim) tensor (K transposed), and the output chain exactly the merge back;
- the additive mask is 0 on every real key and at most -1e4 on every padded one, for every
  query: a pure key-padding mask. A causal mask fails this (tests/test_fusion.py).
A candidate that fails any check keeps its original nodes. The fused graph is then run on the
probe batch beside the original and kept only if its output agrees at every real position
(``OUTPUT_TOLERANCE``); at export the parity check against PyTorch runs on it as on any other.

Two exporters' forms match: torch.onnx's dynamo exporter (the export's graphs) and its TorchScript
exporter as optimum uses it (the ``onnx/model.onnx`` of sentence-transformers repositories on the
Hub: ``token_type_ids`` as a third input, fed zeros on the probe, Shape nodes reading the attention
tensors for dynamic reshapes, and the scale split as 1/d^(1/4) on each of Q and K). The runtime
fuses such a graph when it first loads it (slimembed.repos), so a Hub repository runs as fast as
``slimembed export``'s graph of the same model.

Rows that are all padding (never pooled) get uniform attention instead of the guard's zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

# The additive mask value the exporter writes (float32's lowest); any value <= MASKED counts as
# masked when checking a candidate's mask.
MASK_FILTER = float(np.finfo(np.float32).min)
MASKED = -1e4
_LAYOUT = ("Reshape", "Transpose", "Mul", "Div")
# Graph inputs the probe batch can feed; a graph declaring any other is not fused.
PROBE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The fused graph's output may differ from the original's by this much, relative to the
# output's largest magnitude, at real (unpadded) positions of the probe batch.
OUTPUT_TOLERANCE = 1e-4


@dataclass
class _Candidate:
    """One attention core found in the graph; tensors named by the graph."""

    q: str  # (batch, seq, dim) before the split into heads
    k: str
    v: str
    q_heads: str  # (batch, heads, seq, head) after Q's layout chain
    k_heads: str  # (batch, heads, head, seq): K's chain ends transposed
    v_heads: str
    mask_bias: str
    context: str  # softmax(QK^T) V, (batch, heads, seq, head)
    out: str  # (batch, seq, dim)
    scale: float
    heads: int = 0
    checks: dict[str, bool] = field(default_factory=dict)


class Fused(NamedTuple):
    """What ``fuse`` rewrote: attention cores, and GELUs spelled out with Erf."""

    attention: int
    gelu: int


def fuse(path: Path, out: Path | None = None) -> Fused:
    """Rewrite ``path``'s attention cores into MultiHeadAttention where every check holds, and
    its Erf-spelled GELUs into one Gelu op each, and write the result to ``out`` (default:
    ``path`` itself); returns how many of each were fused. With none, or when the fused graph's
    output differs from the original's on the probe batch, nothing is written. A graph with
    external data keeps referring to its data files by their names: fused elsewhere, it is
    fused only where they are beside ``out`` too."""
    import onnx

    none = Fused(0, 0)
    target = path if out is None else out
    # External data (graphs past 2 GB) stays where it is: only small tensors are read.
    model = onnx.load(str(path), load_external_data=False)
    if not all((target.parent / name).is_file() for name in external_data(model)):
        return none
    candidates = _find(model)
    verified = _verify(model, path, candidates) if candidates else []
    if verified:
        _rewrite(model, verified, path.parent)
    gelus = _fuse_gelu(model)
    if not verified and not gelus:
        return none
    if not _complete(model):
        return none
    staging = target.with_name(target.name + ".fusing")
    try:
        onnx.save(model, str(staging))
        if not _same_outputs(path, staging):
            return none
        staging.replace(target)
    finally:
        staging.unlink(missing_ok=True)
    return Fused(len(verified), gelus)


def _fuse_gelu(model: Any) -> int:
    """Replace each ``0.5 * x * (1 + erf(x / sqrt(2)))`` (TorchScript's exact GELU, in any
    order of its two Muls) by ``com.microsoft.Gelu(x)``, which ONNX Runtime runs as one kernel
    and the INT8 recipe recognises (it shifts GELU outputs); returns how many."""
    from onnx import helper

    graph = model.graph
    _, producer, readers, scalar = _index(model)

    def only_reader(tensor: str, op: str) -> Any:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    def other(node: Any, tensor: str) -> str:
        return str(node.input[1] if node.input[0] == tensor else node.input[0])

    replaced: dict[str, Any] = {}  # output tensor of the pattern -> its Gelu node
    for erf in [n for n in graph.node if n.op_type == "Erf"]:
        scaled = producer.get(erf.input[0])
        if scaled is None or scaled.op_type not in ("Div", "Mul"):
            continue
        factor = scalar(scaled.input[1])
        root2 = 2**0.5 if scaled.op_type == "Div" else 2**-0.5
        if factor is None or abs(factor - root2) > 1e-5:
            continue
        x = scaled.input[0]
        plus = only_reader(erf.output[0], "Add")
        if plus is None or scalar(other(plus, erf.output[0])) != 1.0:
            continue
        first = only_reader(plus.output[0], "Mul")
        if first is None:
            continue
        partner = other(first, plus.output[0])
        second = only_reader(first.output[0], "Mul")
        if partner == x and second is not None and scalar(other(second, first.output[0])) == 0.5:
            end = second  # (x * (1 + erf)) * 0.5
        elif scalar(partner) == 0.5 and second is not None and other(second, first.output[0]) == x:
            end = second  # x * ((1 + erf) * 0.5)
        elif (
            (half := producer.get(partner)) is not None
            and half.op_type == "Mul"
            and (x in half.input and scalar(other(half, x)) == 0.5)
        ):
            end = first  # (x * 0.5) * (1 + erf)
        else:
            continue
        name = f"gelu_{len(replaced)}"
        replaced[end.output[0]] = helper.make_node(
            "Gelu", [x], [end.output[0]], name=name, domain="com.microsoft"
        )
    if not replaced:
        return 0
    rebuilt = [replaced.get(n.output[0], n) if n.output else n for n in graph.node]
    del graph.node[:]
    graph.node.extend(rebuilt)
    _drop_dead(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def external_data(model: Any) -> set[str]:
    """The external data files a graph (loaded without them) refers to, by their names."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    return {ExternalDataInfo(i).location for i in model.graph.initializer if uses_external_data(i)}


def _index(
    model: Any,
) -> tuple[
    dict[str, np.ndarray],
    dict[str, Any],
    dict[str, list[Any]],
    Callable[[str], float | None],
]:
    """What the pattern matchers look up: the graph's one-element constants, each tensor's
    producing node, each tensor's reading nodes, and ``scalar(name)`` (a constant's value, or
    None for a computed tensor)."""
    consts = _consts(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def scalar(name: str) -> float | None:
        value = consts.get(name)
        return float(value) if value is not None and value.size == 1 else None

    return consts, producer, readers, scalar


def _consts(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    found = {
        i.name: numpy_helper.to_array(i) for i in model.graph.initializer if np.prod(i.dims) == 1
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _find(model: Any) -> list[_Candidate]:
    """Candidates by the skeleton alone: Softmax(MatMul(q, k) [* c] + mask) [guard] @ v."""
    graph = model.graph
    consts, producer, readers, scalar = _index(model)

    def chain(tensor: str) -> tuple[str, float]:
        """Walk back through layout ops and scalar scalings: (start tensor, product of scales)."""
        scale = 1.0
        while (node := producer.get(tensor)) is not None and node.op_type in _LAYOUT:
            if node.op_type in ("Mul", "Div"):
                data = [i for i in node.input if scalar(i) is None]
                factors = [scalar(i) for i in node.input if scalar(i) is not None]
                if len(data) != 1 or len(factors) != 1 or factors[0] == 0:
                    break
                factor = factors[0]
                assert factor is not None
                if node.op_type == "Div" and node.input[1] != data[0]:
                    factor = 1 / factor
                elif node.op_type == "Div":
                    break
                scale *= factor
                tensor = data[0]
            else:
                tensor = node.input[0]
        return tensor, scale

    def unscaled(tensor: str) -> str:
        """The last tensor of a layout chain before any scaling (the heads, unscaled)."""
        while (node := producer.get(tensor)) is not None and node.op_type in ("Mul", "Div"):
            data = [i for i in node.input if scalar(i) is None]
            if len(data) != 1:
                break
            tensor = data[0]
        return tensor

    found = []
    for softmax in graph.node:
        if softmax.op_type != "Softmax":
            continue
        add = producer.get(softmax.input[0])
        if add is None or add.op_type != "Add":
            continue
        scores_side = [i for i in add.input if _is_qk(producer, i, scalar)]
        if len(scores_side) != 1:
            continue
        mask_bias = next(i for i in add.input if i != scores_side[0])
        scores, score_scale = chain_scores(producer, scores_side[0], scalar)
        qk = producer[scores]
        probs = _after_guard(softmax.output[0], readers)
        pv = [n for n in readers.get(probs, []) if n.op_type == "MatMul" and n.input[0] == probs]
        if len(pv) != 1:
            continue
        out = _out_chain(pv[0].output[0], readers)
        if out is None:
            continue
        q, q_scale = chain(qk.input[0])
        k, k_scale = chain(qk.input[1])
        v, v_scale = chain(pv[0].input[1])
        if v_scale != 1.0 or not all(_projected(producer, consts, t) for t in (q, k, v)):
            continue
        found.append(
            _Candidate(
                q=q,
                k=k,
                v=v,
                q_heads=unscaled(qk.input[0]),
                k_heads=unscaled(qk.input[1]),
                v_heads=pv[0].input[1],
                mask_bias=mask_bias,
                context=pv[0].output[0],
                out=out,
                scale=score_scale * q_scale * k_scale,
            )
        )
    return found


def _projected(producer: dict[str, Any], consts: dict[str, np.ndarray], tensor: str) -> bool:
    """Whether ``tensor`` is MatMul(x, W) or that plus a bias: attention whose Q or K pass
    through anything else (rotary embeddings, norms, grouped heads) is not a candidate."""
    node = producer.get(tensor)
    if node is not None and node.op_type == "Add":
        made = [producer.get(i) for i in node.input]
        node = next((n for n in made if n is not None and n.op_type == "MatMul"), None)
    return node is not None and node.op_type == "MatMul"


def _is_qk(producer: dict[str, Any], tensor: str, scalar: Any) -> bool:
    node = producer.get(tensor)
    while node is not None and node.op_type in ("Mul", "Div"):
        data = [i for i in node.input if scalar(i) is None]
        if len(data) != 1:
            return False
        node = producer.get(data[0])
    return node is not None and node.op_type == "MatMul"


def chain_scores(producer: dict[str, Any], tensor: str, scalar: Any) -> tuple[str, float]:
    """The QK^T MatMul's output under a scalar scaling of the scores, and that scaling."""
    scale = 1.0
    while (node := producer[tensor]).op_type in ("Mul", "Div"):
        data = next(i for i in node.input if scalar(i) is None)
        factor = scalar(next(i for i in node.input if i != data))
        scale *= 1 / factor if node.op_type == "Div" else factor
        tensor = data
    return tensor, scale


def _after_guard(probs: str, readers: dict[str, list[Any]]) -> str:
    """The probabilities after the exporter's NaN guard, Where(IsNaN(p), 0, p), if present."""
    for node in readers.get(probs, []):
        if node.op_type == "IsNaN":
            for where in readers.get(node.output[0], []):
                if where.op_type == "Where" and where.input[2] == probs:
                    return str(where.output[0])
    return probs


def _out_chain(context: str, readers: dict[str, list[Any]]) -> str | None:
    """The end of the Transpose/Reshape chain that merges the heads back (read only by it)."""
    tensor = context
    steps = 0
    while True:
        # Shape nodes only read the tensor's dims (TorchScript's dynamic reshapes); they die
        # with the chain they feed, and _complete refuses the graph if one outlives it.
        nexts = [n for n in readers.get(tensor, []) if n.op_type != "Shape"]
        if len(nexts) != 1 or nexts[0].op_type not in ("Reshape", "Transpose"):
            break
        tensor = nexts[0].output[0]
        steps += 1
    return tensor if steps else None


def _probe_feed(names: list[str]) -> dict[str, np.ndarray]:
    """Batch 3, seq 7: a full row, a right-padded and a left-padded one (token types 0)."""
    mask = np.array(
        [[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1]], dtype=np.int64
    )
    rng = np.random.default_rng(0)
    feed = {
        "input_ids": rng.integers(5, 100, size=mask.shape),
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(mask),
    }
    return {name: feed[name] for name in names}


def _session(path: Path) -> Any:
    """An unoptimized CPU session of ``path`` (values as the graph spells them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _complete(model: Any) -> bool:
    """Whether every tensor a node reads is still made by a node, an initializer or an input."""
    made = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    made |= {o for n in model.graph.node for o in n.output} | {""}
    return all(i in made for n in model.graph.node for i in n.input)


def _same_outputs(original: Path, fused: Path) -> bool:
    """Whether the fused graph's first output matches the original's at every real position."""
    before, after = _session(original), _session(fused)
    feed = _probe_feed([i.name for i in before.get_inputs()])
    want = before.run(None, feed)[0]
    got = after.run(None, feed)[0]
    if want.shape != got.shape:
        return False
    real = feed["attention_mask"].astype(bool)
    if want.ndim == 3:
        want, got = want[real], got[real]
    scale = max(float(np.abs(want).max()), 1e-6)
    return bool(np.abs(got - want).max() <= OUTPUT_TOLERANCE * scale)


def _verify(model: Any, path: Path, candidates: list[_Candidate]) -> list[_Candidate]:
    """The candidates whose layout chains and mask check out on a probe batch."""
    import onnx
    from onnx import TensorProto, helper

    names = [i.name for i in model.graph.input]
    if "attention_mask" not in names or any(n not in PROBE_INPUTS for n in names):
        return []
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = sorted(
        {
            t
            for c in candidates
            for t in (c.q, c.k, c.v, c.q_heads, c.k_heads, c.v_heads, c.mask_bias, c.context, c.out)
        }
    )
    present = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in present:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    feed = _probe_feed(names)
    # Saved beside the graph, so that its external data (if any) resolves.
    probe_path = path.with_name(path.stem + ".fusion-probe.onnx")
    onnx.save(probe, str(probe_path))
    try:
        session = _session(probe_path)
    finally:
        probe_path.unlink()
    values = dict(zip(wanted, session.run(wanted, feed), strict=True))
    keys = feed["attention_mask"].astype(bool)
    verified = []
    for c in candidates:
        q, k, v = values[c.q], values[c.k], values[c.v]
        qh, kh, vh = values[c.q_heads], values[c.k_heads], values[c.v_heads]
        if q.ndim != 3 or qh.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
            continue
        batch, seq, dim = q.shape
        heads = qh.shape[1]
        if heads * qh.shape[3] != dim:
            continue
        split = (batch, seq, heads, dim // heads)
        context = values[c.context]
        bias = (
            np.broadcast_to(values[c.mask_bias], (batch, 1, seq, seq))
            if values[c.mask_bias].ndim == 4 and values[c.mask_bias].shape[1] == 1
            else None
        )
        c.checks = {
            "q": np.array_equal(qh, q.reshape(split).transpose(0, 2, 1, 3)),
            "k": np.array_equal(kh, k.reshape(split).transpose(0, 2, 3, 1)),
            "v": np.array_equal(vh, v.reshape(split).transpose(0, 2, 1, 3)),
            "out": context.shape == (batch, heads, seq, dim // heads)
            and np.array_equal(values[c.out], context.transpose(0, 2, 1, 3).reshape(q.shape)),
            "mask": bias is not None
            and bool((bias[:, 0] == 0)[np.broadcast_to(keys[:, None, :], bias[:, 0].shape)].all())
            and bool(
                (bias[:, 0] <= MASKED)[np.broadcast_to(~keys[:, None, :], bias[:, 0].shape)].all()
            ),
        }
        if all(c.checks.values()):
            c.heads = heads
            verified.append(c)
    return verified


def _rewrite(model: Any, fused: list[_Candidate], base_dir: Path) -> None:
    """Replace each verified core by one MultiHeadAttention; drop what nothing reads any more."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import uses_external_data

    from slimembed.optimize.onnx_file import load_into

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    mask = "mha_key_padding_mask"
    new = [helper.make_node("Cast", ["attention_mask"], [mask], to=TensorProto.INT32)]
    for i, c in enumerate(fused):
        inputs = [c.q, c.k, c.v]
        biases = [_bias_of(producer, inits, readers, t) for t in inputs]
        bias_name = ""
        if all(b is not None for b in biases):
            # The projections' bias Adds move into the op (added while it splits heads).
            inputs = [b[0] for b in biases if b is not None]
            bias_name = f"mha_{i}_bias"
            parts = []
            for b in biases:
                assert b is not None
                tensor = TensorProto()
                tensor.CopyFrom(inits[b[1]])
                if uses_external_data(tensor):
                    load_into(tensor, base_dir)
                parts.append(numpy_helper.to_array(tensor))
            stacked = np.concatenate(parts)
            graph.initializer.append(numpy_helper.from_array(stacked.astype(np.float32), bias_name))
        new.append(
            helper.make_node(
                "MultiHeadAttention",
                [*inputs, bias_name, mask],
                [c.out],
                name=f"mha_{i}",
                domain="com.microsoft",
                num_heads=c.heads,
                scale=float(c.scale),
                mask_filter_value=MASK_FILTER,
            )
        )
    # Each MultiHeadAttention takes the place of the node whose output it now gives.
    by_out = {n.output[0]: n for n in new[1:]}
    rebuilt = [new[0]]
    for node in graph.node:
        hit = [o for o in node.output if o in by_out]
        rebuilt.append(by_out[hit[0]] if hit else node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    _drop_dead(model)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _bias_of(
    producer: dict[str, Any], inits: dict[str, Any], readers: dict[str, int], tensor: str
) -> tuple[str, str] | None:
    """(MatMul output, bias initializer) when ``tensor`` is Add(MatMul(x, W), b), b 1-D."""
    add = producer.get(tensor)
    if add is None or add.op_type != "Add":
        return None
    for slot in (0, 1):
        other, bias = add.input[slot], add.input[1 - slot]
        made = producer.get(other)
        if bias in inits and len(inits[bias].dims) == 1 and made and made.op_type == "MatMul":
            return other, bias
    return None


def _drop_dead(model: Any) -> None:
    """Remove nodes whose outputs nothing reads, and initializers nothing reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        alive = [n for n in graph.node if any(o in used for o in n.output)]
        if len(alive) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(alive)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
