"""``slimembed distill``: a static embedding model made from an exported transformer, no torch.

The recipe is model2vec's: every token of the vocabulary is run through the model on its own,
between the special tokens the tokenizer adds (``[CLS] token [SEP]``), and pooled as the model
pools; PCA reduces the vectors to ``dims`` (sign-fixed components, as model2vec does); each
token's vector is scaled by a SIF weight ``a / (a + p)`` with ``p`` a Zipf probability from the
token's rank in the vocabulary (its id). At run time the static model averages the token
vectors of a text and L2-normalizes, dropping the unknown token, as model2vec does.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed import _core, tables
from slimembed.backends import TransformerBackend
from slimembed.manifest import Manifest, model_file
from slimembed.runner import Batch
from slimembed.static_model import unknown_token_id, write_static_model
from slimembed.text_embedding import TextEmbedding

DEFAULT_SIF = 1e-4
# Placeholder tokens that never occur in text (BERT's [unused0]...), left out as model2vec does.
UNUSED_TOKEN = re.compile(r"\[unused\d+\]")


def distilled_ids(tokenizer_file: Path) -> npt.NDArray[np.int64]:
    """Token ids that get a vector: the model's vocabulary without special tokens and unused
    placeholders. Their order (by id) is the Zipf rank."""
    data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
    special = {int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special")}
    vocab = data["model"]["vocab"]
    pairs = vocab.items() if isinstance(vocab, dict) else ((t[0], i) for i, t in enumerate(vocab))
    kept = sorted(
        int(i) for tok, i in pairs if int(i) not in special and not UNUSED_TOKEN.fullmatch(tok)
    )
    return np.array(kept, dtype=np.int64)


def token_vectors(
    model: TextEmbedding,
    token_ids: npt.NDArray[np.int64],
    batch_size: int = 1024,
    progress: bool = False,
) -> npt.NDArray[np.float32]:
    """One pooled, unnormalized vector per token id, each token alone between special tokens."""
    backend = model.backend
    if not isinstance(backend, TransformerBackend):
        raise ValueError(f"{model.model_name} is a static model; distill needs a transformer")
    tokenizer, runner = backend.tokenizer, backend.runner
    m = model.manifest
    vocab = len(token_ids)
    # Where a lone token sits among the special tokens: encode it between them twice.
    a = tokenizer.encode([""], prefix_ids=[0]).row(0)
    b = tokenizer.encode([""], prefix_ids=[1]).row(0)
    slot = int(np.flatnonzero(a != b)[0])
    template = np.tile(a, (vocab, 1))
    template[:, slot] = token_ids
    mask = np.ones_like(template[:batch_size])
    positions = np.tile(np.arange(template.shape[1], dtype=np.int64), (batch_size, 1))
    out = np.empty((vocab, m.dim), dtype=np.float32)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=vocab, unit="token", desc="distilling")
    for start in range(0, vocab, batch_size):
        ids = template[start : start + batch_size]
        n = len(ids)
        batch = Batch(ids, mask[:n], np.zeros(n, dtype=np.int64), positions[:n])
        hidden = runner.run(batch)
        out[start : start + n] = _core.pool(hidden, mask[:n], m.pooling, normalize=False)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return out


def sif_weights(n: int, coefficient: float = DEFAULT_SIF) -> npt.NDArray[np.float64]:
    """SIF weights from Zipf's law over vocabulary rank (rank = token id, as model2vec)."""
    inv_rank = 1.0 / np.arange(2, n + 2)
    proba = inv_rank / inv_rank.sum()
    weights: npt.NDArray[np.float64] = coefficient / (coefficient + proba)
    return weights


def pca(vectors: npt.NDArray[np.floating[Any]], dims: int) -> tuple[npt.NDArray[np.float64], float]:
    """Project onto the top ``dims`` principal components; returns the scores and the share
    of variance they keep. Each component's sign makes its largest score positive."""
    x = vectors.astype(np.float64)
    centered = x - x.mean(axis=0)
    cov = centered.T @ centered / max(len(x) - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1][:dims]
    scores = centered @ eigvecs[:, order]
    peak = np.argmax(np.abs(scores), axis=0)
    scores *= np.sign(scores[peak, np.arange(scores.shape[1])])
    kept = float(np.clip(eigvals[order], 0, None).sum() / np.clip(eigvals, 0, None).sum())
    return scores, kept


def distill(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    dims: int = 256,
    precision: str = "fp32",
    sif_coefficient: float = DEFAULT_SIF,
    batch_size: int = 1024,
    threads: int | None = None,
    progress: bool = False,
) -> Manifest:
    """Distill the transformer model directory ``model_dir`` into a static one at ``out_dir``."""
    if not 0 < sif_coefficient < 1:
        raise ValueError(f"sif_coefficient must be between 0 and 1, got {sif_coefficient}")
    if precision not in tables.PRECISIONS:
        raise ValueError(f"precision must be one of {tables.PRECISIONS}, got {precision!r}")
    model = TextEmbedding(model_dir, threads=threads)
    source = model.manifest
    if source.kind != "transformer":
        raise ValueError(f"{model_dir} is a {source.kind} model; distill needs a transformer")
    if not 0 < dims <= source.dim:
        raise ValueError(f"dims must be between 1 and {source.dim}, got {dims}")
    tokenizer_file = model_file(Path(model.model_dir), source.tokenizer_file, "tokenizer_file")
    token_ids = distilled_ids(tokenizer_file)
    vectors = token_vectors(model, token_ids, batch_size=batch_size, progress=progress)
    reduced, kept = pca(vectors, dims)
    # Tokens left out (special, unused) keep a zero row; the rest are PCA'd and SIF-weighted.
    table = np.zeros((model.backend.tokenizer.vocab_size, dims), dtype=np.float32)
    table[token_ids] = reduced * sif_weights(len(reduced), sif_coefficient)[:, None]

    manifest = write_static_model(
        Path(out_dir),
        tables.quantize(table, precision),
        tokenizer_file,
        precision=precision,
        normalize=True,
        skip_id=unknown_token_id(tokenizer_file),
        source={
            "id": f"distilled from {source.source.get('id', model_dir)}",
            "distilled_from": source.source,
            "method": "slimembed distill: per-token embeddings, PCA, Zipf/SIF weights",
            "dims": dims,
            "sif_coefficient": sif_coefficient,
            "pca_variance_kept": kept,
            "vocabulary": len(table),
            "distilled_tokens": len(token_ids),
        },
    )
    manifest.save(Path(out_dir))
    return manifest
