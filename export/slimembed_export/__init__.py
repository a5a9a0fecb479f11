"""slimembed's export pipeline: Hugging Face embedder -> verified ONNX model directory.

Needs torch, transformers and onnx; the slimembed runtime never imports this package.
"""

from slimembed_export.errors import ExportError
from slimembed_export.pipeline import ExportOptions, export_model

__all__ = ["ExportError", "ExportOptions", "export_model"]
