"""Errors raised by slimembed.

Each subclasses the builtin that users already catch: an unknown model is also a ``ValueError``,
a missing or corrupt model file also an ``OSError``, an unavailable provider also a
``RuntimeError``, an input too long to be cut also a ``ValueError``. Invalid arguments
(``None`` or a non-string among texts) raise plain ``TypeError``/``ValueError``.
"""

from __future__ import annotations


class SlimembedError(Exception):
    """Base class of every error slimembed raises on its own account."""


class UnknownModelError(SlimembedError, ValueError):
    """The model name is neither a local directory, a registered model nor a hub id."""


class ModelFileError(SlimembedError, OSError):
    """A model file is missing, unreadable or corrupt; the message names the file."""


class ManifestError(ModelFileError):
    """The manifest is missing, of an unknown version, or breaks the model-directory contract."""


class QuantizeError(SlimembedError, ValueError):
    """A graph cannot be quantized or fused as asked, or its quantized graph fails its checks
    (non-finite vectors, or vectors that change with the batch)."""


class ProviderError(SlimembedError, RuntimeError):
    """An execution provider was requested (CUDA) that this onnxruntime cannot give."""


class NonFiniteError(SlimembedError, ValueError):
    """The model gave NaN or infinite values for a text; ``index`` is its position."""

    def __init__(self, index: int) -> None:
        super().__init__(
            f"the model's output for texts[{index}] is not finite (NaN or infinity); the graph "
            "or its weights are broken for this input"
        )
        self.index = index

    def __reduce__(self) -> tuple[type[NonFiniteError], tuple[int]]:
        # Rebuilt from its index when it crosses a process boundary (parallel embedding).
        return (NonFiniteError, (self.index,))


class TooLongError(SlimembedError, ValueError):
    """An input is longer than the model's max length and may not be cut: a rerank query
    (queries are never cut), or a text the caller asked not to truncate; ``index`` is its
    position. The server answers it with 413."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index

    def __reduce__(self) -> tuple[type[TooLongError], tuple[str, int]]:
        return (TooLongError, (str(self), self.index))


class DimensionMismatchError(SlimembedError, ValueError):
    """A vector store's collection or table holds vectors of another dim than the model gives
    (``found`` and ``dim``): writing into it, or searching it, would mix two models' vectors."""

    def __init__(self, store: str, found: int, model: str, dim: int) -> None:
        super().__init__(
            f"{store} holds {found}-d vectors but the model {model!r} gives {dim}-d vectors: "
            "use the model that filled it, or a new collection or table. TextEmbedding() with "
            "no name is slimembed's 256-d static default, not fastembed's 384-d "
            "BAAI/bge-small-en-v1.5."
        )
        self.store, self.found, self.model, self.dim = store, found, model, dim

    def __reduce__(self) -> tuple[type[DimensionMismatchError], tuple[str, int, str, int]]:
        return (DimensionMismatchError, (self.store, self.found, self.model, self.dim))
