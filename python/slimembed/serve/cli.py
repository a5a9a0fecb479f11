"""``slimembed serve``: load the models, build the application, run it on uvicorn.

uvicorn is the ASGI server: well kept, small (with httptools and uvloop where they install),
and it already does what a server must on SIGTERM: stop accepting, finish the accepted
requests, then run the lifespan's shutdown. Chosen by measurement over granian (one worker,
the same application): granian was no faster at 32 or 128 clients and 14-22% slower at one
and eight (benchmarks/RESULTS.md, "slimembed serve under load").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from slimembed import hub
from slimembed.errors import SlimembedError

INSTALL_HINT = "the server needs the serve extra: pip install 'slimembed[serve]'"


def load_model(source: str | None, **options: Any) -> Any:
    """``TextEmbedding`` or ``TextCrossEncoder``, as the model directory's task says.

    The source is resolved (downloaded, or adopted when it holds no slimembed manifest) once,
    here; the class then opens the directory that gave, not the source again."""
    from slimembed import TextCrossEncoder, TextEmbedding

    if source is None:
        return TextEmbedding(**options)
    model_dir, manifest = hub.open_model(
        source,
        task=None,
        cache_dir=options.get("cache_dir"),
        precision=options.get("precision"),
    )
    cls = TextCrossEncoder if manifest.task == "rerank" else TextEmbedding
    model = cls(model_dir, **options)
    model.model_name = str(source)
    return model


def served_name(source: str | None) -> str:
    """How a model is named in requests: ``default``, a hub id, or a directory's name."""
    if source is None:
        return "default"
    path = Path(source).expanduser()
    return path.resolve().name if path.exists() else source


@click.command("serve")
@click.argument("model", required=False)
@click.option(
    "--model",
    "named",
    multiple=True,
    metavar="NAME=MODEL",
    help="Serve MODEL under NAME (repeat for several models).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option(
    "--max-batch-tokens",
    type=click.IntRange(min=1),
    default=16384,
    show_default=True,
    help="Padded tokens per model batch at most.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Texts per model batch at most.",
)
@click.option(
    "--max-client-batch-size", type=click.IntRange(min=1), default=2048, show_default=True
)
@click.option(
    "--max-concurrent-requests", type=click.IntRange(min=1), default=512, show_default=True
)
@click.option(
    "--payload-limit",
    type=click.IntRange(min=1),
    default=2_000_000,
    show_default=True,
    help="Request body bytes at most.",
)
@click.option(
    "--api-key",
    envvar="SLIMEMBED_API_KEY",
    default=None,
    help="Require 'Authorization: Bearer KEY' on every route but /health.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--precision", default=None, help="fp32, int8 or fp16 (default: as TextEmbedding).")
@click.option(
    "--default-prompt",
    type=click.Choice(["document", "query", "none"]),
    default="document",
    show_default=True,
    help="The prompt of OpenAI requests that send no input_type.",
)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None)
@click.option("--access-log/--no-access-log", default=False, show_default=True)
def serve(
    model: str | None,
    named: tuple[str, ...],
    host: str,
    port: int,
    max_batch_tokens: int,
    batch_size: int,
    max_client_batch_size: int,
    max_concurrent_requests: int,
    payload_limit: int,
    api_key: str | None,
    threads: int | None,
    precision: str | None,
    default_prompt: str,
    cache_dir: str | None,
    access_log: bool,
) -> None:
    """Serve MODEL (anything TextEmbedding accepts; a rerank directory serves /rerank) over
    HTTP: OpenAI's /v1/embeddings, TEI's /embed and /rerank, /health, /info, /metrics."""
    try:
        import uvicorn

        from slimembed.serve.app import ServeSettings, create_app
    except ImportError as err:
        raise click.ClickException(f"{INSTALL_HINT} ({err})") from err
    sources: list[tuple[str, str | None]] = []
    if model is not None or not named:
        sources.append((served_name(model), model))
    for item in named:
        label, sep, target = item.partition("=")
        if not sep or not label or not target:
            raise click.BadParameter(f"{item!r} is not NAME=MODEL", param_hint="--model")
        sources.append((label, target))
    if len({name for name, _ in sources}) != len(sources):
        raise click.BadParameter("two models have the same name", param_hint="--model")
    options: dict[str, Any] = {
        "threads": threads,
        "max_tokens": max_batch_tokens,
        "precision": precision,
    }
    if cache_dir:
        options["cache_dir"] = cache_dir
    models = {}
    for name, source in sources:
        try:
            models[name] = load_model(source, **options)
        except (SlimembedError, ValueError) as err:
            raise click.ClickException(f"{source or 'the default model'}: {err}") from err
    settings = ServeSettings(
        batch_size=batch_size,
        max_client_batch_size=max_client_batch_size,
        max_concurrent_requests=max_concurrent_requests,
        payload_limit=payload_limit,
        api_key=api_key,
        default_prompt=None if default_prompt == "none" else default_prompt,
    )
    app = create_app(models, settings)
    click.echo(f"serving {list(models)} on http://{host}:{port}", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level=os.environ.get("SLIMEMBED_LOG_LEVEL", "info"),
        timeout_graceful_shutdown=30,
    )
