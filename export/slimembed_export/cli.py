"""``slimembed export``: the export pipeline's subcommand of the ``slimembed`` command.

The runtime's CLI knows no export code: it finds this command through the
``slimembed.commands`` entry point this distribution declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from slimembed import hub, registry
from slimembed.errors import SlimembedError
from slimembed.manifest import PADDING_SIDES, POOLING_MODES, PRECISIONS
from slimembed_export.pipeline import ExportOptions, export_model


@click.command(name="export")
@click.argument("source")
@click.argument("out_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--family",
    type=click.Choice(sorted(registry.FAMILIES)),
    default=None,
    help="Embed with this family's recipe (for models the registry does not list).",
)
@click.option(
    "--pooling",
    type=click.Choice(list(POOLING_MODES)),
    default=None,
    help="Pooling (default: the family's, else the sentence-transformers config's, else by "
    "architecture).",
)
@click.option("--normalize/--no-normalize", default=None, help="L2-normalize vectors.")
@click.option(
    "--max-length", type=int, default=None, help="Tokens per text, special tokens included."
)
@click.option("--padding-side", type=click.Choice(list(PADDING_SIDES)), default=None)
@click.option(
    "--attention",
    type=click.Choice(list(registry.ATTENTIONS)),
    default=None,
    help="Decoders: causal or bidirectional (default: the source config's is_causal, else the "
    "family's, else causal).",
)
@click.option("--query-template", default=None, help="Query prompt, e.g. 'query: {text}'.")
@click.option("--document-template", default=None, help="Document prompt, e.g. 'passage: {text}'.")
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    multiple=True,
    default=("fp32",),
    show_default=True,
    help="Static tables: the table's precision. Transformers: int8 and/or fp16 graphs written "
    "beside the fp32 one, with their fidelity in the manifest (repeat for several).",
)
@click.option(
    "--task",
    type=click.Choice(["embed", "rerank"]),
    default="embed",
    show_default=True,
    help="rerank: a causal LM scoring (query, document) pairs by log-probability (SGPT).",
)
@click.option(
    "--rerank-template",
    default=None,
    help="rerank: the prompt before the query, with {document} (default: SGPT's).",
)
@click.option(
    "--fuse/--no-fuse",
    default=True,
    show_default=True,
    help="Write fused graphs (decoders: ONNX Runtime's attention, rotary and RMSNorm "
    "operators; encoders: fused attention). --no-fuse keeps the traced graph.",
)
@click.option("--revision", default=None, help="Hub revision to pin.")
@click.option(
    "--trust-remote-code", is_flag=True, help="Allow the source's own Python code to run."
)
def export_command(source: str, out_dir: Path | None, **options: Any) -> None:
    """Export SOURCE (a registry name, a Hugging Face model directory or hub id) to OUT_DIR and
    verify it.

    OUT_DIR defaults, for a registry name, to the cache, where TextEmbedding(NAME) finds it.
    """
    if out_dir is None:
        spec = registry.find(source)
        if spec is None or spec.name != source:
            raise click.UsageError(
                "OUT_DIR is needed unless SOURCE is a registry name (see `slimembed models`)"
            )
        out_dir = hub.export_dir(source)
    try:
        manifest = export_model(source, out_dir, ExportOptions(**options))
    except SlimembedError as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"exported {source} -> {out_dir} ({manifest.pooling} pooling, dim {manifest.dim})")
    click.echo("parity: " + json.dumps(manifest.parity))
