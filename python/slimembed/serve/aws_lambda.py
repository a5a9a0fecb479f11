"""An AWS Lambda handler for Python's managed runtime: the same routes and JSON as
``slimembed serve``, from API Gateway (REST and HTTP APIs), Function URL and ALB events.

Set the function's handler to ``slimembed.serve.aws_lambda.handler``. The model is loaded once
per container, when Lambda imports this module (its init phase), from ``SLIMEMBED_MODEL`` (a
model directory in the image or a layer, or a hub id with ``SLIMEMBED_CACHE_DIR`` pointing at a
filled cache; unset: the embedded default). ``SLIMEMBED_THREADS`` and ``SLIMEMBED_API_KEY``
apply as for the server.

Events become ASGI requests through Mangum, the adapter made for this; lifespan events are off
because Mangum would run them around every invocation, and the batcher starts on first use.
"""

from __future__ import annotations

import asyncio
import atexit
import os
from typing import Any, cast

from mangum import Mangum
from mangum.types import ASGI

from slimembed.serve.app import Server, ServeSettings
from slimembed.serve.cli import load_model, served_name


def build_handler() -> Mangum:
    """A Lambda handler serving the model the environment names."""
    source = os.environ.get("SLIMEMBED_MODEL") or None
    model = load_model(source)
    settings = ServeSettings(api_key=os.environ.get("SLIMEMBED_API_KEY") or None)
    server = Server({served_name(source): model}, settings)

    @atexit.register
    def stop() -> None:  # the batcher's task lives on Mangum's loop between invocations
        loop = asyncio.get_event_loop()
        for batcher in server.batchers.values():
            loop.run_until_complete(batcher.stop())

    # Starlette types its apps as returning Awaitable, Mangum asks for a Coroutine: the same.
    return Mangum(cast(ASGI, server.app()), lifespan="off")


_handler = build_handler()


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda's entry point."""
    return _handler(event, context)
