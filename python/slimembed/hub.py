"""Finding a model directory: a local path, or a Hugging Face repository fetched into the cache.

Downloads go through huggingface_hub, so its offline mode (``HF_HUB_OFFLINE=1``), tokens and
revision pinning apply unchanged; the cache is ``env.cache_dir()`` unless the caller names one.
"""

from __future__ import annotations

import os
from pathlib import Path

from slimembed import env, registry
from slimembed.errors import ModelFileError, UnknownModelError


def resolve(
    model: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The local directory holding ``model``, downloading it from the hub when needed."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelFileError(f"{path} is a file; expected a model directory")
        return path
    name = str(model)
    spec = registry.find(name)
    repo_id = spec.source if spec else name
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise UnknownModelError(
            f"{name!r} is not a directory, a known model or a Hugging Face id (owner/name); "
            f"known models: {[s.name for s in registry.all_specs()]}"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=str(cache_dir or env.cache_dir()),
                local_files_only=local_files_only,
                allow_patterns=allow_patterns,
            )
        )
    except LocalEntryNotFoundError as err:
        raise ModelFileError(
            f"{repo_id} is not in the cache {cache_dir or env.cache_dir()} and cannot be "
            f"downloaded now (offline mode or no network): {err}"
        ) from err
    except HfHubHTTPError as err:
        raise ModelFileError(f"cannot download {repo_id} from the Hugging Face Hub: {err}") from err
