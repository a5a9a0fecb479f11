"""slimembed: text embeddings on ONNX Runtime with a Rust tokenize-and-pool core, no PyTorch.

>>> from slimembed import TextEmbedding
>>> model = TextEmbedding("path/to/model-dir")
>>> vectors = list(model.embed(["hello", "world"]))
"""

from slimembed.errors import (
    ManifestError,
    ModelFileError,
    ProviderError,
    SlimembedError,
    UnknownModelError,
)
from slimembed.manifest import Manifest, Prompt
from slimembed.registry import ModelSpec
from slimembed.rerank import TextCrossEncoder, retrieve_then_rerank
from slimembed.text_embedding import TextEmbedding

__all__ = [
    "Manifest",
    "ManifestError",
    "ModelFileError",
    "ModelSpec",
    "Prompt",
    "ProviderError",
    "SlimembedError",
    "TextCrossEncoder",
    "TextEmbedding",
    "UnknownModelError",
    "retrieve_then_rerank",
]
__version__ = "0.1.0"
