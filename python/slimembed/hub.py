"""Finding model directories: local paths, or Hugging Face repositories fetched into the cache.

Downloads go through huggingface_hub, so its offline mode (``HF_HUB_OFFLINE=1``), tokens and
revision pinning apply unchanged; the cache is ``env.cache_dir()`` unless the caller names one.
Registry names resolve to ``<cache>/exported/<name>``, where ``slimembed export NAME`` writes.
A slimembed repository is fetched manifest first, then only the files the manifest names.
"""

from __future__ import annotations

import os
from pathlib import Path

from slimembed import env, registry
from slimembed.errors import ManifestError, ModelFileError, UnknownModelError
from slimembed.manifest import MANIFEST_FILE, Manifest

# Under the cache: registry models exported by `slimembed export NAME`.
EXPORTED = "exported"


def resolve_model(
    model: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """The slimembed model directory for ``model``: a local path, or a hub repository."""
    local = _local_dir(model)
    if local is not None:
        return local
    name = str(model)
    spec = registry.find(name)
    if spec is not None and spec.name == name:
        path = export_dir(name, cache_dir)
        if exported(name, cache_dir):
            return path
        raise UnknownModelError(
            f"{name!r} is a known model that has not been exported here yet: run "
            f"`slimembed export {name}` once (it needs the export extra, torch included) to "
            f"write {path}; or load a model directory or a hub repository holding one"
        )
    repo_id = _repo_id(name)
    first = _download(repo_id, cache_dir, revision, local_files_only, [MANIFEST_FILE])
    manifest_path = first / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ManifestError(
            f"{repo_id} holds no {MANIFEST_FILE}: it is not a slimembed model repository "
            f"(export it with `slimembed export {repo_id} DIR`)"
        )
    manifest = Manifest.load(first)
    return _download(repo_id, cache_dir, revision, local_files_only, manifest_files(manifest))


# What to say when a model of one task is opened by the façade of the other.
_WRONG_TASK = {
    "embed": "{dir} is a {task} model: load it with TextCrossEncoder",
    "rerank": "{dir} is an embedding model (task {task!r}): load it with TextEmbedding; export a "
    "causal LM with `--task rerank` for TextCrossEncoder",
}


def open_model(
    model: str | os.PathLike[str],
    *,
    task: str,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> tuple[Path, Manifest]:
    """The model directory for ``model`` (as ``resolve_model``) and its manifest, which must
    be of ``task`` (``"embed"`` or ``"rerank"``); ModelFileError otherwise."""
    model_dir = resolve_model(
        model, cache_dir=cache_dir, revision=revision, local_files_only=local_files_only
    )
    manifest = Manifest.load(model_dir)
    if manifest.task != task:
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
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    cache = str(cache_dir or env.cache_dir())
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
