"""The runtime stays slim: importing slimembed and embedding loads no PyTorch-side package."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# PyTorch's side, the other distributions (export, benchmarks), and what the optional faces
# (the server, the integrations) bring.
HEAVY = (
    "torch",
    "transformers",
    "tokenizers",
    "sentence_transformers",
    "onnx",
    "slimembed_export",
    "benchmarks",
    "starlette",
    "fastapi",
    "uvicorn",
    "granian",
    "ray",
    "pyarrow",
    "pandas",
    "langchain_core",
    "llama_index",
    "qdrant_client",
    "sqlite_vec",
)

SCRIPT = """
import json, sys
from slimembed import TextEmbedding
model = TextEmbedding(sys.argv[1] or None)
vectors = model.encode(["no torch here", ""], prompt="query")
list(model.embed("one"))
heavy = json.loads(sys.argv[2])
print(json.dumps({"shape": list(vectors.shape), "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_embedding_imports_no_heavy_package(exported: Callable[[str], Path]) -> None:
    # A transformer encoder, a decoder, and the embedded static default ("").
    for model in (str(exported("bert")), str(exported("qwen3")), ""):
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, model, json.dumps(HEAVY)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        report = json.loads(result.stdout.strip().splitlines()[-1])
        assert report["shape"][0] == 2
        assert report["loaded"] == []
