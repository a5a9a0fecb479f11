"""The ``slimembed`` command: embed texts, export models, inspect model directories."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from slimembed import hub, registry
from slimembed.errors import SlimembedError
from slimembed.manifest import PADDING_SIDES, POOLING_MODES


@click.group()
@click.version_option(package_name="slimembed")
def main() -> None:
    """slimembed: text embeddings on ONNX Runtime without PyTorch."""


@main.command()
@click.argument("texts", nargs=-1)
@click.option(
    "--model",
    "-m",
    default=None,
    help="Model directory or hub id (default: the embedded static model).",
)
@click.option(
    "--file",
    "-f",
    "input_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read texts from this file, one per line ('-' style stdin: omit TEXTS and --file).",
)
@click.option("--query", "prompt", flag_value="query", help="Apply the model's query prompt.")
@click.option(
    "--document", "prompt", flag_value="document", help="Apply the model's document prompt."
)
@click.option("--dim", type=int, default=None, help="Matryoshka: keep this many dimensions.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)."
)
@click.option("--cuda", is_flag=True, help="Run on the CUDA provider (error if unavailable).")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write vectors to a .npy file or as JSON lines (.jsonl) instead of printing a summary.",
)
def embed(
    model: str,
    texts: tuple[str, ...],
    input_file: Path | None,
    prompt: str | None,
    dim: int | None,
    batch_size: int,
    threads: int | None,
    cuda: bool,
    output: Path | None,
) -> None:
    """Embed TEXTS (or the lines of --file, or stdin) and print or save the vectors."""
    from slimembed.text_embedding import TextEmbedding

    items = list(texts)
    if input_file is not None:
        items += input_file.read_text(encoding="utf-8").splitlines()
    if not items and not sys.stdin.isatty():
        items = sys.stdin.read().splitlines()
    if not items:
        raise click.UsageError("no texts: pass TEXTS, --file, or pipe lines on stdin")
    try:
        embedder = TextEmbedding(model, threads=threads, cuda=cuda)
        vectors = embedder.encode(
            items, batch_size=batch_size, prompt=prompt, dim=dim, progress=len(items) > 1000
        )
    except SlimembedError as err:
        raise click.ClickException(str(err)) from err
    if output is None:
        click.echo(f"{embedder!r}: {vectors.shape[0]} texts -> {vectors.shape[1]} dims")
        for text, vec in zip(items, vectors, strict=True):
            shown = " ".join(f"{x:+.4f}" for x in vec[:6])
            click.echo(f"{text[:40]!r:44} [{shown} ...] |v|={np.linalg.norm(vec):.4f}")
        if 1 < len(items) <= 10:
            unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            click.echo("cosine similarity:")
            for i, row in enumerate(unit @ unit.T):
                click.echo(f"  [{i}] " + " ".join(f"{x:+.3f}" for x in row))
    elif output.suffix == ".npy":
        np.save(output, vectors)
        click.echo(f"wrote {vectors.shape} float32 to {output}")
    else:
        with output.open("w", encoding="utf-8") as fh:
            for text, vec in zip(items, vectors, strict=True):
                fh.write(json.dumps({"text": text, "embedding": vec.tolist()}) + "\n")
        click.echo(f"wrote {len(items)} JSON lines to {output}")


@main.command(name="export")
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
    type=click.Choice(["fp32", "fp16", "int8"]),
    multiple=True,
    default=("fp32",),
    show_default=True,
    # ExportOptions takes them comma-separated.
    callback=lambda _ctx, _param, value: ",".join(value),
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
@click.option("--revision", default=None, help="Hub revision to pin.")
@click.option(
    "--trust-remote-code", is_flag=True, help="Allow the source's own Python code to run."
)
def export_command(source: str, out_dir: Path | None, **options: Any) -> None:
    """Export SOURCE (a registry name, a Hugging Face model directory or hub id) to OUT_DIR and
    verify it.

    OUT_DIR defaults, for a registry name, to the cache, where TextEmbedding(NAME) finds it.
    """
    try:
        from slimembed_export import ExportOptions, export_model
    except ImportError as err:
        raise click.ClickException(
            f"the export pipeline is not installed ({err}); install it with "
            "`pip install ./export` from a slimembed checkout (it brings torch and transformers)"
        ) from err
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


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dims", type=int, default=256, show_default=True, help="PCA dimensions.")
@click.option(
    "--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True
)
@click.option(
    "--sif",
    "sif_coefficient",
    type=float,
    default=1e-4,
    show_default=True,
    help="SIF coefficient of the Zipf token weights.",
)
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--threads", type=int, default=None)
def distill(
    model_dir: Path,
    out_dir: Path,
    dims: int,
    precision: str,
    sif_coefficient: float,
    batch_size: int,
    threads: int | None,
) -> None:
    """Make a static model in OUT_DIR from the exported transformer model in MODEL_DIR."""
    from slimembed.distill import distill as run

    try:
        manifest = run(
            model_dir,
            out_dir,
            dims=dims,
            precision=precision,
            sif_coefficient=sif_coefficient,
            batch_size=batch_size,
            threads=threads,
            progress=True,
        )
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    kept = manifest.source["pca_variance_kept"]
    click.echo(
        f"distilled {model_dir} -> {out_dir}: {manifest.source['vocabulary']} tokens x "
        f"{manifest.dim} dims ({precision}), PCA keeps {kept:.1%} of the variance"
    )


@main.command()
@click.argument("query")
@click.argument("documents", nargs=-1, required=True)
@click.option("-m", "--model", "model", required=True, help="A model exported with --task rerank.")
@click.option("--mean", is_flag=True, help="Divide each score by the query's token count.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
def rerank(
    query: str, documents: tuple[str, ...], model: str, mean: bool, threads: int | None
) -> None:
    """Score DOCUMENTS for QUERY with a reranker; print them best first."""
    from slimembed.rerank import TextCrossEncoder

    try:
        scores = list(TextCrossEncoder(model, threads=threads).rerank(query, documents, mean=mean))
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    for index in sorted(range(len(documents)), key=lambda i: -scores[i]):
        click.echo(f"{scores[index]:+10.4f}  [{index}] {documents[index][:70]!r}")


@main.command()
def models() -> None:
    """List the registry: known models, their family recipe and whether they are exported."""
    for spec in registry.all_specs():
        recipe = spec.recipe
        ready = "exported" if hub.exported(spec.name) else "not exported"
        click.echo(
            f"{spec.name:46} {spec.family:16} {recipe.pooling:13} {recipe.attention:13} "
            f"dim {spec.dim:<5} {spec.license:11} {ready}"
        )


@main.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info(model_dir: Path) -> None:
    """Print the manifest of MODEL_DIR: pooling, prompts, limits, source and parity figures."""
    from slimembed.manifest import Manifest

    try:
        manifest = Manifest.load(model_dir)
    except SlimembedError as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False))


def _benchmarks_checkout() -> Path | None:
    """The slimembed checkout holding the current directory, whose ``benchmarks`` package the
    bench command runs (it is not part of the installed wheel)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "benchmarks" / "cli.py").is_file() and (folder / "pyproject.toml").is_file():
            return folder
    return None


@main.command(
    name="bench",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_command(args: tuple[str, ...]) -> None:
    """Benchmark slimembed against sentence-transformers, fastembed and model2vec (run from a
    slimembed checkout with the bench extra; see `slimembed bench --help`)."""
    import importlib

    checkout = _benchmarks_checkout()
    if checkout is None:
        raise click.ClickException(
            "slimembed bench runs the benchmarks/ folder of a slimembed checkout, which the "
            "installed package does not carry: cd into a checkout (after "
            "`pip install '.[bench]'`), or run `python -m benchmarks` there"
        )
    sys.path.insert(0, str(checkout))
    # Imported by name: the benchmark code (and the engines it compares) is no part of the
    # runtime, nor of its type check.
    bench = importlib.import_module("benchmarks.cli").bench
    bench.main(args=list(args), prog_name="slimembed bench")
