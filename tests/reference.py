"""Plain numpy versions of the Rust kernels, written from their definitions, for the tests."""

from __future__ import annotations

import numpy as np

from benchmarks.datasets import scifact, sts


def pool(
    hidden: np.ndarray,
    mask: np.ndarray,
    mode: str,
    skip: np.ndarray | None = None,
    normalize: bool = False,
    dim: int | None = None,
) -> np.ndarray:
    batch, _, full = hidden.shape
    out = np.zeros((batch, dim or full), dtype=np.float64)
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        ranks = np.arange(1, len(real) + 1)
        keep = ranks > (0 if skip is None else skip[b])
        real, ranks = real[keep], ranks[keep]
        if len(real) == 0:
            continue
        h = hidden[b, real].astype(np.float64)
        if mode == "cls":
            vec = h[0]
        elif mode == "last_token":
            vec = h[-1]
        elif mode == "mean":
            vec = h.mean(0)
        elif mode == "weighted_mean":
            vec = (h * ranks[:, None]).sum(0) / ranks.sum()
        else:
            raise ValueError(mode)
        out[b] = vec[: dim or full]
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.maximum(norms, 1e-12)
    return out.astype(np.float32)


def pad(rows: list[list[int]], side: str, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    seq = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), seq), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), seq), dtype=np.int64)
    for b, row in enumerate(rows):
        if not row:
            continue
        if side == "right":
            ids[b, : len(row)], mask[b, : len(row)] = row, 1
        else:
            ids[b, -len(row) :], mask[b, -len(row) :] = row, 1
    return ids, mask


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64; two zero rows count as equal."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-300)
    cos[(na == 0) & (nb == 0)] = 1.0
    return cos


def mixed_texts() -> list[str]:
    """Short English, German, Chinese and Russian sentences, SciFact abstracts longer than
    the max length, and an empty string."""
    texts = []
    for name in ("en-test", "de-test", "zh-test", "ru-test"):
        texts += sts(name).sentences1[:5]
    return [*texts, *scifact().docs[:4], ""]
