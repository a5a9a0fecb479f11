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

from slimembed import _core, registry
from slimembed import parallel as parallel_embedding
from slimembed.facade import CHUNK_SIZE, Facade, as_iterable, check_texts, naming_texts
from slimembed.manifest import RAW, PromptPlan

DEFAULT_BATCH_SIZE = 256
# The embedded default: a static model distilled from all-MiniLM-L6-v2 (see README).
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "default"

Vector = npt.NDArray[np.float32]


class TextEmbedding(Facade):
    """Embed texts with a slimembed model directory on ONNX Runtime (CPU or CUDA), or a static
    table in slimembed's Rust core.

    ``TextEmbedding()`` loads the embedded default, a static model shipped inside the package
    that works offline; the arguments are ``Facade.__init__``'s (``model_name``, ``cache_dir``,
    ``threads``, ``providers``, ``cuda``, ``device_ids``, ``lazy_load`` — fastembed's first
    seven, in its order — then ``revision``, ``local_files_only``, ``max_tokens``,
    ``precision``, ``model_file``, ``device_id``, ``specific_model_path``, ``max_length``).
    """

    task = "embed"
    default_model = DEFAULT_MODEL_DIR

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
        source: str | os.PathLike[str] | None = None,
        dim: int | None = None,
        *,
        pooling: str | None = None,
        normalization: bool | None = None,
        sources: Any = None,
        model_file: str | None = None,
        description: str = "",
        license: str = "",
        size_in_gb: float = 0.0,
        additional_files: Sequence[str] | None = None,
        family: str = "encoder-mean",
        max_length: int = 512,
        padding_side: str | None = None,
        attention: str | None = None,
        query_template: str | None = None,
        document_template: str | None = None,
        instruction: str | None = None,
    ) -> registry.ModelSpec:
        """Register a model under the name ``model``, as fastembed's ``add_custom_model``:
        ``TextEmbedding(model)`` then loads ``source`` (a hub id or a local folder holding an
        ONNX graph, a model2vec or StaticEmbedding table) without an export step, and
        ``slimembed export MODEL`` exports a PyTorch-only source with these rules.

        fastembed's arguments are taken by keyword, as its documentation passes them:
        ``pooling`` (``"mean"``, ``"cls"``, ``"last_token"``, ``"weighted_mean"``, or
        fastembed's ``PoolingType``; ``DISABLED``: the graph's own pooled output), and
        ``normalization`` replace what the source's configuration says; ``sources`` (an object
        or dict with ``hf``, fastembed's ``ModelSource``) stands for ``source``;
        ``model_file`` is the graph to run (default: the repository's float32 graph);
        ``additional_files`` are fetched beside it; ``size_in_gb``, ``description`` and
        ``license`` are listed. ``family`` picks a recipe from ``registry.FAMILIES``
        (``"qwen3-embedding"``, ``"gritlm"``, …) for what the source leaves out.

        Raises ValueError for a name already registered with other settings (names differing
        in case only included, as fastembed), TypeError for a missing source or dim.
        """
        hub_id = _hf_source(source, sources)
        if dim is None or isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(
                f"add_custom_model({model!r}, ...): dim must be an integer, got {dim!r}; "
                "fastembed's pooling, normalization and sources are passed by keyword here"
            )
        taken = [s.name for s in registry.all_specs() if s.name.lower() == model.lower()]
        if taken and taken != [model]:
            raise ValueError(f"model {model!r} is already registered as {taken[0]!r}")
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
                hub_id,
                family,
                dim,
                max_length,
                license,
                description,
                query=query,
                document=document,
                pooling=_pooling_mode(pooling),
                normalize=normalization,
                padding_side=padding_side,
                attention=attention,
                model_file=model_file,
                additional_files=tuple(additional_files or ()),
                size_in_gb=float(size_in_gb),
                custom=True,
            )
        )

    def embed(
        self,
        documents: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        parallel: int | None = None,
        *,
        dim: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """Yield one float32 vector per text (a document), in input order.

        As in fastembed, ``embed`` embeds documents: the model's document prompt applies (plain
        text for most encoders; GritLM's ``<|embed|>``, SGPT's braces, e5-mistral's appended
        EOS), exactly as ``passage_embed``. ``encode`` without ``prompt`` embeds raw text.

        A bare string is one text. An empty string is embedded like any other: its vector comes
        from the special tokens alone, or is all zeros where the tokenizer adds none. Texts
        longer than the model's max length are truncated. ``dim`` keeps the first ``dim``
        components (Matryoshka) and renormalizes them when the vectors are normalized.
        ``normalize``: ``None`` follows the model (its manifest's ``normalize``); ``True``
        L2-normalizes every vector, ``False`` gives the pooled vectors as they are (cut to
        ``dim``, not renormalized). Raises TypeError naming the position of ``None`` or a
        non-string.

        ``parallel`` (fastembed's data-parallel mode): ``None`` or 1 embeds in this process;
        N > 1 starts N worker processes (``spawn``), each loading the model with one thread,
        and 0 one per core; vectors still come in input order (``slimembed.parallel``).
        """
        return self._stream(
            documents, "document", None, batch_size, dim, normalize, progress, parallel
        )

    def query_embed(
        self,
        query: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        parallel: int | None = None,
        *,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """Like ``embed`` with the model's query prompt.

        ``instruction`` replaces the prompt's default task instruction.
        """
        return self._stream(
            query, "query", instruction, batch_size, dim, normalize, progress, parallel
        )

    def passage_embed(
        self,
        texts: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        parallel: int | None = None,
        *,
        dim: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
    ) -> Iterator[Vector]:
        """The same as ``embed``: the model's document prompt (never a query instruction)."""
        return self._stream(texts, "document", None, batch_size, dim, normalize, progress, parallel)

    @classmethod
    def get_embedding_size(cls, model_name: str) -> int:
        """The dimension of a registry model's vectors, without loading it (fastembed's
        classmethod); UnknownModelError for a name the registry does not list."""
        return registry.get(model_name).dim

    def token_count(self, texts: str | Iterable[str], batch_size: int = 1024) -> int:
        """How many tokens the model reads for ``texts`` without a prompt: special tokens
        included, each text cut to the max length (fastembed's ``token_count``)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        iterator = iter(as_iterable(texts))
        total = 0
        while chunk := list(islice(iterator, batch_size)):
            total += int(self.tokenize(chunk).lengths().sum())
        return total

    def encode(
        self,
        texts: str | Iterable[str],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        prompt: str | None = None,
        instruction: str | None = None,
        dim: int | None = None,
        normalize: bool | None = None,
        progress: bool = False,
    ) -> npt.NDArray[np.float32]:
        """All vectors as one ``(n, dim)`` float32 array.

        ``prompt`` is ``None`` (the raw text, no prompt), ``"query"`` or ``"document"``;
        ``dim`` and ``normalize`` as in ``embed``.
        """
        plan = self.plan(prompt, instruction)
        width = self.check_dim(dim)
        _check_normalize(normalize)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        chunks = list(self._chunks(as_iterable(texts), plan, batch_size, dim, normalize, progress))
        if not chunks:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks)

    def encode_ids(
        self,
        rows: Iterable[Sequence[int]],
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        dim: int | None = None,
        normalize: bool | None = None,
    ) -> npt.NDArray[np.float32]:
        """Vectors of inputs tokenized already: each row is the token ids the model reads, as
        ``tokenize(...).row(i)`` gives them (special and prompt ids included; nothing is added),
        cut to the max length; ``dim`` and ``normalize`` as in ``embed``. Raises TypeError
        naming a row that is not a list of integers, ValueError for an id outside the
        vocabulary."""
        width = self.check_dim(dim)
        _check_normalize(normalize)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        checked: list[list[int]] = []
        for i, row in enumerate(rows):
            if isinstance(row, str | bytes) or not isinstance(row, Sequence):
                raise TypeError(f"rows[{i}] is {type(row).__name__}, not a list of token ids")
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
                raise TypeError(f"rows[{i}] holds something other than integer token ids")
            checked.append(list(row))
        chunks = [
            self.backend.embed_ids(
                checked[start : start + CHUNK_SIZE], batch_size, dim, normalize=normalize
            )
            for start in range(0, len(checked), CHUNK_SIZE)
        ]
        if not chunks:
            return np.zeros((0, width), dtype=np.float32)
        return np.concatenate(chunks)

    # ---- the pipeline --------------------------------------------------------------------

    def check_dim(self, dim: int | None) -> int:
        """The width of the vectors for ``dim`` (``None``: the model's); ValueError unless
        ``dim`` is an integer from 1 to the model's dim."""
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
        prompt: str,
        instruction: str | None,
        batch_size: int,
        dim: int | None,
        normalize: bool | None,
        progress: bool,
        parallel: int | None,
    ) -> Iterator[Vector]:
        # Validate eagerly so bad arguments fail at the call, not at the first next().
        self.check_dim(dim)
        _check_normalize(normalize)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        plan = self.plan(prompt, instruction)
        if parallel is not None and parallel_embedding.workers(parallel) > 1:
            items = as_iterable(texts)
            rows = parallel_embedding.embed(
                self, items, prompt, instruction, batch_size, dim, normalize, parallel
            )
            return _counted(rows, _progress_bar(items)) if progress else rows
        chunks = self._chunks(as_iterable(texts), plan, batch_size, dim, normalize, progress)
        return (row for chunk in chunks for row in chunk)

    def _chunks(
        self,
        texts: Iterable[str],
        plan: PromptPlan,
        batch_size: int,
        dim: int | None,
        normalize: bool | None,
        progress: bool,
    ) -> Iterator[npt.NDArray[np.float32]]:
        bar = _progress_bar(texts) if progress else None
        iterator = iter(texts)
        offset = 0
        # The first chunk is one batch, so a stream's first vectors come back after one batch
        # (not after CHUNK_SIZE long texts); chunks then double up to CHUNK_SIZE.
        size = min(batch_size, CHUNK_SIZE)
        while chunk := list(islice(iterator, size)):
            check_texts(chunk, offset)
            with naming_texts(chunk, offset):
                vectors = self.backend.embed(chunk, plan, batch_size, dim, normalize=normalize)
            yield vectors
            offset += len(chunk)
            size = min(2 * size, CHUNK_SIZE)
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
        items = list(as_iterable(texts))
        check_texts(items, 0)
        with naming_texts(items, 0):
            return self.backend.encode(items, self.plan(prompt, instruction))

    def plan(self, prompt: str | None, instruction: str | None = None) -> PromptPlan:
        """The prompt ``encode`` applies for ``prompt`` (``None``, ``"query"`` or
        ``"document"``) and ``instruction`` (queries only); ValueError otherwise."""
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


def _check_normalize(normalize: bool | None) -> None:
    """TypeError unless ``normalize`` is ``None`` (the model's rule), ``True`` or ``False``."""
    if normalize is not None and not isinstance(normalize, bool):
        raise TypeError(
            f"normalize must be None (the model's rule), True or False, got {normalize!r}"
        )


def _counted(rows: Iterator[Vector], bar: Any) -> Iterator[Vector]:
    """``rows`` as they come, each counted on the progress bar."""
    try:
        for row in rows:
            bar.update(1)
            yield row
    finally:
        bar.close()


def _progress_bar(texts: Iterable[str]) -> Any:
    from tqdm.auto import tqdm

    total = len(texts) if isinstance(texts, Sized) else None
    return tqdm(total=total, unit="text", desc="embedding")


def _hf_source(source: str | os.PathLike[str] | None, sources: Any) -> str:
    """The hub id or folder a custom model loads from: ``source``, or the ``hf`` of fastembed's
    ``ModelSource`` (an object or a dict); a URL-only source is refused."""
    chosen = None if source is None else os.fspath(source)
    if sources is not None:
        hf = sources.get("hf") if isinstance(sources, dict) else getattr(sources, "hf", None)
        if hf is None:
            raise ValueError(
                f"sources={sources!r} names no Hugging Face repository (hf=); slimembed "
                "downloads through huggingface_hub only"
            )
        if chosen is not None and chosen != hf:
            raise ValueError(f"source {chosen!r} and sources.hf {hf!r} differ: pass one")
        chosen = str(hf)
    if chosen is None:
        raise TypeError("add_custom_model needs source= (a hub id or folder) or sources=")
    return chosen


def _pooling_mode(pooling: Any) -> str | None:
    """slimembed's pooling mode for ``pooling``: one of its own, or fastembed's
    ``PoolingType`` (``"MEAN"``, ``"CLS"``, ``"LAST_TOKEN"``; ``"DISABLED"``: None, the graph
    pools and its pooled output runs as it is)."""
    if pooling is None:
        return None
    mode = str(getattr(pooling, "value", pooling)).lower()
    return None if mode == "disabled" else mode
