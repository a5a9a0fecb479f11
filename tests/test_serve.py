"""``slimembed serve``: the real OpenAI client, TEI's wire format, limits, metrics, batching
across concurrent clients, and SIGTERM under load. Every server listens on 127.0.0.1 on a free
port and is started and stopped by its test; every load loop is bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typing_extensions import Self

from benchmarks.datasets import sts
from slimembed import TextCrossEncoder, TextEmbedding
from slimembed.serve import ServeSettings, create_app
from slimembed.serve.batcher import Batcher, QueueFull

uvicorn = pytest.importorskip("uvicorn")

TEXTS = sts("en-test").sentences1[:200]


class Running:
    """A uvicorn server on a thread, on 127.0.0.1 and a free port."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "the test server did not stop"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def call(
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON or text) of a GET (no body) or a JSON POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, got, payload = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        status, got, payload = err.code, dict(err.headers), err.read()
    text = payload.decode()
    is_json = got.get("content-type", "").startswith("application/json")
    return status, got, json.loads(text) if is_json else text


@pytest.fixture(scope="module")
def models(
    exported: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The embedded static default, a tiny BERT (FP32) and a tiny GPT-2 reranker."""
    from slimembed_export import ExportOptions, export_model
    from tests import tiny

    rerank_dir = tmp_path_factory.mktemp("serve") / "reranker"
    source = tiny.build("gpt2", tmp_path_factory.mktemp("serve-src") / "gpt2")
    export_model(str(source), rerank_dir, ExportOptions(task="rerank", max_length=128))
    return {
        "default": TextEmbedding(threads=1),
        "bert": TextEmbedding(exported("bert"), threads=1),
        "reranker": TextCrossEncoder(rerank_dir, threads=1),
    }


@pytest.fixture(scope="module")
def server(models: dict[str, Any]) -> Iterator[Running]:
    settings = ServeSettings(max_client_batch_size=256, payload_limit=200_000)
    with Running(create_app(models, settings)) as running:
        yield running


def test_the_openai_client_gets_textembeddings_vectors(
    server: Running, models: dict[str, Any]
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = TEXTS[:40]
    for name, exact in (("default", True), ("bert", False)):
        model: TextEmbedding = models[name]
        for dim in (None, 8):
            want = model.encode(texts, prompt="document", dim=dim)
            extra = {} if dim is None else {"dimensions": dim}
            # The client asks for base64 unless told otherwise, and decodes it.
            for fmt in ("float", None):
                kwargs = extra if fmt is None else {**extra, "encoding_format": fmt}
                response = client.embeddings.create(model=name, input=texts, **kwargs)
                got = np.array([d.embedding for d in response.data], dtype=np.float32)
                assert [d.index for d in response.data] == list(range(len(texts)))
                assert response.model == name
                if exact:
                    np.testing.assert_array_equal(got, want)
                else:
                    np.testing.assert_allclose(got, want, atol=1e-6)
            lengths = model.tokenize(texts, prompt="document").lengths()
            assert response.usage.prompt_tokens == int(lengths.sum())
    single = client.embeddings.create(model="default", input="one text", encoding_format="float")
    np.testing.assert_array_equal(
        np.array(single.data[0].embedding, dtype=np.float32),
        models["default"].encode(["one text"], prompt="document")[0],
    )


def test_token_id_inputs_embed_as_their_texts(server: Running, models: dict[str, Any]) -> None:
    """OpenAI's token-id inputs: the ids ``tokenize`` gives embed as the texts do."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    texts = TEXTS[:6]
    for name, exact in (("default", True), ("bert", False)):
        model: TextEmbedding = models[name]
        encoded = model.tokenize(texts, prompt="document")
        rows = [encoded.row(i).tolist() for i in range(len(texts))]
        want = model.encode(texts, prompt="document")
        response = client.embeddings.create(model=name, input=rows, encoding_format="float")
        got = np.array([d.embedding for d in response.data], dtype=np.float32)
        if exact:
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-6)
        assert response.usage.prompt_tokens == sum(len(r) for r in rows)
        one = client.embeddings.create(model=name, input=rows[0], encoding_format="float")
        np.testing.assert_allclose(one.data[0].embedding, want[0], atol=1e-6)
    status, _, body = call(server.url + "/v1/embeddings", {"model": "bert", "input": [[1, 10**9]]})
    assert status == 422
    assert "outside the vocabulary" in body["error"]["message"]
    status, _, body = call(server.url + "/v1/embeddings", {"model": "bert", "input": [[1], "a"]})
    assert status == 422
    with pytest.raises(TypeError, match=r"rows\[1\]"):
        models["bert"].encode_ids([[1, 2], "a b"])


def test_base64_is_little_endian_float32(server: Running, models: dict[str, Any]) -> None:
    status, _, body = call(
        server.url + "/v1/embeddings",
        {"model": "default", "input": ["a", "b"], "encoding_format": "base64"},
    )
    assert status == 200
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in body["data"]])
    np.testing.assert_array_equal(got, models["default"].encode(["a", "b"], prompt="document"))


def test_tei_embed_and_rerank(server: Running, models: dict[str, Any]) -> None:
    bert: TextEmbedding = models["bert"]
    status, _, got = call(
        server.url + "/embed", {"inputs": TEXTS[:5], "model": "bert", "prompt_name": "query"}
    )
    assert status == 200
    np.testing.assert_allclose(got, bert.encode(TEXTS[:5], prompt="query"), atol=1e-6)
    status, _, got = call(server.url + "/embed", {"inputs": "x", "model": "bert", "dimensions": 4})
    np.testing.assert_allclose(got, bert.encode(["x"], dim=4), atol=1e-6)
    docs = ["A man plays a guitar.", "Stocks fell.", "The guitarist played."]
    status, _, ranked = call(
        server.url + "/rerank", {"query": "who plays guitar", "texts": docs, "return_text": True}
    )
    assert status == 200
    scores = list(models["reranker"].rerank("who plays guitar", docs))
    assert [r["index"] for r in ranked] == sorted(range(3), key=lambda i: -scores[i])
    for r in ranked:
        assert r["score"] == pytest.approx(scores[r["index"]], abs=1e-9)
        assert r["text"] == docs[r["index"]]


def test_tei_normalize_false_equals_encode_mixed_with_normalized_requests(
    server: Running, models: dict[str, Any]
) -> None:
    """TEI's ``normalize``, sent false, true or not at all by 48 concurrent clients on the
    static default and the FP32 BERT: each gets ``encode(texts, normalize=...)`` of its own
    texts (static bit-identical, FP32 within 1e-6), whatever it was batched with."""
    choices: list[bool | None] = [False, True, None]

    def client(i: int) -> tuple[str, int, np.ndarray, np.ndarray]:
        name = ("default", "bert")[i % 2]
        normalize = choices[i % 3]
        texts = TEXTS[i : i + 1 + i % 5]
        body: dict[str, Any] = {"inputs": texts, "model": name}
        if normalize is not None:
            body["normalize"] = normalize
        status, _, got = call(server.url + "/embed", body)
        # TEI's default is normalized, whatever the model's own rule.
        want = models[name].encode(texts, normalize=normalize is not False)
        return name, status, np.array(got, dtype=np.float32), want

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(client, range(48)))
    for i, (name, status, got, want) in enumerate(results):
        assert status == 200
        if choices[i % 3] is False:
            assert np.abs(np.linalg.norm(got, axis=1) - 1).min() > 1e-3
        if name == "default":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, atol=1e-6)
    # dimensions with normalize=false: the cut, not renormalized.
    status, _, got = call(
        server.url + "/embed",
        {"inputs": TEXTS[:3], "model": "default", "dimensions": 16, "normalize": False},
    )
    assert status == 200
    raw = models["default"].encode(TEXTS[:3], normalize=False)
    np.testing.assert_array_equal(np.array(got, dtype=np.float32), raw[:, :16])


def test_tei_normalizes_a_model_that_does_not_and_openai_keeps_its_rule(
    variant: Callable[..., Path],
) -> None:
    from slimembed.text_embedding import DEFAULT_MODEL_DIR

    plain = TextEmbedding(variant(DEFAULT_MODEL_DIR, normalize=False), threads=1)
    with Running(create_app({"plain": plain})) as running:
        status, _, got = call(running.url + "/embed", {"inputs": TEXTS[:4]})
        assert status == 200
        np.testing.assert_array_equal(
            np.array(got, np.float32), plain.encode(TEXTS[:4], normalize=True)
        )
        status, _, got = call(running.url + "/embed", {"inputs": TEXTS[:4], "normalize": False})
        assert status == 200
        np.testing.assert_array_equal(np.array(got, np.float32), plain.encode(TEXTS[:4]))
        status, _, body = call(running.url + "/v1/embeddings", {"input": TEXTS[:4]})
        assert status == 200
        rows = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        np.testing.assert_array_equal(rows, plain.encode(TEXTS[:4], prompt="document"))
        assert np.abs(np.linalg.norm(rows, axis=1) - 1).min() > 1e-3


def test_bad_requests_get_their_status_and_a_clear_message(
    server: Running, models: dict[str, Any]
) -> None:
    url = server.url
    long_text = " ".join(["word"] * 400)  # past the tiny BERT's 128 tokens
    cases: list[tuple[str, Any, int, str]] = [
        ("/v1/embeddings", {"model": "default", "input": []}, 400, "cannot be empty"),
        ("/v1/embeddings", {"model": "default", "input": ["a", 5]}, 422, "input[1]"),
        ("/v1/embeddings", {"model": "default", "input": ["a"] * 257}, 413, "maximum of 256"),
        ("/v1/embeddings", {"model": "nope", "input": "a"}, 404, "'nope' is not served"),
        ("/v1/embeddings", {"model": "default", "input": "a", "dimensions": 0}, 422, "dim"),
        ("/v1/embeddings", {"model": "reranker", "input": "a"}, 422, "TextCrossEncoder"),
        ("/embed", {"inputs": [long_text], "model": "bert"}, 413, "max length of 128"),
        ("/embed", {"inputs": [None]}, 422, "inputs[0]"),
        ("/embed", {"inputs": "a", "prompt_name": "title"}, 422, "prompt_name"),
        ("/rerank", {"query": 3, "texts": ["a"]}, 422, "query"),
        ("/rerank", {"query": long_text, "texts": ["a"]}, 413, "queries are never cut"),
        ("/embed", {"inputs": "a", "model": "bert", "normalize": "no"}, 422, "`normalize`"),
    ]
    for path, body, status, message in cases:
        got, _, answer = call(url + path, body)
        assert got == status, (path, body, answer)
        text = answer["error"]["message"] if path.startswith("/v1/") else answer["error"]
        assert message in text, (path, body, answer)
    # A query too long to score is TEI's payload error, told by its type, not its wording.
    status, _, answer = call(url + "/rerank", {"query": long_text, "texts": ["a", "b"]})
    assert (status, answer["error_type"]) == (413, "Validation")
    assert "query of pair 0" in answer["error"]
    # truncate=true embeds the long text, cut as TextEmbedding cuts it.
    status, _, got = call(
        url + "/embed", {"inputs": [long_text], "model": "bert", "truncate": True}
    )
    assert status == 200
    np.testing.assert_allclose(got, models["bert"].encode([long_text]), atol=1e-6)
    status, _, answer = call(url + "/v1/embeddings", raw=b"{not json")
    assert status == 400
    assert "not valid JSON" in answer["error"]["message"]
    status, _, answer = call(url + "/embed", raw=json.dumps({"inputs": "x" * 300_000}).encode())
    assert status == 413
    assert "payload limit" in answer["error"]


def test_concurrent_clients_each_get_their_own_vectors_in_order(
    server: Running, models: dict[str, Any]
) -> None:
    """64 clients at once, each with its own texts: batched together, answered apart."""
    default: TextEmbedding = models["default"]

    def client(i: int) -> tuple[int, np.ndarray, np.ndarray]:
        texts = TEXTS[i : i + 1 + i % 7]
        status, _, body = call(
            server.url + "/v1/embeddings",
            {"model": "default", "input": texts, "encoding_format": "float"},
        )
        got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
        return status, got, default.encode(texts, prompt="document")

    before = _metric(server, 'slimembed_requests_total{route="/v1/embeddings",status="200"}')
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(client, range(64)))
    for status, got, want in results:
        assert status == 200
        np.testing.assert_array_equal(got, want)
    after = _metric(server, 'slimembed_requests_total{route="/v1/embeddings",status="200"}')
    assert after - before == 64
    assert _metric(server, 'slimembed_batch_size_count{model="default"}') >= 1
    assert _metric(server, 'slimembed_tokens_total{model="default"}') > 0


def _metric(server: Running, series: str) -> float:
    status, _, text = call(server.url + "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_api_key_guards_every_route_but_health(models: dict[str, Any]) -> None:
    app = create_app({"default": models["default"]}, ServeSettings(api_key="s3cret"))
    with Running(app) as running:
        assert call(running.url + "/health")[0] == 200
        for path in ("/info", "/metrics"):
            assert call(running.url + path)[0] == 401
        status, _, body = call(running.url + "/v1/embeddings", {"model": "default", "input": "a"})
        assert status == 401
        assert body["error"]["type"] == "authentication_error"
        good = {"Authorization": "Bearer s3cret"}
        status, _, info = call(running.url + "/info", headers=good)
        assert status == 200
        assert info["models"]["default"]["dim"] == models["default"].embedding_size
        assert info["models"]["default"]["precision"] == models["default"].precision


def test_a_full_queue_answers_429_with_retry_after(models: dict[str, Any]) -> None:
    app = create_app({"bert": models["bert"]}, ServeSettings(max_concurrent_requests=1))
    with Running(app) as running:
        body = {"model": "bert", "input": TEXTS * 4}

        def post(_: int) -> tuple[int, dict[str, str]]:
            status, headers, _ = call(running.url + "/v1/embeddings", body)
            return status, headers

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(post, range(8)))
    statuses = sorted(status for status, _ in answers)
    assert statuses[0] == 200
    assert 429 in statuses
    assert set(statuses) <= {200, 429}
    assert all(h.get("retry-after") == "1" for s, h in answers if s == 429)


def test_batcher_drops_the_jobs_of_requests_that_went_away(models: dict[str, Any]) -> None:
    async def scenario() -> None:
        drops: list[None] = []
        batcher = Batcher(models["bert"], max_queued=2, on_drop=lambda: drops.append(None))
        batcher.start()
        # The first job runs; the second waits in the queue and its client goes away.
        first = asyncio.ensure_future(batcher.embed(TEXTS * 4))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.embed(["gone"]))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(QueueFull):
            await batcher.embed(["one too many"])
        second.cancel()
        await asyncio.sleep(0)
        assert batcher.depth == 1
        assert len(drops) == 1
        vectors, _ = await first
        assert vectors.shape == (len(TEXTS) * 4, models["bert"].embedding_size)
        await batcher.stop()

    asyncio.run(scenario())


class GatedEmbedding(TextEmbedding):
    """A TextEmbedding whose ``encode`` records its texts, then waits (60 s at most) until
    ``gate`` is set: the worker stays busy for as long as the test needs, without timing."""

    gate: threading.Event
    seen: list[str]

    def encode(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        self.seen.extend(texts)
        assert self.gate.wait(60), "the test never opened the gate"
        return super().encode(texts, *args, **kwargs)


class GatedReranker(TextCrossEncoder):
    """As GatedEmbedding, for ``rerank``'s documents."""

    gate: threading.Event
    seen: list[str]

    def rerank(self, query: str, documents: Any, *args: Any, **kwargs: Any) -> Any:
        self.seen.extend(documents)
        assert self.gate.wait(60), "the test never opened the gate"
        return super().rerank(query, documents, *args, **kwargs)


def _wait_until(check: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.mark.parametrize("route", ["/embed", "/rerank"])
def test_a_client_that_hangs_up_while_queued_frees_its_place(
    route: str, models: dict[str, Any]
) -> None:
    """Over HTTP: a request whose client closes the connection while its job waits is dropped
    (never run, counted in /metrics) and its place in the queue goes to the next request."""
    model: GatedEmbedding | GatedReranker
    if route == "/embed":
        name = "bert"
        model = GatedEmbedding(models[name].model_dir, threads=1)

        def body(text: str) -> dict[str, Any]:
            return {"inputs": [text]}
    else:
        name = "reranker"
        model = GatedReranker(models[name].model_dir, threads=1)

        def body(text: str) -> dict[str, Any]:
            return {"query": "who plays", "texts": [text]}

    model.gate, model.seen = threading.Event(), []
    app = create_app({name: model}, ServeSettings(max_concurrent_requests=2))
    dropped = f'slimembed_dropped_requests_total{{model="{name}"}}'
    with Running(app) as running, ThreadPoolExecutor(2) as pool:
        try:
            url = running.url
            # The first request runs and holds the worker at the gate.
            first = pool.submit(call, url + route, body("first"))
            _wait_until(lambda: _queued(url) == 1, "the first request runs")
            # The second waits behind it; its client sends it whole, then hangs up.
            payload = json.dumps(body("gone")).encode()
            head = (
                f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
            )
            with socket.create_connection(("127.0.0.1", running.port), timeout=10) as client:
                client.sendall(head.encode() + payload)
                _wait_until(lambda: _queued(url) == 2, "the second request is queued")
            _wait_until(lambda: _metric(running, dropped) == 1, "the second job is dropped")
            assert _queued(url) == 1  # the running job alone
            # Its place is free: with two places, a third request is queued, not refused.
            third = pool.submit(call, url + route, body("third"))
            _wait_until(lambda: _queued(url) == 2, "the third request is queued")
        finally:
            model.gate.set()
        assert first.result(timeout=60)[0] == 200
        assert third.result(timeout=60)[0] == 200
        _wait_until(lambda: _queued(url) == 0, "the queue is empty")
    assert model.seen == ["first", "third"]  # the abandoned job never ran


def test_serve_loads_a_directory_with_the_class_its_task_names(models: dict[str, Any]) -> None:
    from slimembed.serve.cli import load_model

    reranker = load_model(str(models["reranker"].model_dir), threads=1)
    assert isinstance(reranker, TextCrossEncoder)
    assert reranker.model_name == str(models["reranker"].model_dir)
    embedder = load_model(str(models["bert"].model_dir), threads=1, precision=None)
    assert isinstance(embedder, TextEmbedding)
    np.testing.assert_array_equal(embedder.encode(TEXTS[:3]), models["bert"].encode(TEXTS[:3]))


def test_sigterm_finishes_accepted_requests_then_exits(exported: Callable[[str], Path]) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    model_dir = exported("bert")
    cmd = [sys.executable, "-m", "slimembed", "serve", str(model_dir), "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--threads", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLIMEMBED_LOG_LEVEL": "warning"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if call(url + "/health", timeout=1)[0] == 200:
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        texts = TEXTS * 10
        name = model_dir.name

        def post(_: int) -> tuple[int, Any]:
            body = {"model": name, "input": texts, "encoding_format": "float"}
            status, _, answer = call(url + "/v1/embeddings", body, timeout=120)
            return status, answer

        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(post, i) for i in range(6)]
            # Wait until all six are accepted (queued or running), then ask the server to stop.
            deadline = time.monotonic() + 30
            while (in_flight := _queued(url)) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            answers = [p.result(timeout=120) for p in pending]
        # uvicorn shuts down gracefully, then re-raises the signal it caught, so the exit
        # status tells what stopped the server.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        errors = proc.communicate(timeout=60)[1]
    assert "Traceback" not in errors, errors
    assert in_flight >= 4  # the signal came while the requests were queued or running
    want = TextEmbedding(model_dir, threads=1).encode(texts, prompt="document")
    for status, answer in answers:
        assert status == 200
        got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-6)


def _queued(url: str) -> float:
    _, _, text = call(url + "/metrics", timeout=5)
    for line in text.splitlines():
        if line.startswith("slimembed_queue_depth{"):
            return float(line.split()[-1])
    return 0.0


LAMBDA_SCRIPT = """
import json, sys, time
start = time.perf_counter()
from slimembed.serve.aws_lambda import handler
loaded = time.perf_counter()
out = [handler(json.loads(line), None) for line in sys.stdin]
print(json.dumps({"answers": out, "import_s": loaded - start}))
"""


def _http_api_event(path: str, body: Any) -> dict[str, Any]:
    """An HTTP API (payload 2.0) / Function URL event, as Lambda delivers it."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": "abc.lambda-url.on.aws"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc",
            "domainName": "abc.lambda-url.on.aws",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "test",
            },
            "requestId": "id",
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": 0,
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def _rest_api_event(path: str, body: Any) -> dict[str, Any]:
    """A REST API (payload 1.0) proxy event."""
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json", "Host": "abc.execute-api.aws"},
        "multiValueHeaders": {"Content-Type": ["application/json"]},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": "POST",
            "path": "/prod" + path,
            "stage": "prod",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def test_aws_lambda_handler_answers_api_gateway_and_function_url_events() -> None:
    pytest.importorskip("mangum")
    texts = TEXTS[:3]
    events = [
        _http_api_event("/v1/embeddings", {"model": "default", "input": texts}),
        _rest_api_event("/embed", {"inputs": texts}),
        _http_api_event("/embed", {"inputs": []}),
    ]
    stdin = "".join(json.dumps(e) + "\n" for e in events)
    env = {k: v for k, v in os.environ.items() if k != "SLIMEMBED_MODEL"}
    done = subprocess.run(
        [sys.executable, "-c", LAMBDA_SCRIPT],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=True,
    )
    answers = json.loads(done.stdout)["answers"]
    want = TextEmbedding().encode(texts, prompt="document")
    openai, tei, empty = answers
    assert openai["statusCode"] == 200
    data = json.loads(openai["body"])["data"]
    # The default encoding is float: base64 is what the openai client asks for, not the API's.
    np.testing.assert_array_equal(np.array([d["embedding"] for d in data], np.float32), want)
    assert tei["statusCode"] == 200
    np.testing.assert_array_equal(np.array(json.loads(tei["body"]), np.float32), want)
    assert empty["statusCode"] == 400
    assert json.loads(empty["body"])["error_type"] == "Empty"
