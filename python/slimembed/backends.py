"""Backends: what turns one chunk of texts into vectors, behind one small protocol.

- ``TransformerBackend``: tokenize the chunk in Rust (unpadded), plan length-sorted batches
  under the token budget, pad each in Rust, run it on the ``GraphRunner``, pool in Rust.
- ``StaticBackend``: the Rust ``StaticModel`` (tokenize, look up, average) in one call.

``load_backend`` reads a model directory's manifest once and picks one; the façades
(``TextEmbedding``, the server, the Ray actor) hold a backend and never look at ``kind``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from slimembed import _core
from slimembed.batching import plan_batches
from slimembed.errors import ManifestError, ModelFileError, NonFiniteError, ProviderError
from slimembed.manifest import MANIFEST_FILE, POOLED, Manifest, PromptPlan, model_file
from slimembed.runner import GraphRunner
from slimembed.session import CPU, Provider, choose_precision, provider_name

T = TypeVar("T")
Vectors = npt.NDArray[np.float32]


class Backend(Protocol):
    """Embeds one chunk of texts (already checked to be strings) with a resolved prompt."""

    manifest: Manifest
    tokenizer: _core.Tokenizer
    #: The precision that runs (``"fp32"``, ``"int8"``, ``"fp16"``).
    precision: str

    def embed(
        self,
        texts: list[str],
        plan: PromptPlan,
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        """``(len(texts), dim or manifest.dim)`` float32 vectors, in input order; L2-normalized
        (after the ``dim`` cut) when ``normalize`` says so, ``None`` meaning the manifest's."""
        ...

    def encode(
        self, texts: list[str], plan: PromptPlan, max_length: int | None = None
    ) -> _core.Encoded:
        """The token ids the model sees for ``texts`` under ``plan`` (truncated to
        ``max_length``, default the model's)."""
        ...

    def embed_ids(
        self,
        rows: list[list[int]],
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        """Vectors of rows a caller tokenized already (ids as ``encode`` gives them), cut to
        the model's max length, ``normalize`` as in ``embed``; ValueError for an id outside
        the vocabulary."""
        ...


class _Tokenized:
    """What both backends share: the model's tokenizer under its manifest's rules."""

    manifest: Manifest
    tokenizer: _core.Tokenizer

    def encode(
        self, texts: list[str], plan: PromptPlan, max_length: int | None = None
    ) -> _core.Encoded:
        """Token ids of ``texts`` under ``plan``: truncated to ``max_length`` (default: the
        model's), special and inserted ids included; an excluded instruction is tokenized apart
        and counted in the pooling skip."""
        m = self.manifest
        return self.tokenizer.encode(
            plan.wrap(texts),
            instruction=plan.head if plan.exclude_instruction else None,
            add_special_tokens=m.add_special_tokens,
            max_length=max_length or m.max_length,
            prefix_ids=list(plan.prefix_ids),
            suffix_ids=list(plan.suffix_ids),
        )


class TransformerBackend(_Tokenized):
    """An ONNX graph: tokenize, batch, pad, run, pool."""

    def __init__(
        self, runner: GraphRunner, tokenizer: _core.Tokenizer, precision: str, max_tokens: int
    ) -> None:
        self.runner = runner
        self.manifest = runner.manifest
        self.tokenizer = tokenizer
        self.precision = precision
        self.max_tokens = max_tokens

    def embed(
        self,
        texts: list[str],
        plan: PromptPlan,
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        encoded = self.encode(texts, plan)
        return self._run(encoded, plan.exclude_instruction, batch_size, dim, normalize)

    def embed_ids(
        self,
        rows: list[list[int]],
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        encoded = _core.Encoded.from_ids(
            rows, vocab_size=self.tokenizer.vocab_size, max_length=self.manifest.max_length
        )
        return self._run(encoded, False, batch_size, dim, normalize)

    def _run(
        self,
        encoded: _core.Encoded,
        skip_instruction: bool,
        batch_size: int,
        dim: int | None,
        normalize: bool | None,
    ) -> Vectors:
        m = self.manifest
        # Normalized inside the pooling call, on each pooled row: no second pass over the batch.
        unit = m.normalize if normalize is None else normalize
        out = np.zeros((len(encoded), dim or m.dim), dtype=np.float32)
        lengths = encoded.lengths()
        # A text with no tokens at all keeps the zero vector; the graph never sees seq = 0.
        nonempty = np.flatnonzero(lengths)
        for picked in plan_batches(lengths[nonempty], batch_size, self.max_tokens):
            rows = nonempty[picked]
            batch = self.runner.pad(encoded, rows)
            hidden, mask = self.runner.run(batch), batch.mask
            pooling, skip = m.pooling, batch.skip if skip_instruction else None
            if pooling == POOLED:
                # The graph pooled: each vector is the mean of one token, itself, so the same
                # kernel normalizes (or not), cuts to ``dim`` and checks for non-finite values.
                hidden, mask = hidden[:, None, :], np.ones((len(rows), 1), np.int64)
                pooling, skip = "mean", None
            try:
                out[rows] = _core.pool(hidden, mask, pooling, skip=skip, normalize=unit, dim=dim)
            except _core.NonFiniteRow as err:
                raise NonFiniteError(int(rows[err.args[1]])) from None
        return out


class StaticBackend(_Tokenized):
    """A static table run end to end in Rust; no ONNX Runtime session."""

    def __init__(self, model: _core.StaticModel, tokenizer: _core.Tokenizer, manifest: Manifest):
        self.model = model
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.precision = manifest.precision

    def embed(
        self,
        texts: list[str],
        plan: PromptPlan,
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        # The table needs no batching: the Rust call takes the chunk whole. normalize=None is
        # the table's own rule, given to StaticModel when it was loaded (the manifest's).
        return self.model.embed(
            plan.wrap(texts), max_length=self.manifest.max_length, dim=dim, normalize=normalize
        )

    def embed_ids(
        self,
        rows: list[list[int]],
        batch_size: int,
        dim: int | None,
        *,
        normalize: bool | None = None,
    ) -> Vectors:
        # Cut after the skipped id is dropped, as for text: the Rust call does both.
        encoded = _core.Encoded.from_ids(rows, vocab_size=self.model.vocab_size)
        return self.model.embed_ids(
            encoded, max_length=self.manifest.max_length, dim=dim, normalize=normalize
        )


def load_backend(
    model_dir: Path,
    manifest: Manifest,
    *,
    precision: str | None = None,
    providers: Sequence[Provider] | None = None,
    cuda: bool = False,
    device_id: int = 0,
    threads: int | None = None,
    max_tokens: int,
    lazy_load: bool = False,
    name: str | None = None,
) -> TransformerBackend | StaticBackend:
    """The backend for ``manifest``'s kind, its files loaded (the graph session unless
    ``lazy_load``); ``name`` is how errors call the model.

    Raises ModelFileError naming a missing or corrupt file, ProviderError for providers a
    static model cannot use, ValueError for a precision the directory lacks.
    """
    name = name or str(model_dir)
    tokenizer_path = model_file(model_dir, manifest.tokenizer_file, "tokenizer_file")
    tokenizer = load_native(_core.Tokenizer, tokenizer_path)
    _check_id(manifest.pad_id, "pad_id", tokenizer.vocab_size, model_dir)
    if manifest.kind == "static":
        if precision not in (None, manifest.precision):
            raise ValueError(
                f"{name} is a static {manifest.precision} table; precision={precision!r} "
                "is not available"
            )
        if cuda or any(provider_name(p) != CPU for p in providers or ()):
            raise ProviderError(
                f"{name} is a static model: it runs on CPU in slimembed's Rust core, "
                "without ONNX Runtime providers; drop cuda=/providers="
            )
        assert manifest.table_file is not None  # the manifest checks it
        table = load_native(
            lambda p: _core.StaticModel(
                tokenizer,
                p,
                add_special_tokens=manifest.add_special_tokens,
                skip_id=manifest.skip_id,
                normalize=manifest.normalize,
                threads=threads,
            ),
            model_file(model_dir, manifest.table_file, "table_file"),
        )
        for field_name, stated, stored in (
            ("dim", manifest.dim, table.dim),
            ("precision", manifest.precision, table.precision),
        ):
            if stated != stored:
                raise ManifestError(
                    f"{model_dir / MANIFEST_FILE}: {field_name} is {stated!r} but the table "
                    f"{manifest.table_file} holds {stored!r}"
                )
        if table.vocab_size < tokenizer.vocab_size:
            raise ModelFileError(
                f"{model_dir / manifest.table_file}: the table holds rows for "
                f"{table.vocab_size} token ids, but the tokenizer's vocabulary has "
                f"{tokenizer.vocab_size}"
            )
        if manifest.skip_id is not None:
            _check_id(manifest.skip_id, "skip_id", table.vocab_size, model_dir)
        return StaticBackend(table, tokenizer, manifest)
    chosen, graph_file = choose_precision(manifest, precision, providers, cuda)
    runner = GraphRunner(
        model_dir,
        manifest,
        graph_file=graph_file,
        providers=providers,
        cuda=cuda,
        device_id=device_id,
        threads=threads,
    )
    if not lazy_load:
        runner.load()
    return TransformerBackend(runner, tokenizer, chosen, max_tokens)


def _check_id(token_id: int, field_name: str, vocab_size: int, model_dir: Path) -> None:
    """A manifest's token id must be one the model has (else ONNX Runtime fails at run time)."""
    if token_id >= vocab_size:
        raise ManifestError(
            f"{model_dir / MANIFEST_FILE}: {field_name} {token_id} is outside the vocabulary of "
            f"{vocab_size}"
        )


def load_native(load: Callable[[Path], T], path: Path) -> T:
    """Load a file with the Rust extension, naming it in slimembed's errors."""
    try:
        return load(path)
    except FileNotFoundError as err:
        raise ModelFileError(f"{path} not found: {err}") from err
    except ValueError as err:
        raise ModelFileError(f"{path} is corrupt: {err}") from err
