"""Hugging Face hub caches built at test time, and loading from them as a user would offline.

``hub_cache`` lays a folder out exactly as huggingface_hub's cache does: each file stored once
under ``blobs/`` by a hash name, the snapshot a tree of relative symlinks into it, and
``refs/main`` naming the snapshot's commit. ``embed_offline`` loads a model by its hub id in a
fresh interpreter with ``HF_HUB_OFFLINE=1`` and reports whether anything imported torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_cache(cache: Path, repo_id: str, files: Path, revision: str = REVISION) -> Path:
    """Store ``files`` (a folder) in ``cache`` as the hub repository ``repo_id`` at
    ``revision``; returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blobs = repo / "blobs"
    snapshot = repo / "snapshots" / revision
    blobs.mkdir(parents=True, exist_ok=True)
    for path in sorted(files.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(files)
        data = path.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


_SCRIPT = """
import json, sys
import numpy as np
from slimembed import TextEmbedding

args = json.loads(sys.argv[1])
texts = json.loads(open(args["texts"], encoding="utf-8").read())
model = TextEmbedding(args["model"], cache_dir=args["cache"], **args["kwargs"])
np.save(args["out"], model.encode(texts))
print(json.dumps({
    "torch": sorted(m for m in ("torch", "transformers", "sentence_transformers", "model2vec")
                    if m in sys.modules),
    "precision": model.precision,
    "model_dir": str(model.model_dir),
    "graph_file": model.manifest.graph_file,
    "kind": model.manifest.kind,
}))
"""


def embed_offline(
    cache: Path,
    model: str,
    texts: list[str],
    work: Path,
    *,
    unreachable: bool = False,
    **kwargs: Any,
) -> tuple[np.ndarray, dict[str, Any]]:
    """``TextEmbedding(model, cache_dir=cache, **kwargs).encode(texts)`` in a subprocess with
    the hub offline (``HF_HUB_OFFLINE=1``; with ``unreachable``, not in offline mode but with
    the Hub's address one where nothing listens, as for a user whose network is down); the
    vectors and what the process reports (``torch``: the torch-based libraries it imported,
    which must be none)."""
    work.mkdir(parents=True, exist_ok=True)
    texts_file = work / "texts.json"
    texts_file.write_text(json.dumps(texts), encoding="utf-8")
    out = work / "vectors.npy"
    args = {
        "model": model,
        "cache": str(cache),
        "texts": str(texts_file),
        "out": str(out),
        "kwargs": kwargs,
    }
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=REPO,
        env=_offline_env(unreachable),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return np.load(out), report


def _offline_env(unreachable: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    if unreachable:
        # Port 9 (discard) on loopback: the connection is refused at once.
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    else:
        env["HF_HUB_OFFLINE"] = "1"
    return env
