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
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from dataclasses import replace
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from slimembed import _core, env, hub, registry
from slimembed.batching import plan_batches
from slimembed.errors import ModelFileError, ProviderError
from slimembed.manifest import Manifest, Prompt
from slimembed.session import choose_precision, create_session

DEFAULT_BATCH_SIZE = 256
DEFAULT_MAX_TOKENS = 8192
# Texts tokenized and length-sorted together; larger chunks pad less but yield later.
CHUNK_SIZE = 2048
# The embedded default: a static model distilled from all-MiniLM-L6-v2 (see README).
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"

Vector = npt.NDArray[np.float32]
T = TypeVar("T")


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
        self.model_dir: Path = hub.resolve_model(
            DEFAULT_MODEL_DIR if model_name is None else model_name,
            cache_dir=cache_dir,
            revision=revision,
            local_files_only=local_files_only,
        )
        self.manifest = Manifest.load(self.model_dir)
        if self.manifest.task != "embed":
            raise ModelFileError(
                f"{self.model_dir} is a {self.manifest.task} model: load it with TextCrossEncoder"
            )
        self.threads = env.default_threads() if threads is None else threads
        self.max_tokens = max_tokens
        self._session_args: dict[str, Any] = {
            "providers": providers,
            "cuda": cuda,
            "device_id": device_id,
            "threads": self.threads,
        }
        m = self.manifest
        if m.kind == "static":
            if precision not in (None, m.precision):
                raise ValueError(
                    f"{self.model_name} is a static {m.precision} table; precision={precision!r} "
                    "is not available"
                )
            self.precision = m.precision
        else:
            self.precision, self._session_args["graph_file"] = choose_precision(
                m, precision, providers, cuda
            )
        tokenizer_path = self.model_dir / m.tokenizer_file
        self._tokenizer = _native(_core.Tokenizer, tokenizer_path)
        self._static: _core.StaticModel | None = None
        if m.kind == "static":
            if cuda or providers:
                raise ProviderError(
                    f"{self.model_name} is a static model: it runs on CPU in slimembed's Rust "
                    "core, without ONNX Runtime providers; drop cuda=/providers="
                )
            assert m.table_file is not None  # the manifest checks it
            table_path = self.model_dir / m.table_file
            self._static = _native(
                lambda p: _core.StaticModel(
                    self._tokenizer,
                    p,
                    add_special_tokens=m.add_special_tokens,
                    skip_id=m.skip_id,
                    normalize=m.normalize,
                    threads=self.threads,
                ),
                table_path,
            )
        self._session: Any = None
        self._lock = threading.Lock()
        if not lazy_load and self._static is None:
            self._load()

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
        chosen = self._prompt(prompt, instruction)
        width = self._check_dim(dim)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = list(
            self._chunks(_as_iterable(texts), chosen, instruction, batch_size, dim, progress)
        )
        if not chunks:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks)

    # ---- the pipeline --------------------------------------------------------------------

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                self._session = create_session(self.model_dir, self.manifest, **self._session_args)
            return self._session

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
        chunks = self._chunks(_as_iterable(texts), prompt, instruction, batch_size, dim, progress)
        return (row for chunk in chunks for row in chunk)

    def _chunks(
        self,
        texts: Iterable[str],
        prompt: Prompt | None,
        instruction: str | None,
        batch_size: int,
        dim: int | None,
        progress: bool,
    ) -> Iterator[npt.NDArray[np.float32]]:
        head, tail = prompt.split(instruction) if prompt else ("", "")
        bar = _progress_bar(texts) if progress else None
        iterator = iter(texts)
        offset = 0
        while chunk := list(islice(iterator, CHUNK_SIZE)):
            _check_texts(chunk, offset)
            yield self._embed_chunk(chunk, prompt, head, tail, batch_size, dim)
            offset += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()

    def _embed_chunk(
        self,
        texts: list[str],
        prompt: Prompt | None,
        head: str,
        tail: str,
        batch_size: int,
        dim: int | None,
    ) -> npt.NDArray[np.float32]:
        m = self.manifest
        if self._static is not None:
            wrapped = [head + t + tail for t in texts] if (head or tail) else texts
            return self._static.embed(wrapped, max_length=m.max_length, dim=dim)
        exclude = _excludes_instruction(prompt, head)
        encoded = self._encode(texts, prompt, head, tail)
        out = np.zeros((len(texts), dim or m.dim), dtype=np.float32)
        positions = "position_ids" in m.graph_inputs
        lengths = encoded.lengths()
        # A text with no tokens at all keeps the zero vector; the graph never sees seq = 0.
        nonempty = np.flatnonzero(lengths)
        for batch in plan_batches(lengths[nonempty], batch_size, self.max_tokens):
            rows = nonempty[batch]
            ids, mask, skip, pos = encoded.pad(
                rows, padding_side=m.padding_side, pad_id=m.pad_id, positions=positions
            )
            out[rows] = _core.pool(
                self.hidden_states(ids, mask, pos),
                mask,
                m.pooling,
                skip=skip if exclude else None,
                normalize=m.normalize,
                dim=dim,
            )
        return out

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
        chosen = self._prompt(prompt, instruction)
        items = list(_as_iterable(texts))
        _check_texts(items, 0)
        head, tail = chosen.split(instruction) if chosen else ("", "")
        return self._encode(items, chosen, head, tail)

    def _prompt(self, prompt: str | None, instruction: str | None) -> Prompt | None:
        prompts = {None: None, "query": self.manifest.query, "document": self.manifest.document}
        if prompt not in prompts:
            raise ValueError(f"prompt must be None, 'query' or 'document', got {prompt!r}")
        if instruction is not None and prompt != "query":
            raise ValueError("an instruction applies to queries only: pass prompt='query'")
        return prompts[prompt]

    def _encode(
        self, texts: list[str], prompt: Prompt | None, head: str, tail: str
    ) -> _core.Encoded:
        options = self._encode_options(prompt)
        if _excludes_instruction(prompt, head):
            return self._tokenizer.encode(
                [t + tail for t in texts] if tail else texts,
                instructions=[head] * len(texts),
                **options,
            )
        wrapped = [head + t + tail for t in texts] if (head or tail) else texts
        return self._tokenizer.encode(wrapped, **options)

    def hidden_states(
        self,
        ids: npt.NDArray[np.int64],
        mask: npt.NDArray[np.int64],
        positions: npt.NDArray[np.int64] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Run the graph on one padded batch: float32 (batch, seq, dim) hidden states.

        ``positions`` is required where the graph takes position ids (``Encoded.pad`` makes them).
        """
        if self._static is not None:
            raise TypeError("a static model has no hidden states")
        session = self._session or self._load()
        inputs = self.manifest.graph_inputs
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        if "position_ids" in inputs:
            if positions is None:
                raise ValueError("this graph takes position_ids: pass positions")
            feeds["position_ids"] = positions
        hidden: npt.NDArray[np.float32] = session.run([self.manifest.graph_output], feeds)[0]
        return hidden

    def _encode_options(self, prompt: Prompt | None) -> dict[str, Any]:
        return {
            "add_special_tokens": self.manifest.add_special_tokens,
            "max_length": self.manifest.max_length,
            "prefix_ids": list(prompt.prefix_ids) if prompt else [],
            "suffix_ids": list(prompt.suffix_ids) if prompt else [],
        }

    def __repr__(self) -> str:
        m = self.manifest
        return f"TextEmbedding({self.model_name!r}, dim={m.dim}, pooling={m.pooling!r})"


def check_limits(max_tokens: int, threads: int | None) -> None:
    """The argument checks TextEmbedding and TextCrossEncoder share."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")


def _excludes_instruction(prompt: Prompt | None, head: str) -> bool:
    """Whether the text before ``{text}`` is tokenized on its own and left out of pooling."""
    return prompt is not None and prompt.exclude_instruction and bool(head)


def _native(load: Callable[[Path], T], path: Path) -> T:
    """Load a file with the Rust extension, naming it in slimembed's errors."""
    try:
        return load(path)
    except FileNotFoundError as err:
        raise ModelFileError(f"{path} not found: {err}") from err
    except ValueError as err:
        raise ModelFileError(f"{path} is corrupt: {err}") from err


def _as_iterable(texts: str | Iterable[str]) -> Iterable[str]:
    """A bare string is one text (as in fastembed); anything else must be iterable."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, bytes) or not isinstance(texts, Iterable):
        raise TypeError(
            f"texts must be a string or an iterable of strings, got {type(texts).__name__}"
        )
    return texts


def _check_texts(chunk: list[Any], offset: int) -> None:
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
