"""The texts every graph slimembed makes is checked on, and the cosine its figures are in.

Shared by the export's parity check (slimembed_export.verify) and the quantizer, which need
them without PyTorch."""

from __future__ import annotations

import numpy as np

_LONG = " ".join(
    f"Sentence {i} of a long document about ONNX graphs, tokenizers and pooling." for i in range(60)
)
# Short, long (past most max lengths), empty, non-Latin and odd spacing.
PROBE_TEXTS = (
    "Hello world",
    "What is the capital of France?",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "",
    "Embedding models map text to vectors; similar meanings lie close together.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "机器学习是人工智能的一个分支。",
    "Привет, как дела?",
    "   leading and trailing spaces   ",
    "a",
    _LONG,
    "Numbers 12345 and symbols #@!$% mixed with words.",
)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine in float64; two zero vectors count as equal (1.0)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a64, axis=1), np.linalg.norm(b64, axis=1)
    cos: np.ndarray = (a64 * b64).sum(1) / np.maximum(na * nb, 1e-30)
    cos[(na == 0) & (nb == 0)] = 1.0
    return cos
