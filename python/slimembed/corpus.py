"""Embed a corpus file into a vectors file: streamed, written in shards, resumable.

``slimembed embed --input corpus.{txt,jsonl,parquet} --output vectors.{parquet,npy}`` reads
the corpus a chunk at a time and embeds it shard by shard into ``<output>.parts/``, a folder
beside the output. Each shard (``NNNNNN.parquet`` or ``.npy``, then its ``NNNNNN.json``
record) is renamed into place only once complete, so a run stopped at any point — Ctrl-C,
SIGTERM, ``kill -9``, a full disk — leaves complete shards only, and a rerun of the same job
resumes after the last of them: no row twice, none missing. When every shard is there the
output file is assembled from them (a temporary name, then a rename) and the folder removed.
The folder's ``job.json`` records the settings; a rerun with other settings, or after the
input changed, is refused rather than mixed.

Rows: a ``.txt`` line is a text; a ``.jsonl`` line is an object whose ``column`` field is the
text; a ``.parquet`` file has a ``column`` column (read through pyarrow, the ``parquet``
extra). Rows are numbered from 0 in input order. A row whose text is null or not a string
stops the run naming its row and id, or with ``skip_bad_rows`` is left out and listed (in
the summary and in ``<output>.skipped.jsonl``); nothing is dropped silently.

Parquet output holds the id column (``id_column``'s values under its own name, else ``row``,
the row number) and ``embedding``, a fixed-size list of float32; ``.npy`` output holds the
vectors alone, in row order.

Written here rather than taken from a library: pyarrow writes files but not resumable
shards, and Ray Data (``slimembed.integrations.ray``) is for clusters; this is the
single-machine job, a few hundred lines over pyarrow and numpy.
"""

from __future__ import annotations

import codecs
import contextlib
import itertools
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from slimembed.text_embedding import TextEmbedding

INPUT_SUFFIXES = (".txt", ".jsonl", ".parquet")
OUTPUT_SUFFIXES = (".parquet", ".npy")
#: Rows per shard: what a rerun may have to embed again.
DEFAULT_SHARD_ROWS = 10_000
#: The skipped rows named in the summary (all are in the ``.skipped.jsonl`` file).
SHOWN_SKIPPED = 10


class CorpusError(ValueError):
    """A corpus job that cannot run as asked: bad input rows, settings, or leftover parts."""


# ---- files that appear only once complete ----------------------------------------------------


@contextlib.contextmanager
def replacing(target: Path) -> Iterator[BinaryIO]:
    """A new file beside ``target`` that takes its place only once the block completes: an
    interrupted or failed run leaves no partial file and an older ``target`` untouched.

    The file is made as a plain ``open`` would make it (0666 less the umask; an existing
    target's mode is kept), in the same folder so that ``os.replace`` is atomic."""
    for _ in range(100):
        part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 random names all taken
        raise FileExistsError(f"no free temporary name beside {target}")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        with contextlib.suppress(FileNotFoundError):
            os.chmod(part, stat.S_IMODE(target.stat().st_mode))
        os.replace(part, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        raise


# ---- reading rows ----------------------------------------------------------------------------


def decode_line(line: bytes, source: str, number: int) -> str:
    """Line ``number`` (from 1) of ``source`` as text: a ``\\r`` before the ``\\n`` dropped;
    ValueError naming the source and the line when it is not UTF-8."""
    try:
        return line.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{source}: line {number} is not UTF-8 text (byte {err.start + 1}: {err.reason})"
        ) from None


def _file_lines(path: Path) -> Iterator[bytes]:
    """The lines of ``path`` without their ``\\n``, a leading byte-order mark dropped."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh):
            if number == 0 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8) :]
            yield line.removesuffix(b"\n")


@dataclass
class Rows:
    """A run of consecutive input rows: their ids and texts (a text may be bad: None or not
    a string, it is checked by the caller)."""

    first: int
    ids: list[Any]
    texts: list[Any]


def count_rows(path: Path) -> int:
    """The number of rows in the corpus file ``path``."""
    if path.suffix == ".parquet":
        return int(_parquet().ParquetFile(path).metadata.num_rows)
    with path.open("rb") as fh:
        count = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        if path.stat().st_size:
            fh.seek(-1, os.SEEK_END)
            count += fh.read(1) != b"\n"
    return count


def read_rows(
    path: Path, column: str, id_column: str | None, start: int, chunk: int
) -> Iterator[Rows]:
    """The rows of ``path`` from row ``start`` on, ``chunk`` at a time (the last may be
    shorter). Ids are ``id_column``'s values, else the row numbers."""
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, column, id_column, start, chunk)
        return
    source = str(path)
    if path.suffix == ".txt" and id_column is not None:
        raise CorpusError(f"{source}: a .txt corpus has no columns, so no --id-column")
    rows = Rows(start, [], [])
    for number, line in enumerate(_file_lines(path)):
        if number < start:
            continue
        text = decode_line(line, source, number + 1)
        if path.suffix == ".txt":
            rows.ids.append(number)
            rows.texts.append(text)
        else:
            record = _json_object(text, source, number)
            rows.texts.append(record.get(column))
            rows.ids.append(number if id_column is None else _json_id(record, id_column, number))
        if len(rows.texts) == chunk:
            yield rows
            rows = Rows(number + 1, [], [])
    if rows.texts:
        yield rows


def _json_object(text: str, source: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorpusError(
            f"{source}: row {number} (line {number + 1}) is not JSON: {err}"
        ) from None
    if not isinstance(record, dict):
        raise CorpusError(
            f"{source}: row {number} (line {number + 1}) is a JSON {type(record).__name__}, "
            "not an object"
        )
    return record


def _json_id(record: dict[str, Any], id_column: str, number: int) -> Any:
    value = record.get(id_column)
    if value is None:
        raise CorpusError(f"row {number} (line {number + 1}) has no id in field {id_column!r}")
    return value


def _parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise CorpusError("Parquet files need pyarrow: pip install 'slimembed[parquet]'") from err
    return pq


def _parquet_rows(
    path: Path, column: str, id_column: str | None, start: int, chunk: int
) -> Iterator[Rows]:
    pq = _parquet()
    reader = pq.ParquetFile(path)
    names = reader.schema_arrow.names
    wanted = [column] + ([id_column] if id_column is not None else [])
    for name in wanted:
        if name not in names:
            raise CorpusError(f"{path} has no column {name!r}; its columns: {names}")
    rows = Rows(start, [], [])
    seen = 0
    for batch in reader.iter_batches(batch_size=chunk, columns=list(dict.fromkeys(wanted))):
        first, seen = seen, seen + batch.num_rows
        if seen <= start:
            continue
        cut = max(start - first, 0)
        texts = batch.column(column).to_pylist()[cut:]
        if id_column is None:
            ids: list[Any] = list(range(first + cut, seen))
        else:
            ids = batch.column(id_column).to_pylist()[cut:]
            for offset, value in enumerate(ids):
                if value is None:
                    raise CorpusError(f"{path}: row {first + cut + offset} has a null id")
        # Batches end at row-group boundaries too: regroup them into runs of ``chunk`` rows.
        rows.ids += ids
        rows.texts += texts
        while len(rows.texts) >= chunk:
            yield Rows(rows.first, rows.ids[:chunk], rows.texts[:chunk])
            rows = Rows(rows.first + chunk, rows.ids[chunk:], rows.texts[chunk:])
    if rows.texts:
        yield rows


# ---- the job ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One corpus embedding: what ``job.json`` records, so a rerun resumes only the same job."""

    input: str
    input_size: int
    input_mtime_ns: int
    column: str
    id_column: str | None
    model: str
    prompt: str | None
    instruction: str | None
    dim: int | None
    shard_rows: int
    skip_bad_rows: bool
    output_format: str


@dataclass
class Report:
    """What a run did: rows embedded (all shards), rows skipped, shards embedded this run."""

    rows: int = 0
    embedded: int = 0
    resumed_shards: int = 0
    new_shards: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)


def parts_dir(output: Path) -> Path:
    """The folder of ``output``'s shards while the job runs."""
    return output.with_name(output.name + ".parts")


def skipped_file(output: Path) -> Path:
    """The JSON-lines list of the rows a run with ``skip_bad_rows`` left out."""
    return output.with_name(output.name + ".skipped.jsonl")


def bad_text(text: object) -> str | None:
    """Why ``text`` cannot be embedded as a corpus row (None when it can)."""
    if isinstance(text, str):
        return None
    return "null" if text is None else f"a {type(text).__name__}, not a string"


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to."""
    if output.exists() and not overwrite:
        raise CorpusError(f"{output} exists: pass --overwrite to replace it")


def check_paths(input_path: Path, output: Path, id_column: str | None, overwrite: bool) -> None:
    """Refuse what cannot run before anything is loaded: formats, an existing output."""
    if input_path.suffix not in INPUT_SUFFIXES:
        raise CorpusError(f"{input_path}: a corpus is one of {', '.join(INPUT_SUFFIXES)}")
    if output.suffix not in OUTPUT_SUFFIXES:
        raise CorpusError(f"{output}: vectors are written as {' or '.join(OUTPUT_SUFFIXES)}")
    if output.suffix == ".npy" and id_column is not None:
        raise CorpusError(
            f"{output}: a .npy file holds the vectors alone; write .parquet to keep the ids"
        )
    check_output(output, overwrite)
    if output.suffix == ".parquet" or input_path.suffix == ".parquet":
        _parquet()


def run(
    model: TextEmbedding,
    model_name: str,
    input_path: Path,
    output: Path,
    *,
    column: str = "text",
    id_column: str | None = None,
    prompt: str | None = None,
    instruction: str | None = None,
    dim: int | None = None,
    batch_size: int = 256,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    skip_bad_rows: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> Report:
    """Embed the rows of ``input_path`` into ``output``, resuming an interrupted run of the
    same job; see the module note. ``model_name`` is what the job records as its model."""
    check_paths(input_path, output, id_column, overwrite)
    width = model.check_dim(dim)
    model.plan(prompt, instruction)  # bad prompt arguments fail before any work
    info = input_path.stat()
    job = Job(
        input=str(input_path.resolve()),
        input_size=info.st_size,
        input_mtime_ns=info.st_mtime_ns,
        column=column,
        id_column=id_column,
        model=model_name,
        prompt=prompt,
        instruction=instruction,
        dim=dim,
        shard_rows=shard_rows,
        skip_bad_rows=skip_bad_rows,
        output_format=output.suffix,
    )
    parts = parts_dir(output)
    done = _resume(parts, job, overwrite)
    total = count_rows(input_path)
    report = Report()
    for record in done.values():
        _count(report, record)
    report.resumed_shards = len(done)
    bar = _bar(total, report.rows) if progress else None
    try:
        start = sum(record["rows"] for record in done.values())
        for shard, rows in enumerate(
            read_rows(input_path, column, id_column, start, shard_rows), len(done)
        ):
            record = _embed_shard(model, rows, parts, shard, job, width, batch_size)
            _count(report, record)
            report.new_shards += 1
            if bar is not None:
                bar.update(len(rows.texts))
    finally:
        if bar is not None:
            bar.close()
    shards = len(done) + report.new_shards
    _assemble(parts, shards, output, job, id_column, width, report)
    return report


def _bar(total: int, initial: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="text", desc="embedding", smoothing=0.1)


def _count(report: Report, record: dict[str, Any]) -> None:
    report.rows += record["rows"]
    report.embedded += record["embedded"]
    report.skipped += record["skipped"]


def _resume(parts: Path, job: Job, overwrite: bool) -> dict[int, dict[str, Any]]:
    """The records of the complete shards in ``parts`` (made and recorded when missing);
    leftovers of an interrupted shard are removed. A folder of another job is refused, or
    emptied with ``overwrite``."""
    job_file = parts / "job.json"
    if parts.exists() and overwrite:
        shutil.rmtree(parts)
    if not job_file.exists():
        parts.mkdir(parents=True, exist_ok=True)
        with replacing(job_file) as fh:
            fh.write(json.dumps(asdict(job), indent=1).encode())
        return {}
    recorded = json.loads(job_file.read_text())
    differ = [key for key, value in asdict(job).items() if recorded.get(key) != value]
    if differ:
        shown = ", ".join(
            f"{key}: {recorded.get(key)!r} then, {getattr(job, key)!r} now" for key in differ
        )
        raise CorpusError(
            f"{parts} holds an interrupted run of another job ({shown}): rerun it as it was, "
            "or pass --overwrite to start again"
        )
    for path in parts.iterdir():
        if path.name.startswith("."):  # a file a killed run was writing
            path.unlink()
    done: dict[int, dict[str, Any]] = {}
    covered = 0
    while (record_file := parts / f"{len(done):06d}.json").exists():
        record = json.loads(record_file.read_text())
        if record.get("first") != covered:
            raise CorpusError(f"{record_file} does not follow the shard before it: remove {parts}")
        done[len(done)] = record
        covered += record["rows"]
    # Data without its record is a shard that was killed between the two renames.
    for path in parts.glob(f"*{_shard_suffix(job)}"):
        if int(path.stem) not in done:
            path.unlink()
    return done


def _embed_shard(
    model: TextEmbedding,
    rows: Rows,
    parts: Path,
    shard: int,
    job: Job,
    width: int,
    batch_size: int,
) -> dict[str, Any]:
    """Embed one shard's rows and write its data, then its record."""
    keep, skipped = [], []
    for offset, text in enumerate(rows.texts):
        reason = bad_text(text)
        if reason is None:
            keep.append(offset)
            continue
        row, row_id = rows.first + offset, rows.ids[offset]
        if not job.skip_bad_rows:
            raise CorpusError(
                f"row {row} (id {row_id!r}): the text is {reason}; "
                "pass --skip-bad-rows to leave such rows out and list them"
            )
        skipped.append({"row": row, "id": row_id, "reason": f"text is {reason}"})
    texts = [rows.texts[i] for i in keep]
    vectors = model.encode(
        texts, batch_size, prompt=job.prompt, instruction=job.instruction, dim=job.dim
    )
    with replacing(parts / f"{shard:06d}{_shard_suffix(job)}") as fh:
        if job.output_format == ".npy":
            np.save(fh, vectors)
        else:
            import pyarrow as pa

            # A shard is read once, by the assembly: Arrow's IPC file, written and memory-mapped
            # back as it is in memory (a Parquet shard would be encoded and decoded once more).
            table = _table([rows.ids[i] for i in keep], vectors, job.id_column, width)
            with pa.ipc.new_file(fh, table.schema) as writer:
                writer.write_table(table)
    record: dict[str, Any] = {"first": rows.first, "rows": len(rows.texts)}
    record |= {"embedded": len(keep), "skipped": skipped}
    with replacing(parts / f"{shard:06d}.json") as fh:
        fh.write(json.dumps(record, default=str).encode())
    return record


def _shard_suffix(job: Job) -> str:
    """A shard's file: ``.npy`` vectors for ``.npy`` output, else an Arrow IPC file."""
    return ".npy" if job.output_format == ".npy" else ".arrow"


def _table(ids: list[Any], vectors: np.ndarray, id_column: str | None, width: int) -> Any:
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    embedding = pa.FixedSizeListArray.from_arrays(flat, width)
    id_values = pa.array(ids, type=pa.int64()) if id_column is None else pa.array(ids)
    return pa.table({id_column or "row": id_values, "embedding": embedding})


def _assemble(
    parts: Path,
    shards: int,
    output: Path,
    job: Job,
    id_column: str | None,
    width: int,
    report: Report,
) -> None:
    """Join the shards into ``output`` (complete or absent), then remove ``parts``."""
    files = [parts / f"{shard:06d}{_shard_suffix(job)}" for shard in range(shards)]
    with replacing(output) as fh:
        if job.output_format == ".npy":
            header = {"descr": "<f4", "fortran_order": False, "shape": (report.embedded, width)}
            np.lib.format.write_array_header_2_0(fh, header)
            for path in files:
                fh.write(np.ascontiguousarray(np.load(path), dtype="<f4").tobytes())
        else:
            import pyarrow as pa

            pq = _parquet()
            tables = (pa.ipc.open_file(pa.memory_map(str(path))).read_all() for path in files)
            first = next(tables, None)
            if first is None:  # an empty corpus
                first = _table([], np.zeros((0, width)), id_column, width)
            schema = first.schema
            # Float vectors do not compress and their statistics say nothing: the embedding is
            # stored plain (half the time of writing it with snappy), the ids as usual.
            ids = schema.names[0]
            plain: dict[str, Any] = {"compression": {ids: "snappy", "embedding": "none"}}
            plain |= {"use_dictionary": [ids], "write_statistics": [ids]}
            with pq.ParquetWriter(fh, schema, **plain) as writer:
                for table in itertools.chain([first], tables):
                    writer.write_table(table)
    listing = skipped_file(output)
    if report.skipped:
        with replacing(listing) as fh:
            for item in report.skipped:
                fh.write((json.dumps(item, default=str) + "\n").encode())
    else:
        listing.unlink(missing_ok=True)
    shutil.rmtree(parts)
