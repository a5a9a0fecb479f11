"""The parity check every export passes before its manifest is written.

Reference: the PyTorch model run on each probe text alone, unpadded, with the source
tokenizer's ids, pooled by the formulas below. Candidate: slimembed's runtime on the exported
directory, once with all probe texts in one padded batch (the manifest's padding side) and once
one text at a time. Token ids from the Rust tokenizer must equal the source tokenizer's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimembed import Manifest, TextEmbedding, _core
from slimembed.optimize.fidelity import PROBE_TEXTS, cosines
from slimembed.runner import Batch, GraphRunner
from slimembed_export.errors import ExportError

if TYPE_CHECKING:
    import torch


def pool_reference(hidden: torch.Tensor, mode: str, normalize: bool) -> np.ndarray:
    """Pool one unpadded (seq, dim) sequence the way the source libraries define each mode."""
    import torch

    h = hidden.double()
    n = h.shape[0]
    if mode == "cls":
        vec = h[0]
    elif mode == "mean":
        vec = h.mean(0)
    elif mode == "weighted_mean":
        weights = torch.arange(1, n + 1, dtype=torch.float64)[:, None]
        vec = (h * weights).sum(0) / weights.sum()
    elif mode == "last_token":
        vec = h[-1]
    else:
        raise ExportError(f"no reference for pooling {mode!r}")
    if normalize:
        vec = torch.nn.functional.normalize(vec, dim=0)
    return vec.numpy()


def check_parity(
    model_dir: Path,
    manifest: Manifest,
    torch_model: torch.nn.Module,
    hf_tokenizer: Any,
    min_cosine: float,
    bidirectional: bool = False,
) -> dict[str, Any]:
    """Measure the exported directory against the PyTorch model; raise if below ``min_cosine``.

    ``bidirectional``: the reference runs the model with ``config.is_causal = False``, which
    transformers turns into a bidirectional mask (its own code, not the graph's).
    """
    import torch

    texts = list(PROBE_TEXTS)
    runtime = TextEmbedding(model_dir)
    tokenizer = _core.Tokenizer(model_dir / manifest.tokenizer_file)
    ours = tokenizer.encode(
        texts, add_special_tokens=manifest.add_special_tokens, max_length=manifest.max_length
    )
    reference = []
    mismatched = []
    for i, text in enumerate(texts):
        ids = hf_tokenizer(
            text,
            add_special_tokens=manifest.add_special_tokens,
            truncation=manifest.max_length is not None,
            max_length=manifest.max_length,
        )["input_ids"]
        if list(ids) != ours.row(i).tolist():
            mismatched.append(i)
        if not ids:  # no tokens at all: the runtime's documented zero vector
            reference.append(np.zeros(manifest.dim))
            continue
        with torch.no_grad(), _attention(torch_model, bidirectional):
            tensor = torch.tensor([ids], dtype=torch.long)
            hidden = torch_model(input_ids=tensor, attention_mask=torch.ones_like(tensor))
        reference.append(
            pool_reference(hidden.last_hidden_state[0], manifest.pooling, manifest.normalize)
        )
    if mismatched:
        raise ExportError(
            f"the Rust tokenizer's ids differ from the source tokenizer's for probe texts "
            f"{[texts[i][:40] for i in mismatched]}"
        )
    ref = np.stack(reference)
    batched = runtime.encode(texts, batch_size=len(texts))
    single = runtime.encode(texts, batch_size=1)
    figures = {
        "probe_texts": len(texts),
        "tokenizer_ids_equal": True,
        "batch_min_cosine": _min_cosine(ref, batched),
        "single_min_cosine": _min_cosine(ref, single),
        "max_abs_diff": float(np.abs(ref - batched).max()),
        "padding_side": manifest.padding_side,
    }
    worst = min(figures["batch_min_cosine"], figures["single_min_cosine"])
    if not worst >= min_cosine:
        raise ExportError(
            f"exported graph does not match the PyTorch model: min cosine {worst:.7f} < "
            f"{min_cosine} (figures: {figures})"
        )
    return figures


@contextlib.contextmanager
def _attention(model: Any, bidirectional: bool) -> Iterator[None]:
    """Run ``model`` bidirectionally inside the block (transformers' ``is_causal`` switch)."""
    if not bidirectional:
        yield
        return
    before = getattr(model.config, "is_causal", None)
    model.config.is_causal = False
    try:
        yield
    finally:
        if before is None:
            del model.config.is_causal
        else:
            model.config.is_causal = before


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(cosines(a, b).min())


def check_static_parity(
    model_dir: Path,
    manifest: Manifest,
    source: Any,
    tensors: dict[str, np.ndarray],
    min_cosine: float,
) -> dict[str, Any]:
    """A static export against the source formula (numpy, Python tokenizers) on its own table,
    its fidelity to the float32 source table, and the portable ONNX graph against the runtime."""
    from slimembed import tables
    from slimembed_export.static import reference_embed

    texts = list(PROBE_TEXTS)
    ours = TextEmbedding(model_dir).encode(texts, batch_size=4)
    exact = _min_cosine(reference_embed(source, texts, tables.dequantize(tensors)), ours)
    to_fp32 = cosines(reference_embed(source, texts, source.embeddings), ours)

    # The portable graph takes every token; the dropped id is masked out of the mean instead.
    runner = GraphRunner(model_dir, manifest, providers=["CPUExecutionProvider"])
    tokenizer = _core.Tokenizer(model_dir / manifest.tokenizer_file)
    batch = runner.pad(tokenizer.encode(texts, add_special_tokens=False), np.arange(len(texts)))
    mask = batch.mask.copy()
    if manifest.skip_id is not None:
        mask[batch.ids == manifest.skip_id] = 0
    hidden = runner.run(Batch(batch.ids, mask, batch.skip))
    graph = _core.pool(hidden, mask, "mean", normalize=manifest.normalize)
    figures = {
        "probe_texts": len(texts),
        "min_cosine_to_source_formula": exact,
        "graph_min_cosine_to_runtime": _min_cosine(graph, ours),
        "fp32_cosine_mean": float(to_fp32.mean()),
        "fp32_cosine_min": float(to_fp32.min()),
        "table_bytes": (model_dir / manifest.table_file).stat().st_size
        if manifest.table_file
        else 0,
    }
    worst = min(exact, figures["graph_min_cosine_to_runtime"])
    if not worst >= min_cosine:
        raise ExportError(f"static export does not match its source formula (figures: {figures})")
    return figures


def sgpt_score(
    lm: Any, tokenizer: Any, template: str, query: str, document: str, max_length: int | None
) -> float:
    """One pair's score by SGPT's formula (crossencoder/beir/sgptce.py), unpadded: the sum of
    the query tokens' log-probabilities after the prompt holding the document."""
    import torch

    head = template.partition("{document}")[0]
    keep = len(tokenizer(head, add_special_tokens=False)["input_ids"])
    context = tokenizer(template.replace("{document}", document), add_special_tokens=False)
    query_ids = tokenizer(query, add_special_tokens=False)["input_ids"]
    ctx = list(context["input_ids"])
    tail = ctx[keep:] + list(query_ids)
    if max_length is not None:
        tail = tail[-(max_length + 1 - keep) :]
    inputs = (ctx[:keep] + tail)[:-1]
    with torch.no_grad():
        logits = lm(input_ids=torch.tensor([inputs])).logits[0].double()
    logprobs = torch.log_softmax(logits[len(inputs) - len(query_ids) :], dim=-1)
    picked = logprobs.gather(-1, torch.tensor(query_ids)[:, None])
    return float(picked.sum())


def check_rerank_parity(
    model_dir: Path, manifest: Manifest, lm: Any, tokenizer: Any, max_diff: float
) -> dict[str, Any]:
    """Scores of probe pairs from the exported reranker, batched and one pair at a time,
    against ``sgpt_score`` on the PyTorch model; raise past ``max_diff``."""
    from slimembed.rerank import TextCrossEncoder

    assert manifest.rerank_template is not None
    queries = [t for t in PROBE_TEXTS if t.strip()][:6]
    pairs = [(q, d) for q in queries for d in PROBE_TEXTS[::2]]
    want = np.array(
        [
            sgpt_score(lm, tokenizer, manifest.rerank_template, q, d, manifest.max_length)
            for q, d in pairs
        ]
    )
    reranker = TextCrossEncoder(model_dir)
    batched = np.array(list(reranker.rerank_pairs(pairs, batch_size=len(pairs))))
    single = np.array(list(reranker.rerank_pairs(pairs, batch_size=1)))
    figures = {
        "probe_pairs": len(pairs),
        "batch_max_abs_diff": float(np.abs(batched - want).max()),
        "single_max_abs_diff": float(np.abs(single - want).max()),
        "padding_side": manifest.padding_side,
    }
    worst = max(figures["batch_max_abs_diff"], figures["single_max_abs_diff"])
    if not worst <= max_diff:
        raise ExportError(
            f"rerank graph does not match the PyTorch model: max |score diff| {worst:.2e} > "
            f"{max_diff} (figures: {figures})"
        )
    return figures
