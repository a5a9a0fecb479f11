"""The ASGI application: routes, wire formats, limits, auth and metrics.

Routes: OpenAI's ``POST /v1/embeddings`` (and ``GET /v1/models``), TEI's ``POST /embed`` and
``POST /rerank``, ``GET /health``, ``GET /info``, ``GET /metrics`` (Prometheus text format).
Errors use each API's own shape: OpenAI's ``{"error": {"message", "type", "param", "code"}}``
on ``/v1/*``, TEI's ``{"error", "error_type"}`` elsewhere, with TEI's status codes (400 empty,
413 too large, 422 invalid, 429 overloaded).

Starlette is the web layer (routing, requests, the lifespan) because it is small, typed and
well kept, and adds next to nothing per request on top of the ASGI server; FastAPI's model
validation would cost more per request than the embedding of one sentence by a static model.
Bodies are parsed and vectors written with orjson (numpy arrays serialized natively).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from slimembed.errors import TooLongError
from slimembed.rerank import TextCrossEncoder
from slimembed.serve.batcher import Batcher, QueueFull, Step
from slimembed.text_embedding import TextEmbedding

Model = TextEmbedding | TextCrossEncoder
ROUTES = ("/v1/embeddings", "/v1/models", "/embed", "/rerank", "/health", "/info", "/metrics")
PROMPTS = (None, "query", "document")


@dataclass(frozen=True)
class ServeSettings:
    """The server's limits (the ``slimembed serve`` options of the same names)."""

    max_client_batch_size: int = 2048
    max_concurrent_requests: int = 512
    #: Texts per model batch at most (the token budget is the model's ``max_tokens``).
    batch_size: int = 32
    payload_limit: int = 2_000_000
    api_key: str | None = None
    #: The prompt OpenAI requests get unless they send ``input_type``: ``"document"`` embeds
    #: as ``TextEmbedding.embed`` does; ``None`` embeds the raw text.
    default_prompt: str | None = "document"


class ApiError(Exception):
    """An error answered with ``status``; ``kind`` is TEI's ``error_type``."""

    OPENAI_TYPES: Mapping[int, str] = {
        401: "authentication_error",
        404: "not_found_error",
        429: "rate_limit_exceeded",
    }

    def __init__(self, status: int, message: str, kind: str = "Validation") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def response(self, openai: bool) -> Response:
        if openai:
            body: Any = {
                "error": {
                    "message": self.message,
                    "type": self.OPENAI_TYPES.get(self.status, "invalid_request_error"),
                    "param": None,
                    "code": "model_not_found" if self.status == 404 else None,
                }
            }
        else:
            body = {"error": self.message, "error_type": self.kind}
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return _json(body, self.status, headers)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status, headers, media_type="application/json")


class Metrics:
    """The Prometheus series the server exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "slimembed_requests", "HTTP requests", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "slimembed_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.queue = Gauge(
            "slimembed_queue_depth", "requests queued or running", ["model"], registry=r
        )
        self.batch_size = Histogram(
            "slimembed_batch_size",
            "texts per batching step",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            registry=r,
        )
        self.batch_tokens = Histogram(
            "slimembed_batch_tokens",
            "tokens per batching step",
            ["model"],
            buckets=(16, 64, 256, 1024, 4096, 16384, 65536, 262144),
            registry=r,
        )
        self.tokens = Counter("slimembed_tokens", "tokens embedded", ["model"], registry=r)
        self.dropped = Counter(
            "slimembed_dropped_requests",
            "requests dropped before they ran because their client went away",
            ["model"],
            registry=r,
        )

    def step(self, model: str) -> Callable[[Step], None]:
        def record(step: Step) -> None:
            self.batch_size.labels(model).observe(step.texts)
            self.batch_tokens.labels(model).observe(step.tokens)
            self.tokens.labels(model).inc(step.tokens)

        return record


class _Guard:
    """Pure ASGI middleware: the API key, the payload limit and the request metrics."""

    def __init__(self, app: ASGIApp, settings: ServeSettings, metrics: Metrics) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.key = f"Bearer {settings.api_key}".encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = path if path in ROUTES else "other"
        openai = path.startswith("/v1/")
        start = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            failure = self._refuse(scope, path)
            if failure is not None:
                await failure.response(openai)(scope, receive, sent)
            else:
                await self.app(scope, self._limited(receive), sent)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)

    def _refuse(self, scope: Scope, path: str) -> ApiError | None:
        headers = dict(scope["headers"])
        if self.key is not None and path != "/health":
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.key):
                return ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)")
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.settings.payload_limit:
            return _too_large(self.settings.payload_limit)
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises once the body passes the payload limit (chunked bodies)."""
        limit, seen = self.settings.payload_limit, 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)
            return message

        return wrapped


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than the payload limit of {limit} bytes")


class Server:
    """The served models, their batchers and the request handlers."""

    def __init__(self, models: Mapping[str, Model], settings: ServeSettings) -> None:
        if not models:
            raise ValueError("serve at least one model")
        self.models = dict(models)
        self.settings = settings
        self.metrics = Metrics()
        self.batchers: dict[str, Batcher] = {}
        self.rerank_pools: dict[str, ThreadPoolExecutor] = {}
        self.rerank_depth: dict[str, int] = {}
        for name, model in self.models.items():
            if isinstance(model, TextEmbedding):
                self.batchers[name] = Batcher(
                    model,
                    max_queued=settings.max_concurrent_requests,
                    batch_size=settings.batch_size,
                    on_step=self.metrics.step(name),
                    on_drop=self.metrics.dropped.labels(name).inc,
                )
            else:
                self.rerank_pools[name] = ThreadPoolExecutor(1, thread_name_prefix="rerank")
                self.rerank_depth[name] = 0
            self.metrics.queue.labels(name).set_function(self._depth(name))

    def _depth(self, name: str) -> Callable[[], float]:
        """Requests queued or running for model ``name``."""
        batcher = self.batchers.get(name)

        def depth() -> float:
            return batcher.depth if batcher is not None else self.rerank_depth[name]

        return depth

    # ---- lifespan -----------------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> Any:
        for batcher in self.batchers.values():
            batcher.start()
        try:
            yield
        finally:
            for batcher in self.batchers.values():
                await batcher.stop()
            for pool in self.rerank_pools.values():
                pool.shutdown(wait=True)

    def app(self) -> ASGIApp:
        """The ASGI application serving these models."""
        routes = [
            Route("/v1/embeddings", self._handler(self.openai_embeddings, True), methods=["POST"]),
            Route("/v1/models", self.openai_models, methods=["GET"]),
            Route("/embed", self._handler(self.tei_embed, False), methods=["POST"]),
            Route("/rerank", self._handler(self.tei_rerank, False), methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/info", self.info, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        return _Guard(Starlette(routes=routes, lifespan=self.lifespan), self.settings, self.metrics)

    def _handler(
        self, handle: Callable[[Any], Awaitable[Any]], openai: bool
    ) -> Callable[[Request], Awaitable[Response]]:
        """A JSON route: parse the body, run ``handle`` until done or until the client goes
        away (its queued work is then dropped), answer errors in the route's format."""

        async def route(request: Request) -> Response:
            try:
                try:
                    body = orjson.loads(await request.body())
                except orjson.JSONDecodeError as err:
                    raise ApiError(400, f"the body is not valid JSON: {err}") from err
                if not isinstance(body, dict):
                    raise ApiError(422, "the body must be a JSON object")
                return _json(await _unless_gone(request, handle(body)))
            except ApiError as err:
                return err.response(openai)

        return route

    # ---- request parsing -------------------------------------------------------------------

    def _texts(self, value: Any, field: str) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list):
            raise ApiError(422, f"`{field}` must be a string or a list of strings")
        if not texts:
            raise ApiError(400, f"`{field}` cannot be empty", "Empty")
        self._check_count(len(texts))
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ApiError(
                    422, f"`{field}[{i}]` is {type(text).__name__}: every input must be a string"
                )
        return texts

    def _check_count(self, count: int) -> None:
        """413 for more inputs than ``max_client_batch_size``."""
        limit = self.settings.max_client_batch_size
        if count > limit:
            raise ApiError(413, f"{count} inputs are more than the maximum of {limit} per request")

    def _token_rows(self, value: Any) -> list[list[int]] | None:
        """OpenAI's token-id inputs (one list of ints, or a list of them) as rows; ``None``
        when ``value`` is text."""
        if not isinstance(value, list) or not value or isinstance(value[0], str):
            return None
        rows = [value] if _is_ids(value[0]) else value
        self._check_count(len(rows))
        for i, row in enumerate(rows):
            if not (isinstance(row, list) and row and all(_is_ids(t) for t in row)):
                raise ApiError(
                    422,
                    f"`input[{i}]` must be a string or a non-empty list of token ids, and every "
                    "input of one request the same kind",
                )
        return rows

    def _model(self, name: Any, kind: type) -> tuple[str, Any]:
        if name is None:
            for served, model in self.models.items():
                if isinstance(model, kind):
                    return served, model
            raise ApiError(404, f"no {kind.__name__} model is served here")
        if not isinstance(name, str) or name not in self.models:
            raise ApiError(404, f"model {name!r} is not served here (served: {list(self.models)})")
        model = self.models[name]
        if not isinstance(model, kind):
            raise ApiError(
                422, f"model {name!r} is a {type(model).__name__}, not a {kind.__name__}"
            )
        return name, model

    @staticmethod
    def _dim(body: Mapping[str, Any], model: TextEmbedding) -> int | None:
        dim = body.get("dimensions")
        if dim is None:
            return None
        try:
            return model.check_dim(dim)
        except ValueError as err:
            raise ApiError(422, f"`dimensions`: {err}") from err

    async def _embed(
        self,
        name: str,
        texts: list[str] | None,
        prompt: str | None,
        dim: int | None,
        truncate: bool,
        rows: list[list[int]] | None = None,
        normalize: bool | None = None,
    ) -> tuple[np.ndarray, int]:
        batcher = self.batchers[name]
        try:
            if rows is not None:
                return await batcher.embed_ids(
                    rows, dim=dim, normalize=normalize, truncate=truncate
                )
            assert texts is not None
            return await batcher.embed(
                texts, prompt=prompt, dim=dim, normalize=normalize, truncate=truncate
            )
        except QueueFull as err:
            raise ApiError(429, f"the server is busy: {err}; retry later", "Overloaded") from err
        except TooLongError as err:
            raise ApiError(413, str(err)) from err
        except (TypeError, ValueError) as err:
            raise ApiError(422, str(err), "Tokenizer") from err

    # ---- routes ---------------------------------------------------------------------------

    async def openai_embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        if "input" not in body:
            raise ApiError(422, "`input` is required")
        name, model = self._model(body.get("model"), TextEmbedding)
        ids = self._token_rows(body["input"])
        texts = None if ids is not None else self._texts(body["input"], "input")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(422, f"`encoding_format` must be 'float' or 'base64', got {fmt!r}")
        prompt = body.get("input_type", self.settings.default_prompt)
        if prompt not in PROMPTS:
            raise ApiError(422, f"`input_type` must be 'query' or 'document', got {prompt!r}")
        dim = self._dim(body, model)
        vectors, tokens = await self._embed(name, texts, prompt, dim, True, ids)
        if fmt == "base64":
            rows: Any = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
        else:
            rows = vectors
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    async def openai_models(self, request: Request) -> Response:
        data = [{"id": n, "object": "model", "owned_by": "slimembed"} for n in self.models]
        return _json({"object": "list", "data": data})

    async def tei_embed(self, body: dict[str, Any]) -> Any:
        if "inputs" not in body:
            raise ApiError(422, "`inputs` is required")
        name, model = self._model(body.get("model"), TextEmbedding)
        texts = self._texts(body["inputs"], "inputs")
        prompt = body.get("prompt_name")
        if prompt not in PROMPTS:
            raise ApiError(422, f"`prompt_name` must be 'query' or 'document', got {prompt!r}")
        truncate = body.get("truncate", False)
        normalize = body.get("normalize", True)
        if not isinstance(truncate, bool) or not isinstance(normalize, bool):
            raise ApiError(422, "`truncate` and `normalize` must be true or false")
        # TEI's default is normalized whatever the model's rule (OpenAI's route keeps the rule).
        dim = self._dim(body, model)
        vectors, _ = await self._embed(name, texts, prompt, dim, truncate, normalize=normalize)
        return vectors

    async def tei_rerank(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        name, model = self._model(body.get("model"), TextCrossEncoder)
        query = body.get("query")
        if not isinstance(query, str):
            raise ApiError(422, "`query` must be a string")
        texts = self._texts(body.get("texts"), "texts")
        if self.rerank_depth[name] >= self.settings.max_concurrent_requests:
            raise ApiError(429, "the server is busy; retry later", "Overloaded")
        self.rerank_depth[name] += 1
        job = self.rerank_pools[name].submit(lambda: list(model.rerank(query, texts)))
        try:
            scores = await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            if job.cancel():  # still queued: it never runs (a running one finishes, unheard)
                self.metrics.dropped.labels(name).inc()
            raise
        except TooLongError as err:
            raise ApiError(413, str(err)) from err
        except (TypeError, ValueError) as err:
            raise ApiError(422, str(err), "Tokenizer") from err
        finally:
            self.rerank_depth[name] -= 1
        ranked = sorted(range(len(texts)), key=lambda i: -scores[i])
        out = [{"index": i, "score": scores[i]} for i in ranked]
        if body.get("return_text"):
            for item in out:
                item["text"] = texts[item["index"]]
        return out

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def info(self, request: Request) -> Response:
        models = {}
        for name, model in self.models.items():
            m = model.manifest
            models[name] = {
                "model_id": model.model_name,
                "task": m.task,
                "kind": m.kind,
                "dim": m.dim,
                "max_input_length": m.max_length,
                "precision": model.precision,
                "pooling": m.pooling,
                "normalize": m.normalize,
                "prompts": {
                    "query": m.query.template if m.query else None,
                    "document": m.document.template if m.document else None,
                },
                "matryoshka_dims": list(m.matryoshka_dims),
            }
        s = self.settings
        return _json(
            {
                "models": models,
                "max_client_batch_size": s.max_client_batch_size,
                "max_concurrent_requests": s.max_concurrent_requests,
                "payload_limit": s.payload_limit,
                "version": _version(),
            }
        )

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _is_ids(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def _unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """``work``'s result, or cancel it when the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task in done:
        return task.result()
    task.cancel()
    raise ApiError(499, "the client closed the connection")


def _version() -> str:
    import slimembed

    return slimembed.__version__


def create_app(models: Mapping[str, Model], settings: ServeSettings | None = None) -> ASGIApp:
    """An ASGI application serving ``models`` (name → loaded model) under ``settings``."""
    return Server(models, settings or ServeSettings()).app()
