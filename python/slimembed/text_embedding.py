"""The user API: ``TextEmbedding``, named and shaped after fastembed's so a user changes one import.

Performance notes:
- Texts are tokenized a chunk at a time in one Rust call (GIL released, parallel), kept unpadded
  in Rust, sorted by length, and padded per batch; the original order is restored before any
  vector is yielded.
- Pooling, normalization and Matryoshka truncation are one Rust call per batch.
- The only per-text Python work is the type check at the edge.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence, Sized
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed import _core, env, hub, registry
from slimembed.backends import Backend, load_backend
from slimembed.manifest import RAW, Prompt, PromptPlan

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS = 8192
# Texts tokenized and length-sorted together; larger chunks pad less but yield later.
CHUNK_SIZE = 2048
# The embedded default: a static model distilled from all-MiniLM-L6-v2 (see README).
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"

Vector = npt.NDArray[np.float32]


class TextEmbedding:
    """Embed texts with a slimembed model directory on ONNX Runtime (CPU or CUDA).

    Args:
        model_name: a model directory made by ``slimembed export`` or ``slimembed distill``, or
            a Hugging Face id of a repository holding one (downloaded into ``cache_dir``).
            ``None`` loads the embedded default, a static model shipped inside the package
            that works offline.
        cache_dir: where hub downloads are kept (default: ``SLIMEMBED_CACHE_DIR`` or
            ``~/.cache/slimembed``).
        threads: worker threads: ONNX Runtime intra-op threads, or the Rust pool of a static
            model (default: ``SLIMEMBED_THREADS``, else all cores).
        providers: ONNX Runtime execution providers, e.g. ``["CUDAExecutionProvider"]``.
        cuda: use the CUDA provider; raises ProviderError where it is not available.
        device_id: the CUDA device.
        lazy_load: load the graph on first use instead of now.
        revision: hub revision (branch, tag or commit) to pin.
        local_files_only: never download; use the cache only.
        max_tokens: padded tokens per batch at most (bounds memory for long texts).
        precision: which graph of the directory to run (``"fp32"``, ``"int8"``, ``"fp16"``);
            default: INT8 on CPU and FP16 on CUDA where the directory holds them, else its
            main graph. ``self.precision`` says which one runs.
    """

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
        cuda: bool = False,
        device_id: int = 0,
        lazy_load: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        precision: str | None = None,
    ) -> None:
        check_limits(max_tokens, threads)
        self.model_name = "default" if model_name is None else str(model_name)
        self.model_dir, self.manifest = hub.open_model(
            DEFAULT_MODEL_DIR if model_name is None else model_name,
            task="embed",
            cache_dir=cache_dir,
            revision=revision,
            local_files_only=local_files_only,
        )
        self.threads = env.default_threads() if threads is None else threads
        self.max_tokens = max_tokens
        self.backend: Backend = load_backend(
            self.model_dir,
            self.manifest,
            precision=precision,
            providers=providers,
            cuda=cuda,
            device_id=device_id,
            threads=self.threads,
            max_tokens=max_tokens,
            lazy_load=lazy_load,
            name=self.model_name,
        )
        self.precision = self.backend.precision

    # ---- fastembed-compatible API -------------------------------------------------------

    @property
    def embedding_size(self) -> int:
        """Dimension of the vectors ``embed`` yields without ``dim``."""
        return self.manifest.dim

    @classmethod
    def list_supported_models(cls) -> list[dict[str, Any]]:
        """The registry of known models, one dict per model (as fastembed's)."""
        return [spec.to_dict() for spec in registry.all_specs()]

    @classmethod
    def add_custom_model(
        cls,
        model: str,
        source: str,
        dim: int,
        *,
        family: str = "encoder-mean",
        pooling: str | None = None,
        normalization: bool | None = None,
        max_length: int = 512,
        padding_side: str | None = None,
        attention: str | None = None,
        query_template: str | None = None,
        document_template: str | None = None,
        instruction: str | None = None,
        description: str = "",
        license: str = "",
    ) -> registry.ModelSpec:
        """Register a model (as fastembed's ``add_custom_model``) so that
        ``slimembed export MODEL`` exports it from ``source`` (a hub id) with these rules and
        ``TextEmbedding(MODEL)`` loads the export.

        ``family`` picks a recipe from ``registry.FAMILIES`` (``"qwen3-embedding"``,
        ``"gritlm"``, …); the other arguments replace its rules. Registering a name again with
        other settings raises ValueError.
        """
        base = registry.family(family)
        query = document = None
        if query_template is not None or instruction is not None:
            query = replace(
                base.query,
                template=query_template or base.query.template,
                instruction=instruction if instruction is not None else base.query.instruction,
            )
        if document_template is not None:
            document = replace(base.document, template=document_template)
        return registry.register(
            registry.ModelSpec(
                model,
                source,
                family,
                dim,
                max_length,
                license,
                description,
                query=query,
                document=document,
                pooling=pooling,
                normalize=normalization,
                padding_side=padding_side,
                attention=attention,
            )
        )

    def embed(
        self,
        texts: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        dim: int | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """Yield one float32 vector per text (a document), in input order.

        As in fastembed, ``embed`` embeds documents: the model's document prompt applies (plain
        text for most encoders; GritLM's ``<|embed|>``, SGPT's braces, e5-mistral's appended
        EOS), exactly as ``passage_embed``. ``encode`` without ``prompt`` embeds raw text.

        A bare string is one text. An empty string is embedded like any other: its vector comes
        from the special tokens alone, or is all zeros where the tokenizer adds none. Texts
        longer than the model's max length are truncated. ``dim`` keeps the first ``dim``
        components (Matryoshka) and renormalizes them when the model normalizes. Raises
        TypeError naming the position of ``None`` or a non-string.
        """
        return self._stream(texts, self.manifest.document, None, batch_size, dim, progress)

    def query_embed(
        self,
        query: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        instruction: str | None = None,
        dim: int | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """Like ``embed`` with the model's query prompt.

        ``instruction`` replaces the prompt's default task instruction.
        """
        return self._stream(query, self.manifest.query, instruction, batch_size, dim, progress)

    def passage_embed(
        self,
        texts: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        dim: int | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """The same as ``embed``: the model's document prompt (never a query instruction)."""
        return self._stream(texts, self.manifest.document, None, batch_size, dim, progress)

    def encode(
        self,
        texts: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        prompt: str | None = None,
        instruction: str | None = None,
        dim: int | None = None,
        progress: bool = False,
    ) -> npt.NDArray[np.float32]:
        """All vectors as one ``(n, dim)`` float32 array.

        ``prompt`` is ``None`` (the raw text, no prompt), ``"query"`` or ``"document"``.
        """
        plan = self._plan(prompt, instruction)
        width = self._check_dim(dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = list(self._chunks(_as_iterable(texts), plan, batch_size, dim, progress))
        if not chunks:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks)

    # ---- the pipeline --------------------------------------------------------------------

    def _check_dim(self, dim: int | None) -> int:
        if dim is None:
            return self.manifest.dim
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 < dim <= self.manifest.dim:
            raise ValueError(
                f"dim must be an integer between 1 and {self.manifest.dim}, got {dim!r}"
            )
        return dim

    def _stream(
        self,
        texts: str | Iterable[str],
        prompt: Prompt | None,
        instruction: str | None,
        batch_size: int,
        dim: int | None,
        progress: bool,
    ) -> Iterator[Vector]:
        # Validate eagerly so bad arguments fail at the call, not at the first next().
        self._check_dim(dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan = prompt.plan(instruction) if prompt else RAW
        chunks = self._chunks(_as_iterable(texts), plan, batch_size, dim, progress)
        return (row for chunk in chunks for row in chunk)

    def _chunks(
        self,
        texts: Iterable[str],
        plan: PromptPlan,
        batch_size: int,
        dim: int | None,
        progress: bool,
    ) -> Iterator[npt.NDArray[np.float32]]:
        bar = _progress_bar(texts) if progress else None
        iterator = iter(texts)
        offset = 0
        while chunk := list(islice(iterator, CHUNK_SIZE)):
            check_texts(chunk, offset)
            yield self.backend.embed(chunk, plan, batch_size, dim)
            offset += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()

    def tokenize(
        self,
        texts: str | Iterable[str],
        *,
        prompt: str | None = None,
        instruction: str | None = None,
    ) -> _core.Encoded:
        """Token ids exactly as the model sees them: prompt, special and inserted ids included,
        truncated to the max length; ``prompt`` and ``instruction`` as in ``encode``.

        ``Encoded.row(i)`` gives text ``i``'s ids; ``Encoded.pad`` also gives the number of
        leading tokens left out of pooling (an excluded instruction).
        """
        items = list(_as_iterable(texts))
        check_texts(items, 0)
        return self.backend.encode(items, self._plan(prompt, instruction))

    def _plan(self, prompt: str | None, instruction: str | None) -> PromptPlan:
        prompts = {None: None, "query": self.manifest.query, "document": self.manifest.document}
        if prompt not in prompts:
            raise ValueError(f"prompt must be None, 'query' or 'document', got {prompt!r}")
        if instruction is not None and prompt != "query":
            raise ValueError("an instruction applies to queries only: pass prompt='query'")
        chosen = prompts[prompt]
        return chosen.plan(instruction) if chosen else RAW

    def __repr__(self) -> str:
        m = self.manifest
        return f"TextEmbedding({self.model_name!r}, dim={m.dim}, pooling={m.pooling!r})"


def check_limits(max_tokens: int, threads: int | None) -> None:
    """The argument checks TextEmbedding and TextCrossEncoder share."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


def _as_iterable(texts: str | Iterable[str]) -> Iterable[str]:
    """A bare string is one text (as in fastembed); anything else must be iterable."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise TypeError(
            f"texts must be a string or an iterable of strings, got {type(texts).__name__}"
        )
    return texts


def check_texts(chunk: list[Any], offset: int) -> None:
    """TypeError naming the position (``offset`` + index) of the first non-string."""
    for i, text in enumerate(chunk):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{offset + i}] is {type(text).__name__}, not str; "
                "every text must be a string"
            )


def _progress_bar(texts: Iterable[str]) -> Any:
    from tqdm.auto import tqdm

    total = len(texts) if isinstance(texts, Sized) else None
    return tqdm(total=total, unit="text", desc="embedding")
