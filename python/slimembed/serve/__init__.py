"""slimembed's HTTP server, ``slimembed serve`` (``pip install 'slimembed[serve]'``).

OpenAI's ``/v1/embeddings``, TEI's ``/embed`` and ``/rerank``, ``/health``, ``/info`` and
Prometheus ``/metrics``, with cross-request batching (``batcher``), payload and batch limits,
an optional API key, and graceful shutdown on SIGTERM (uvicorn finishes accepted requests).
Nothing here is imported by ``import slimembed``.

>>> from slimembed import TextEmbedding
>>> from slimembed.serve import create_app
>>> app = create_app({"default": TextEmbedding()})  # any ASGI server runs it
"""

from slimembed.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]
