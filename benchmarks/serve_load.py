"""``slimembed serve`` under load, against a FastAPI route calling fastembed per request.

    python -m benchmarks.serve_load --model MINILM_DIR --source MINILM_HF_DIR \\
        --fastembed-site /tmp/fe-site --out benchmarks/results/serve.json

The baseline is what a user writes without a server of ours: a FastAPI ``def`` route (run on
FastAPI's thread pool) that calls fastembed's ``embed`` for each request and returns OpenAI's
JSON, on the same ``model.onnx`` and thread count, served by uvicorn. fastembed pins an older
huggingface_hub, so it is installed apart (``pip install --target SITE fastembed fastapi
uvicorn``) and its server runs with that folder first on its path.

With ``--granian``, slimembed's own application (``slimembed.serve.app.create_app``, the
same models and settings) is served by granian as well, beside uvicorn, to measure the choice
of ASGI server (granian is installed apart: ``pip install granian``).

The servers run in processes of their own on 127.0.0.1, one at a time. The generator (this
process) opens C keep-alive connections, each sending its share of a fixed number of requests
one after another, for C in 1, 8, 32, 128, with requests of one sentence and of 32; levels are
interleaved (slimembed, baseline, slimembed, ...). Reported: texts/s over the level and p50,
p95, p99 request latency; and, for the overhead of the server itself, the p50 of a direct
in-process ``embed`` of one sentence beside the server's p50 at one client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from benchmarks.datasets import sts
from benchmarks.engines import EngineSpec
from benchmarks.timing import latency, machine, percentile

CHECKOUT = Path(__file__).resolve().parent.parent
LEVELS = (1, 8, 32, 128)
SHAPES = {"1 sentence": 1, "32 sentences": 32}
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"a server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException("a server did not start in time")


async def _client(port: int, bodies: list[bytes]) -> list[float]:
    """One keep-alive connection sending ``bodies`` one after another; each request's
    seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seconds = []
    try:
        for body in bodies:
            head = (
                "POST /v1/embeddings HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                f"\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            start = time.perf_counter()
            writer.write(head + body)
            await writer.drain()
            response = await reader.readuntil(b"\r\n\r\n")
            match = _LENGTH.search(response)
            if match is None or not response.startswith(b"HTTP/1.1 200"):
                raise click.ClickException(f"bad answer: {response[:200]!r}")
            await reader.readexactly(int(match.group(1)))
            seconds.append(time.perf_counter() - start)
    finally:
        writer.close()
    return seconds


def _level(port: int, clients: int, bodies: list[bytes], timeout: float) -> tuple[float, list]:
    """Wall seconds for ``clients`` connections sending ``bodies`` between them, and every
    request's latency."""

    async def run() -> tuple[float, list[float]]:
        shares = [bodies[i::clients] for i in range(clients)]
        start = time.perf_counter()
        done = await asyncio.wait_for(
            asyncio.gather(*(_client(port, share) for share in shares if share)), timeout
        )
        return time.perf_counter() - start, [s for share in done for s in share]

    return asyncio.run(run())


def _bodies(texts: list[str], per_request: int, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        start = (i * per_request) % (len(texts) - per_request)
        batch = texts[start : start + per_request]
        body = {"model": "bench", "input": batch, "encoding_format": "float"}
        out.append(json.dumps(body).encode())
    return out


def _baseline_server(spec: str, port: int) -> None:
    """The FastAPI + fastembed route, as a user writes it."""
    import uvicorn
    from fastapi import FastAPI

    from benchmarks.engines import load

    engine = load(EngineSpec.from_json(spec))
    app = FastAPI()

    @app.post("/v1/embeddings")
    def embeddings(body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        vectors = engine.encode(texts, 256)
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ]
        return {"object": "list", "data": data, "model": body.get("model")}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def granian_app() -> Any:
    """slimembed's application for granian's factory: the model of ``SLIMEMBED_BENCH_MODEL``
    served as ``bench``, with ``slimembed serve``'s default settings."""
    from slimembed.serve.app import ServeSettings, create_app
    from slimembed.serve.cli import load_model

    model = load_model(
        os.environ["SLIMEMBED_BENCH_MODEL"],
        threads=int(os.environ["SLIMEMBED_BENCH_THREADS"]),
        precision=os.environ["SLIMEMBED_BENCH_PRECISION"],
    )
    return create_app({"bench": model}, ServeSettings())


def _granian_server(port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "benchmarks.serve_load:granian_app",
        factory=True,
        interface=Interfaces.ASGI,
        address="127.0.0.1",
        port=port,
        workers=1,
        log_enabled=False,
    ).serve()


def _start(name: str, args: dict[str, Any]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "SLIMEMBED_LOG_LEVEL": "warning"}
    if name == "granian":
        env["SLIMEMBED_BENCH_MODEL"] = args["model"]
        env["SLIMEMBED_BENCH_THREADS"] = str(args["threads"])
        env["SLIMEMBED_BENCH_PRECISION"] = args["precision"]
        cmd = [sys.executable, "-m", "benchmarks.serve_load", "--granian-port", str(port)]
    elif name == "baseline":
        env["PYTHONPATH"] = os.pathsep.join([args["fastembed_site"], str(CHECKOUT)])
        cmd = [sys.executable, "-m", "benchmarks.serve_load", "--baseline-spec", args["spec"]]
        cmd += ["--baseline-port", str(port)]
    else:
        cmd = [sys.executable, "-m", "slimembed", "serve", "--model", f"bench={args['model']}"]
        cmd += ["--port", str(port), "--threads", str(args["threads"])]
        cmd += ["--precision", args["precision"]]
    proc = subprocess.Popen(cmd, env=env, cwd=CHECKOUT)
    _wait_ready(port, proc)
    return proc, port


@click.command()
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--fastembed-site", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--precision", default="fp32", show_default=True)
@click.option("--requests", "n_requests", type=int, default=256, show_default=True)
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--granian", is_flag=True, help="Also serve slimembed's app on granian.")
@click.option("--granian-port", hidden=True, type=int, default=None)
@click.option("--baseline-spec", hidden=True, default=None)
@click.option("--baseline-port", hidden=True, type=int, default=None)
def main(
    model_dir: str | None,
    source: str | None,
    fastembed_site: str | None,
    threads: int,
    precision: str,
    n_requests: int,
    workdir: Path | None,
    out: Path | None,
    granian: bool,
    granian_port: int | None,
    baseline_spec: str | None,
    baseline_port: int | None,
) -> None:
    if granian_port is not None:
        _granian_server(granian_port)
        return
    if baseline_spec is not None:
        assert baseline_port is not None
        _baseline_server(baseline_spec, baseline_port)
        return
    if model_dir is None:
        raise click.UsageError("--model is required")
    from benchmarks.models import fastembed_view
    from slimembed import Manifest, TextEmbedding

    manifest = Manifest.load(Path(model_dir))
    texts = sts("en-test").sentences1 + sts("en-test").sentences2
    ours = {"model": model_dir, "threads": threads, "precision": precision}
    servers: dict[str, dict[str, Any]] = {"slimembed serve": ours}
    if granian:
        servers["slimembed app on granian"] = {**ours, "server": "granian"}
    if fastembed_site is not None:
        view = fastembed_view(
            Path(model_dir),
            Path(source) if source else None,
            (workdir or Path(model_dir).parent) / "fastembed-view",
        )
        options = {
            "name": "serve-bench",
            "kind": "transformer",
            "dim": manifest.dim,
            "pooling": manifest.pooling,
            "normalize": manifest.normalize,
        }
        spec = EngineSpec(
            "fastembed", "fastembed", str(view), threads, manifest.max_length, options
        )
        servers["FastAPI + fastembed"] = {"spec": spec.to_json(), "fastembed_site": fastembed_site}
    results: dict[str, dict[str, Any]] = {name: {} for name in servers}
    # Both servers stay up (an idle one costs no CPU); each level runs on one, then the other.
    running = {
        name: _start(args.get("server", "baseline" if "spec" in args else "slimembed"), args)
        for name, args in servers.items()
    }
    try:
        for shape, per_request in SHAPES.items():
            for clients in LEVELS:
                n = max(
                    n_requests // per_request * 4 if per_request > 1 else n_requests, 2 * clients
                )
                bodies = _bodies(texts, per_request, n)
                for name, (_, port) in running.items():
                    _level(port, min(clients, 4), bodies[:8], 120)  # warm-up
                    wall, seconds = _level(port, clients, bodies, 600)
                    row = latency(seconds)
                    row["texts_per_s"] = n * per_request / wall
                    row["requests"] = n
                    results[name][f"{shape}, {clients} clients"] = row
                    click.echo(
                        f"{name:22} {shape:12} {clients:4} clients {row['texts_per_s']:8.1f} "
                        f"texts/s  p50 {row['p50']:7.2f} ms  p99 {row['p99']:7.2f} ms"
                    )
    finally:
        for proc, _ in running.values():
            proc.terminate()
            proc.wait(timeout=60)
    direct = TextEmbedding(model_dir, threads=threads, precision=precision)
    sentence = [texts[0]]
    for _ in range(20):
        list(direct.embed(sentence))
    times = []
    for i in range(200):
        start = time.perf_counter()
        list(direct.embed([texts[i % len(texts)]]))
        times.append(time.perf_counter() - start)
    report = {
        "machine": machine(),
        "model": str(model_dir),
        "precision": precision,
        "threads": threads,
        "servers": results,
        # The same model in this process, one sentence per embed call: the server's overhead
        # at one client is its p50 minus this.
        "direct_p50_ms": 1000 * percentile(times, 50),
    }
    click.echo(f"direct embed, one sentence: p50 {report['direct_p50_ms']:.2f} ms")
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
