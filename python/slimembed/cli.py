"""The ``slimembed`` command: embed texts, inspect model directories; other distributions add
subcommands (``export``, ``bench``) through the ``slimembed.commands`` entry-point group."""

from __future__ import annotations

import codecs
import contextlib
import importlib.metadata
import json
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from slimembed import corpus, hub, registry
from slimembed.corpus import decode_line, replacing
from slimembed.errors import SlimembedError

if TYPE_CHECKING:
    from slimembed.text_embedding import TextEmbedding

#: The entry-point group whose click commands become ``slimembed`` subcommands.
COMMANDS_GROUP = "slimembed.commands"

#: Commands other distributions bring, and how to get them when none is installed.
MISSING = {
    "export": (
        "Export Hugging Face models (needs the slimembed-export distribution).",
        "the export pipeline is not installed: install it with `pip install ./export` from a "
        "slimembed checkout (it brings torch and transformers)",
    ),
    "bench": (
        "Benchmark slimembed against other engines (needs the slimembed-bench distribution).",
        "the benchmarks are not installed: install them with `pip install ./benchmarks` from "
        "a slimembed checkout (`pip install './benchmarks[fastembed]'` adds fastembed)",
    ),
}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP)}


def _placeholder(name: str) -> click.Command:
    """``slimembed NAME`` when no distribution provides NAME: says what to install."""
    short, message = MISSING[name]

    def fail(args: tuple[str, ...]) -> None:
        raise click.ClickException(message)

    return click.Command(
        name,
        callback=fail,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
        help=short,
        short_help=short,
    )


class _Commands(click.Group):
    """The runtime's own commands plus, loaded only when asked for, each entry point of
    ``slimembed.commands`` (so ``slimembed embed`` imports none of them)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_entry_points(), *MISSING})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry_point = _entry_points().get(cmd_name)
        if entry_point is None:
            return _placeholder(cmd_name) if cmd_name in MISSING else None
        loaded = entry_point.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(
                f"entry point {entry_point.value} ({COMMANDS_GROUP}) is not a click command"
            )
        return loaded


@click.group(cls=_Commands)
@click.version_option(package_name="slimembed")
def main() -> None:
    """slimembed: text embeddings on ONNX Runtime without PyTorch."""


def _lines(data: bytes, source: str) -> list[str]:
    """The lines of ``data``, each decoded as UTF-8: split at ``\\n`` (a ``\\r`` before it
    dropped), so a text keeps any other line separator it holds and line numbers are those
    of ``wc -l`` and editors; a leading byte-order mark is dropped. ValueError naming
    ``source`` and the line when one is not UTF-8."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if lines and lines[0].startswith(codecs.BOM_UTF8):
        lines[0] = lines[0][len(codecs.BOM_UTF8) :]
    return [decode_line(line, source, number) for number, line in enumerate(lines, 1)]


class _Terminated(SystemExit):
    """Raised in the main thread when SIGTERM arrives, so that cleanup runs as for Ctrl-C."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration (exit status 128 + 15, as a shell
    reports a process killed by it) so ``finally`` blocks run; the old handler comes back.
    Outside the main thread, where Python cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: object) -> None:
        raise _Terminated(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_texts(texts: tuple[str, ...], input_file: Path | None) -> list[str]:
    """TEXTS, then the lines of --file; stdin's lines when neither gives any."""
    items = list(texts)
    if input_file is not None:
        try:
            items += _lines(input_file.read_bytes(), str(input_file))
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="'--file' / '-f'") from None
    if not items and not sys.stdin.isatty():
        try:
            items = _lines(sys.stdin.buffer.read(), "stdin")
        except ValueError as err:
            raise click.UsageError(str(err)) from None
    if not items:
        raise click.UsageError("no texts: pass TEXTS, --file, or pipe lines on stdin")
    return items


def _summary(embedder: object, items: list[str], vectors: np.ndarray) -> None:
    """Print each text's first components and norm, and the cosine matrix for a few texts."""
    click.echo(f"{embedder!r}: {vectors.shape[0]} texts -> {vectors.shape[1]} dims")
    for text, vec in zip(items, vectors, strict=True):
        shown = " ".join(f"{x:+.4f}" for x in vec[:6])
        click.echo(f"{text[:40]!r:44} [{shown} ...] |v|={np.linalg.norm(vec):.4f}")
    if 1 < len(items) <= 10:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        click.echo("cosine similarity:")
        for i, row in enumerate(unit @ unit.T):
            click.echo(f"  [{i}] " + " ".join(f"{x:+.3f}" for x in row))


_POSITIVE = click.IntRange(min=1)


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
    help="Read texts from this UTF-8 file, one per line (stdin when TEXTS and --file are "
    "both omitted).",
)
@click.option("--query", "prompt", flag_value="query", help="Apply the model's query prompt.")
@click.option(
    "--document", "prompt", flag_value="document", help="Apply the model's document prompt."
)
@click.option("--dim", type=_POSITIVE, default=None, help="Matryoshka: keep this many dimensions.")
@click.option("--batch-size", type=_POSITIVE, default=64, show_default=True)
@click.option(
    "--threads", type=_POSITIVE, default=None, help="ONNX Runtime threads (default: all cores)."
)
@click.option("--cuda", is_flag=True, help="Run on the CUDA provider (error if unavailable).")
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write vectors to a .npy file or as JSON lines (any other name) instead of printing "
    "a summary. The file appears only once complete; an older one stays until then.",
)
@click.option(
    "--input",
    "-i",
    "corpus_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Embed a corpus file (.txt: a text per line; .jsonl or .parquet: --column) into "
    "--output (.parquet or .npy), in shards: a rerun resumes an interrupted run.",
)
@click.option("--column", default="text", show_default=True, help="--input's text column.")
@click.option("--id-column", default=None, help="--input's id column, kept in the output.")
@click.option(
    "--prompt",
    "prompt",
    type=click.Choice(["query", "document"]),
    help="Apply the model's query or document prompt (as --query / --document).",
)
@click.option("--instruction", default=None, help="The task instruction of query prompts.")
@click.option(
    "--shard-size",
    type=_POSITIVE,
    default=corpus.DEFAULT_SHARD_ROWS,
    show_default=True,
    help="--input: rows per shard (what a resumed run may redo).",
)
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="--input: leave out rows whose text is null or not a string, and list them.",
)
@click.option("--overwrite", is_flag=True, help="--input: replace an existing --output.")
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    help="--input: run on a Ray cluster (ADDRESS, or a local one when none is given); "
    "needs slimembed[ray]. --output is then a folder of Parquet files.",
)
def embed(
    model: str | None,
    texts: tuple[str, ...],
    input_file: Path | None,
    prompt: str | None,
    dim: int | None,
    batch_size: int,
    threads: int | None,
    cuda: bool,
    output: Path | None,
    corpus_file: Path | None,
    column: str,
    id_column: str | None,
    instruction: str | None,
    shard_size: int,
    skip_bad_rows: bool,
    overwrite: bool,
    ray_address: str | None,
) -> None:
    """Embed TEXTS (or the lines of --file, or stdin) and print or save the vectors; or
    embed the corpus file --input into --output."""
    if output is not None and output.is_dir() and ray_address is None:
        raise click.BadParameter(f"{output} is a folder", param_hint="'--output' / '-o'")
    if corpus_file is not None:
        if texts or input_file is not None:
            raise click.UsageError("--input embeds a corpus file: pass no TEXTS and no --file")
        if output is None:
            raise click.UsageError("--input needs --output (.parquet or .npy)")
        settings = {
            "column": column,
            "id_column": id_column,
            "prompt": prompt,
            "instruction": instruction,
            "dim": dim,
            "batch_size": batch_size,
        }
        if ray_address is not None:
            _embed_on_ray(model, corpus_file, output, ray_address, threads, overwrite, settings)
        else:
            _embed_corpus(
                model,
                corpus_file,
                output,
                threads,
                cuda,
                shard_size,
                skip_bad_rows,
                overwrite,
                settings,
            )
        return
    if ray_address is not None or skip_bad_rows or overwrite or id_column is not None:
        raise click.UsageError(
            "--ray, --skip-bad-rows, --overwrite and --id-column apply to --input only"
        )
    if output is not None and not output.absolute().parent.is_dir():
        raise click.BadParameter(
            f"folder {output.absolute().parent} does not exist", param_hint="'--output' / '-o'"
        )
    with _sigterm_unwinds(), contextlib.ExitStack() as stack:
        # The output file is made first, so that an interrupted run never leaves it behind.
        fh = None if output is None else stack.enter_context(replacing(output))
        items = _read_texts(texts, input_file)
        embedder, vectors = _encode(items, model, prompt, dim, batch_size, threads, cuda)
        if output is None or fh is None:
            _summary(embedder, items, vectors)
            return
        try:
            if output.suffix == ".npy":
                np.save(fh, vectors)
            else:
                for text, vec in zip(items, vectors, strict=True):
                    line = json.dumps({"text": text, "embedding": vec.tolist()}) + "\n"
                    fh.write(line.encode())
        except OSError as err:
            raise click.ClickException(f"could not write {output}: {err}") from err
    if output.suffix == ".npy":
        click.echo(f"wrote {vectors.shape} float32 to {output}")
    else:
        click.echo(f"wrote {len(items)} JSON lines to {output}")


def _open(model: str | None, threads: int | None, cuda: bool) -> TextEmbedding:
    """``TextEmbedding(model)``; a library error becomes a click error."""
    from slimembed.text_embedding import TextEmbedding

    try:
        return TextEmbedding(model, threads=threads, cuda=cuda)
    except SlimembedError as err:
        raise click.ClickException(str(err)) from err


def _embed_corpus(
    model: str | None,
    corpus_file: Path,
    output: Path,
    threads: int | None,
    cuda: bool,
    shard_size: int,
    skip_bad_rows: bool,
    overwrite: bool,
    settings: dict[str, Any],
) -> None:
    """``slimembed embed --input``: the resumable single-machine job (slimembed.corpus)."""
    try:
        corpus.check_paths(corpus_file, output, settings["id_column"], overwrite)
    except corpus.CorpusError as err:
        raise click.UsageError(str(err)) from None
    embedder = _open(model, threads, cuda)
    try:
        embedder.check_dim(settings["dim"])
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--dim'") from None
    with _sigterm_unwinds():
        try:
            report = corpus.run(
                embedder,
                model or "default",
                corpus_file,
                output,
                shard_rows=shard_size,
                skip_bad_rows=skip_bad_rows,
                overwrite=overwrite,
                **settings,
            )
        except (SlimembedError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        except OSError as err:
            raise click.ClickException(f"could not write {output}: {err}") from err
    resumed = f", {report.resumed_shards} shards resumed" if report.resumed_shards else ""
    click.echo(f"wrote {report.embedded} vectors of {report.rows} rows to {output}{resumed}")
    if report.skipped:
        click.echo(
            f"skipped {len(report.skipped)} rows (all listed in {corpus.skipped_file(output)}):",
            err=True,
        )
        for item in report.skipped[: corpus.SHOWN_SKIPPED]:
            click.echo(f"  row {item['row']} (id {item['id']!r}): {item['reason']}", err=True)


def _embed_on_ray(
    model: str | None,
    corpus_file: Path,
    output: Path,
    address: str,
    threads: int | None,
    overwrite: bool,
    settings: dict[str, Any],
) -> None:
    """``slimembed embed --input ... --ray``: the same job through Ray Data."""
    try:
        from slimembed.integrations import ray as ray_integration
    except ImportError as err:
        raise click.ClickException(
            f"--ray needs Ray Data: pip install 'slimembed[ray]' ({err})"
        ) from err
    try:
        written = ray_integration.embed_file(
            corpus_file,
            output,
            model=model,
            address=None if address == "local" else address,
            num_cpus=threads or 1,
            overwrite=overwrite,
            **settings,
        )
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(f"wrote {written} vectors to {output}/ (Parquet files, through Ray Data)")


def _encode(
    items: list[str],
    model: str | None,
    prompt: str | None,
    dim: int | None,
    batch_size: int,
    threads: int | None,
    cuda: bool,
) -> tuple[TextEmbedding, np.ndarray]:
    """The model and the vectors of ``items``; library errors become click errors."""
    embedder = _open(model, threads, cuda)
    try:
        embedder.check_dim(dim)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="'--dim'") from None
    try:
        vectors = embedder.encode(
            items, batch_size=batch_size, prompt=prompt, dim=dim, progress=len(items) > 1000
        )
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    return embedder, vectors


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
@click.argument("model")
@click.option("--model-file", default=None, help="For a repository: the graph to describe.")
@click.option("--precision", default=None, help="For a repository: the precision to pick.")
def info(model: str, model_file: str | None, precision: str | None) -> None:
    """Print the manifest slimembed runs MODEL with: pooling, prompts, limits, source and
    parity figures. MODEL is anything TextEmbedding takes; for a repository without a
    slimembed manifest, also which graph runs and which other graphs it holds."""
    from slimembed import repos, session

    try:
        model_dir, manifest = hub.open_model(
            model, task=None, model_file=model_file, precision=precision
        )
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    click.echo(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False))
    default, _ = session.choose_precision(manifest)
    if default == "int8":
        variant = manifest.variants.get("int8")
        recipe = variant.fidelity.get("recipe") if variant is not None else None
        click.echo(f"on CPU runs int8 by default; recipe: {recipe or 'not recorded'}")
        click.echo(f"int8 kernel on this CPU: {session.int8_kernel()}")
    if manifest.source.get("adopted_by") and manifest.graph_file is not None:
        why = (
            f"model_file={model_file!r}"
            if model_file
            else f"precision={precision!r}"
            if precision
            else f"the float32 default ({' or '.join(repos.DEFAULT_GRAPHS)})"
        )
        # A graph slimembed rewrote runs from its own directory; the repository's listing is
        # the snapshot's.
        original = manifest.source.get("files", [manifest.graph_file])[0]
        click.echo(f"runs {model_dir / manifest.graph_file} ({original}: {why})")
        fusion = manifest.source.get("fusion")
        if fusion:
            click.echo(f"fusion: {fusion}")
        try:  # the snapshot (open_model gave the directory that runs, which may be ours)
            snapshot = hub.resolve_model(model, model_file=model_file, precision=precision)
        except (SlimembedError, ValueError) as err:
            raise click.ClickException(str(err)) from err
        graphs = repos.graph_files(repos.listing(snapshot))
        for graph in (g for g in graphs if g != original):
            click.echo(f"also here: {graph} ({repos.graph_precision(graph)}; --model-file {graph})")


@main.command()
@click.argument("model")
@click.option(
    "--precision",
    "precisions",
    type=click.Choice(["int8", "fp16"]),
    multiple=True,
    default=("int8",),
    show_default=True,
    help="The variant to add (repeat for both): int8 for CPU, fp16 for CUDA.",
)
@click.option("--model-file", default=None, help="For a repository: the FP32 graph to start from.")
def quantize(model: str, precisions: tuple[str, ...], model_file: str | None) -> None:
    """Add slimembed's INT8 (or FP16) variant to MODEL, with its fidelity figures in the
    manifest: an exported directory in place, a Hub repository (by id or folder) in its model
    directory under the cache, so that the next load runs it. Needs onnx, not torch
    (pip install 'slimembed[quantize]')."""
    from slimembed import repos

    if not repos.has_onnx():
        raise click.ClickException(
            "slimembed quantize needs the onnx package: pip install 'slimembed[quantize]'"
        )
    from slimembed.optimize.quantize import add_variants

    try:
        model_dir, manifest = hub.open_model(
            model, task="embed", model_file=model_file, precision="fp32", own_dir=True
        )
        if hub.snapshot_repo(model_dir) is not None:
            raise click.ClickException(
                f"{model} is a slimembed model repository in the hub cache ({model_dir}): its "
                "files are the repository's; export or copy it to a folder to quantize it"
            )
        if manifest.kind != "transformer":
            raise click.ClickException(f"{model} is a {manifest.kind} model: it has no graph")
        if manifest.precision != "fp32":
            raise click.ClickException(
                f"{model_file or model} is a {manifest.precision} graph: quantizing starts from "
                "an FP32 one (leave out model_file= for the repository's FP32 default)"
            )
        command = shlex.join(["slimembed", "quantize", model, *_precision_args(precisions)])
        manifest = add_variants(model_dir, manifest, precisions, command)
    except (SlimembedError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    manifest.save(model_dir)
    for precision in precisions:
        figures = manifest.variants[precision].fidelity
        click.echo(
            f"{precision}: {model_dir / manifest.variants[precision].graph_file}; cosine to fp32 "
            f"on {figures['probe_texts']} probe texts mean {figures['cosine_to_fp32_mean']:.5f}, "
            f"min {figures['cosine_to_fp32_min']:.5f}; alone vs batched min "
            f"{figures['batch_invariance_min_cosine']:.7f}"
        )


def _precision_args(precisions: tuple[str, ...]) -> list[str]:
    return [arg for p in precisions for arg in ("--precision", p)]
