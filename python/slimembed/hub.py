"""Finding model directories: local paths, or Hugging Face repositories fetched into the cache.

Downloads go through huggingface_hub, so its offline mode (``HF_HUB_OFFLINE=1``), tokens and
revision pinning apply unchanged; the cache is ``env.cache_dir()`` unless the caller names one.
Registry names resolve to ``<cache>/exported/<name>``, where ``slimembed export NAME`` writes.
A slimembed repository is fetched manifest first, then only the files the manifest names.

Offline (``HF_HUB_OFFLINE`` or ``local_files_only``), a repository already in the cache is
found by reading the cache's own layout (``refs/<revision>`` -> ``snapshots/<commit>``) without
importing huggingface_hub: its import alone takes about 0.45 s here, as long as the rest of a
cached model's cold start. Online, and for anything not in the cache, huggingface_hub decides.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from slimembed import env, registry, repos
from slimembed.errors import ManifestError, ModelFileError, UnknownModelError
from slimembed.manifest import MANIFEST_FILE, Manifest

# Under the cache: registry models exported by `slimembed export NAME`; what the runtime makes
# for a repository without a manifest (the manifests it builds, static tables it converts).
EXPORTED = "exported"
ADOPTED = "adopted"
# Fetched first from a hub repository: its manifest, or the configuration files that say
# which layout it is and how it embeds (modules.json, 1_Pooling/config.json, tokenizer.json).
METADATA = ("*.json",)


def resolve_model(
    model: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    model_file: str | None = None,
    precision: str | None = None,
) -> Path:
    """The folder that holds ``model``: a local path as it is; a registry name's export
    directory; a hub repository's snapshot in the cache, holding the files loading it needs
    (for a slimembed repository, those its manifest names; for another layout, its
    configuration files and the graph or table ``repos.adopt`` will run)."""
    local = _local_dir(model)
    if local is not None:
        return local
    name = str(model)
    spec = registry.find(name)
    by_name = spec is not None and spec.name == name
    if by_name and exported(name, cache_dir):
        return export_dir(name, cache_dir)
    # A registry model not exported here runs from a repository that ships it as ONNX: the
    # one asked for first, then the registry's ONNX sources (Qwen/Qwen3-Embedding-0.6B holds
    # PyTorch weights only; onnx-community's copy holds the graph).
    if spec is None:
        candidates = [_repo_id(name)]
    elif by_name:
        candidates = [*spec.onnx_sources, spec.source]
    else:
        candidates = [name, *(s for s in spec.onnx_sources if s != name)]
    extra = list(spec.additional_files) if spec else []
    failures: list[ModelFileError] = []
    for repo_id in candidates:
        folder = _local_dir(repo_id)  # a custom model's source may be a folder
        if folder is not None:
            return folder
        try:
            return _fetch(
                repo_id, cache_dir, revision, local_files_only, model_file, precision, extra
            )
        except ModelFileError as err:
            failures.append(err)
    if by_name:
        raise UnknownModelError(
            f"{name!r} is a known model with no export here and no loadable ONNX repository "
            f"({'; '.join(str(f) for f in failures)}): run `slimembed export {name}` once (it "
            f"needs the export extra, torch included) to write {export_dir(name, cache_dir)}"
        )
    raise failures[0]


def _fetch(
    repo_id: str,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
    local_files_only: bool,
    model_file: str | None,
    precision: str | None,
    extra: list[str],
) -> Path:
    """The snapshot of ``repo_id`` with what loading it needs: its manifest and the files it
    names, or (another layout) its JSON files, the graph or table ``repos.adopt`` runs and
    the ``extra`` files a registry entry names. ModelFileError when it cannot be had or holds
    nothing the runtime can run."""
    first = _download(repo_id, cache_dir, revision, local_files_only, list(METADATA))
    if (first / MANIFEST_FILE).is_file():
        manifest = Manifest.load(first)
        return _download(repo_id, cache_dir, revision, local_files_only, manifest_files(manifest))
    listing = _repo_files(repo_id, revision, first, local_files_only)
    wanted = repos.files_to_fetch(first, listing, model_file, precision, repo_id)
    return _download(repo_id, cache_dir, revision, local_files_only, [*wanted, *extra])


# What to say when a model of one task is opened by the façade of the other.
_WRONG_TASK = {
    "embed": "{dir} is a {task} model: load it with TextCrossEncoder",
    "rerank": "{dir} is an embedding model (task {task!r}): load it with TextEmbedding; export a "
    "causal LM with `--task rerank` for TextCrossEncoder",
}


def open_model(
    model: str | os.PathLike[str],
    *,
    task: str | None,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    model_file: str | None = None,
    precision: str | None = None,
    own_dir: bool = False,
) -> tuple[Path, Manifest]:
    """The model directory for ``model`` and its manifest, which must be of ``task``
    (``"embed"`` or ``"rerank"``; ``None``: either); ModelFileError otherwise.

    A folder without ``slimembed.json`` (a sentence-transformers, ONNX, model2vec or
    StaticEmbedding repository) is adopted (``repos.adopt``): ``model_file`` or ``precision``
    choose among its graphs (without either, a registry entry's ``model_file``, as fastembed
    names the graph, where it has one). ``model_file`` is for such folders only (ValueError
    otherwise). ``own_dir``: a repository's graph runs from a model directory of slimembed's
    own under the cache even where it was not rewritten (``repos.adopt``)."""
    spec = None if _local_dir(model) is not None else registry.find(str(model))
    graph_file = model_file or (spec.model_file if spec and precision is None else None)
    model_dir = resolve_model(
        model,
        cache_dir=cache_dir,
        revision=revision,
        local_files_only=local_files_only,
        model_file=graph_file,
        precision=precision,
    )
    if (model_dir / MANIFEST_FILE).is_file():
        if model_file is not None:
            raise ValueError(
                f"model_file={model_file!r} chooses among the graphs of a repository without "
                f"{MANIFEST_FILE}; {model_dir} is a slimembed model directory: pass precision="
            )
        manifest = Manifest.load(model_dir)
    elif task != "rerank":
        model_dir, manifest = repos.adopt(
            model_dir,
            source_id=snapshot_repo(model_dir) or str(model),
            revision=snapshot_revision(model_dir),
            model_file=graph_file,
            precision=precision,
            store=adopted_dir(model_dir, cache_dir),
            spec=spec,
            own_dir=own_dir,
        )
    else:
        raise ManifestError(
            f"{model_dir} holds no {MANIFEST_FILE}: a reranker must be exported with "
            f"`slimembed export SOURCE DIR --task rerank`"
        )
    if task is not None and manifest.task != task:
        raise ModelFileError(_WRONG_TASK[task].format(dir=model_dir, task=manifest.task))
    return model_dir, manifest


def manifest_files(manifest: Manifest) -> list[str]:
    """What to download of a model repository: the manifest, every graph (each precision) with
    its external data (``model.onnx.data`` and the like), the table and the tokenizer."""
    named = manifest.files()
    graphs = [name for field, name in named.items() if field.endswith("graph_file")]
    return [MANIFEST_FILE, *named.values(), *(f"{graph}*" for graph in graphs)]


def export_dir(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where ``slimembed export NAME`` writes a registry model and ``TextEmbedding(NAME)``
    looks for it: ``<cache>/exported/<name>``."""
    return Path(cache_dir or env.cache_dir()) / EXPORTED / name


def exported(name: str, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    return (export_dir(name, cache_dir) / MANIFEST_FILE).is_file()


def snapshot(
    model: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local directory as it is, or a hub repository's snapshot in the cache holding the files
    that match ``allow_patterns`` (all files when ``None``), downloaded where missing."""
    local = _local_dir(model)
    if local is not None:
        return local
    return _download(_repo_id(str(model)), cache_dir, revision, local_files_only, allow_patterns)


def snapshot_repo(path: Path) -> str | None:
    """The repository id of ``path`` where it is a snapshot in a Hugging Face hub cache
    (``<cache>/models--org--name/snapshots/<commit>``), None for any other folder."""
    repo = path.parent.parent.name
    if path.parent.name != "snapshots" or not repo.startswith("models--"):
        return None
    return repo.removeprefix("models--").replace("--", "/", 1)


def snapshot_revision(path: Path) -> str | None:
    """The commit of ``path`` where it is a hub-cache snapshot (see ``snapshot_repo``), None
    for any other folder."""
    return path.name if snapshot_repo(path) is not None else None


def adopted_dir(model_dir: Path, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where what slimembed makes for a folder without a manifest lives:
    ``<cache>/adopted/models--org--name/<commit>`` for a hub snapshot (a commit never
    changes), ``<cache>/adopted/local/<key>`` for any other folder."""
    root = Path(cache_dir or env.cache_dir()) / ADOPTED
    repo, revision = snapshot_repo(model_dir), snapshot_revision(model_dir)
    if repo is not None and revision is not None:
        return root / model_dir.parent.parent.name / revision
    # A local folder may change in place: its key covers each file's name, size and mtime.
    key = hashlib.sha256(str(model_dir.resolve()).encode())
    for name in repos.listing(model_dir):
        info = (model_dir / name).stat()
        key.update(f"\0{name}\0{info.st_size}\0{info.st_mtime_ns}".encode())
    return root / "local" / key.hexdigest()[:24]


def _repo_files(
    repo_id: str, revision: str | None, snapshot: Path, local_files_only: bool
) -> list[str]:
    """Every file of the repository: as the Hub lists them, or (offline) as the snapshot holds
    them."""
    if not _offline(local_files_only):
        from huggingface_hub import list_repo_files

        try:
            return list(list_repo_files(repo_id, revision=revision))
        except Exception:  # noqa: BLE001 -- HTTP errors, and the HTTP client's own when the
            # Hub cannot be reached: the snapshot was had already (from the cache, as
            # snapshot_download falls back to it), so what it holds is what can be loaded.
            pass
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _offline(local_files_only: bool) -> bool:
    """Whether nothing may be downloaded: ``local_files_only``, or offline mode as
    huggingface_hub reads it from the environment."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return local_files_only or any(
        (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"} for value in flags
    )


def _cached_snapshot(repo_id: str, cache: Path, revision: str | None) -> Path | None:
    """The cache's snapshot of ``repo_id`` at ``revision`` (a branch or tag through
    ``refs/``, or a commit), as huggingface_hub lays it out; None when it is not there."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    if not commit:
        return None
    snapshot = repo / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _local_dir(model: str | os.PathLike[str]) -> Path | None:
    path = Path(model).expanduser()
    if not path.exists():
        return None
    if not path.is_dir():
        raise ModelFileError(f"{path} is a file; expected a model directory")
    return path


def _repo_id(name: str) -> str:
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise UnknownModelError(
            f"{name!r} is not a directory, a known model or a Hugging Face id (owner/name); "
            f"known models: {[s.name for s in registry.all_specs()]}"
        )
    return name


def _download(
    repo_id: str,
    cache_dir: str | os.PathLike[str] | None,
    revision: str | None,
    local_files_only: bool,
    allow_patterns: list[str] | None,
) -> Path:
    cache = str(cache_dir or env.cache_dir())
    if _offline(local_files_only):
        snapshot = _cached_snapshot(repo_id, Path(cache), revision)
        if snapshot is not None:
            return snapshot
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=local_files_only,
                allow_patterns=allow_patterns,
            )
        )
    except LocalEntryNotFoundError as err:
        raise ModelFileError(
            f"{repo_id} is not in the cache {cache} and cannot be downloaded now "
            f"(offline mode or no network): {err}"
        ) from err
    except HfHubHTTPError as err:
        raise ModelFileError(f"cannot download {repo_id} from the Hugging Face Hub: {err}") from err
