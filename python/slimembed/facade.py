"""What the user-facing model classes share: opening a model by name or path, the argument
checks, loading its backend once, and the checks on texts at the edge.

``TextEmbedding`` and ``TextCrossEncoder`` take the same loading arguments (as fastembed's
classes do) and differ only in the task their model directory must hold and in what they do
with the backend, so the constructor is written once, here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from slimembed import env, hub
from slimembed.backends import Backend, load_backend
from slimembed.errors import NonFiniteError
from slimembed.manifest import Manifest
from slimembed.session import Provider, cuda_available

DEFAULT_MAX_TOKENS = 8192
# Texts tokenized and length-sorted together; larger chunks pad less but yield later.
CHUNK_SIZE = 2048


class Facade:
    """A model directory opened for one task, its backend loaded."""

    #: The manifest task the directory must hold (``"embed"`` or ``"rerank"``).
    task: ClassVar[str]
    #: What ``model_name=None`` opens; ``None`` where a model must be named.
    default_model: ClassVar[Path | None] = None

    model_name: str
    model_dir: Path
    manifest: Manifest
    backend: Backend

    def __init__(
        self,
        model_name: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        providers: Sequence[Provider] | None = None,
        cuda: bool | str = False,
        device_ids: Sequence[int] | None = None,
        lazy_load: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        precision: str | None = None,
        model_file: str | None = None,
        device_id: int = 0,
        specific_model_path: str | os.PathLike[str] | None = None,
        max_length: int | None = None,
    ) -> None:
        """Open ``model_name`` and load its backend. The first seven parameters are
        fastembed's, in its order.

        Args:
            model_name: a model directory made by ``slimembed export`` or ``slimembed
                distill``; a Hugging Face id of a repository holding one, or of a
                sentence-transformers, ONNX, model2vec or StaticEmbedding repository, which
                runs as its own configuration says, without torch (downloaded into
                ``cache_dir``); or a local folder of one of those layouts. ``None`` loads the
                class's default model where it has one (``TextEmbedding``: the embedded static
                default, shipped inside the package, offline).
            cache_dir: a Hugging Face hub cache where downloads are kept (default:
                ``SLIMEMBED_CACHE_DIR`` or ``~/.cache/slimembed``; the cache
                sentence-transformers filled works too).
            threads: worker threads: ONNX Runtime intra-op threads, or the Rust pool of a
                static model (default: ``SLIMEMBED_THREADS``, else all cores).
            providers: ONNX Runtime execution providers, e.g. ``["CUDAExecutionProvider"]``,
                each a name or a ``(name, options)`` pair.
            cuda: ``True`` (or ``"cuda"``): the CUDA provider, ProviderError where it is not
                available; ``"auto"`` (fastembed's ``Device.AUTO``): CUDA where this
                onnxruntime has it and the model runs on ONNX Runtime, else CPU.
            device_ids: fastembed's CUDA devices: the first is ``device_id``; data-parallel
                ``embed(parallel=N)`` gives worker ``i`` device ``device_ids[i % len]``.
            lazy_load: load the graph on first use instead of now.
            revision: hub revision (branch, tag or commit) to pin.
            local_files_only: never download; use the cache only.
            max_tokens: padded tokens per batch at most (bounds memory for long texts).
            precision: which graph of the directory to run (``"fp32"``, ``"int8"``,
                ``"fp16"``); default: INT8 on CPU and FP16 on CUDA where the directory holds
                them, else its main graph. ``self.precision`` says which one runs. For a
                repository without a slimembed manifest: the one graph file of that
                precision (default: its float32 graph, the faithful one).
            model_file: for such a repository, the graph to run, as a path inside it
                (``"onnx/model_qint8_avx512_vnni.onnx"``; fastembed's name for the field).
            device_id: the CUDA device (where ``device_ids`` is not given).
            specific_model_path: fastembed's folder holding the model's files: loaded in
                place of ``model_name`` (which then only names the model).
            max_length: tokens per text at most, below the model's own limit (fastembed's
                and LangChain's argument); a larger value keeps the model's limit, since
                the model was not trained past it.

        Raises ModelFileError, ManifestError or UnknownModelError naming what is missing or
        wrong, ProviderError for providers that cannot run, ValueError for bad arguments.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_length is not None and (isinstance(max_length, bool) or not max_length >= 1):
            raise ValueError(f"max_length must be an integer >= 1, got {max_length!r}")
        if device_ids is not None:
            if not device_ids:
                raise ValueError("device_ids is empty: name at least one CUDA device")
            device_id = int(device_ids[0])
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        named = None if model_name is None else self.source_of(model_name)
        source = self.default_model if named is None else named
        if specific_model_path is not None:
            source = Path(specific_model_path)
        if source is None:
            raise TypeError(f"{type(self).__name__} needs a model: a directory or a hub id")
        self.model_name = "default" if model_name is None else str(model_name)
        self.model_dir, self.manifest = hub.open_model(
            source,
            task=self.task,
            cache_dir=cache_dir,
            revision=revision,
            local_files_only=local_files_only,
            model_file=model_file,
            precision=precision,
        )
        if max_length is not None and (
            self.manifest.max_length is None or max_length < self.manifest.max_length
        ):
            self.manifest = self.manifest.with_changes(max_length=max_length)
        use_cuda = _cuda_choice(cuda, self.manifest, providers)
        self.threads = env.default_threads() if threads is None else threads
        self.max_tokens = max_tokens
        self.device_ids = tuple(device_ids) if device_ids is not None else (device_id,)
        # What a data-parallel worker needs to load the same model (from the cache only).
        self.loading: dict[str, Any] = {
            "model_name": named,
            "cache_dir": cache_dir,
            "providers": providers,
            "cuda": use_cuda,
            "lazy_load": False,
            "revision": revision,
            "local_files_only": True,
            "max_tokens": max_tokens,
            "precision": precision,
            "model_file": model_file,
            "specific_model_path": specific_model_path,
            "max_length": max_length,
        }
        self.backend = load_backend(
            self.model_dir,
            self.manifest,
            precision=precision,
            providers=providers,
            cuda=use_cuda,
            device_id=device_id,
            threads=self.threads,
            max_tokens=max_tokens,
            lazy_load=lazy_load,
            name=self.model_name,
        )
        self.precision = self.backend.precision

    @classmethod
    def source_of(cls, model_name: str | os.PathLike[str]) -> str | os.PathLike[str]:
        """What ``model_name`` loads from: itself, unless the class keeps names of its own
        (``TextCrossEncoder.add_custom_model``); a data-parallel worker loads that source."""
        return model_name


def _cuda_choice(
    cuda: bool | str, manifest: Manifest, providers: Sequence[Provider] | None
) -> bool:
    """``cuda`` as a flag: True or ``"cuda"``; False or ``"cpu"``; ``"auto"`` (fastembed's
    ``Device.AUTO``, a str enum): CUDA where onnxruntime has it, the model runs on ONNX
    Runtime (not a static table) and no providers were named."""
    if isinstance(cuda, bool):
        return cuda
    if cuda == "auto":
        return manifest.kind != "static" and not providers and cuda_available()
    if cuda in ("cuda", "cpu"):
        return cuda == "cuda"
    raise ValueError(f"cuda must be True, False, 'cuda', 'cpu' or 'auto', got {cuda!r}")


def as_iterable(texts: str | Iterable[str]) -> Iterable[str]:
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


@contextmanager
def naming_texts(chunk: Sequence[str], offset: int) -> Iterator[None]:
    """Errors about one text of ``chunk`` name it by its position in the caller's input
    (``offset`` + index): a lone surrogate, which cannot be encoded as UTF-8, becomes a
    ValueError, and a NonFiniteError is counted from ``offset``."""
    try:
        yield
    except UnicodeEncodeError:
        for i, text in enumerate(chunk):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise ValueError(
                    f"texts[{offset + i}] is not valid Unicode: it holds a lone surrogate "
                    f"(U+{ord(text[err.start]):04X}) at character {err.start}"
                ) from None
        raise
    except NonFiniteError as err:
        raise NonFiniteError(offset + err.index) from None
