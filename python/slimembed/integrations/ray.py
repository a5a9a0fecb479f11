"""Embedding corpora with Ray Data: a callable class for ``Dataset.map_batches``.

Ray Data schedules, streams and retries; slimembed only embeds. ``Embedder`` is the class
``map_batches`` instantiates once per actor (one model per actor, loaded in the actor), its
ONNX Runtime and Rust threads set to the CPUs Ray gave the actor; each call takes a pyarrow,
pandas or numpy batch and returns it with an embedding column added (a fixed-size list of
float32 in Arrow, a 2-D array in numpy, a column of arrays in pandas). ``embed_dataset``
wires it up the current way (``compute=ray.data.ActorPoolStrategy(size=N)``), and
``embed_file`` is ``slimembed embed --input ... --ray``: Parquet, JSON lines or text in,
Parquet out, through Ray Data's readers and an ordered Parquet sink (``OrderedParquetSink``:
Ray's own ``write_parquet`` writes through ``pyarrow.dataset.write_dataset`` with threads on
and may reorder rows inside a file; ours writes each task's rows with ``pyarrow.parquet`` in
the order they came, one file per write task, named so that they sort in input order).

A vector does not depend on the batch it was embedded in (bit-identical for static and INT8
models, within float rounding for FP32), so a Ray job's vectors equal a single process's.
A row whose text is null or not a string fails the batch with its id, as the file command
does; Ray then reports the failure.

Needs the ``ray`` extra (``pip install 'slimembed[ray]'``); ``import slimembed`` does not
import this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockAccessor
from ray.data.datasource import BlockBasedFileDatasink

from slimembed.corpus import INPUT_SUFFIXES, CorpusError, bad_text, check_output

#: What ``Embedder`` adds to each batch.
EMBEDDING_COLUMN = "embedding"


class Embedder:
    """Embeds ``column`` of each batch with one ``TextEmbedding`` per actor.

    ``model`` and ``model_kwargs`` are ``TextEmbedding``'s (the model must be reachable
    from every worker: a shared path, a pre-filled hub cache, or the Hub); ``threads``
    defaults to the CPUs Ray assigned to the actor (``num_cpus`` of ``map_batches``).
    ``prompt`` is ``"document"`` (as ``TextEmbedding.embed``), ``"query"`` or ``None``.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        column: str = "text",
        id_column: str | None = None,
        output_column: str = EMBEDDING_COLUMN,
        prompt: str | None = "document",
        instruction: str | None = None,
        dim: int | None = None,
        batch_size: int = 256,
        threads: int | None = None,
        **model_kwargs: Any,
    ) -> None:
        from slimembed.text_embedding import TextEmbedding

        self.model = TextEmbedding(model, threads=threads or _assigned_cpus(), **model_kwargs)
        self.width = self.model.check_dim(dim)
        self.model.plan(prompt, instruction)
        self.column, self.id_column, self.output_column = column, id_column, output_column
        self.prompt, self.instruction, self.dim = prompt, instruction, dim
        self.batch_size = batch_size

    def __call__(self, batch: Any) -> Any:
        """``batch`` (a ``pyarrow.Table``, ``pandas.DataFrame`` or ``dict`` of numpy
        arrays) with the embedding column added."""
        import pyarrow as pa

        if isinstance(batch, pa.Table):
            texts = batch.column(self.column).to_pylist()
            vectors = self._embed(texts, lambda: batch.column(self.id_column).to_pylist())
            flat = pa.array(vectors.reshape(-1))
            column = pa.FixedSizeListArray.from_arrays(flat, self.width)
            return batch.append_column(self.output_column, column)
        if isinstance(batch, dict):
            texts = list(batch[self.column])
            vectors = self._embed(texts, lambda: list(batch[self.id_column]))
            return {**batch, self.output_column: vectors}
        texts = batch[self.column].tolist()  # a pandas DataFrame
        vectors = self._embed(texts, lambda: batch[self.id_column].tolist())
        out = batch.copy()
        out[self.output_column] = list(vectors)
        return out

    def _embed(self, texts: list[Any], ids: Any) -> np.ndarray:
        for offset, text in enumerate(texts):
            kind = bad_text(text)
            if kind is not None:
                row_id = ids()[offset] if self.id_column is not None else None
                named = f"id {row_id!r}" if row_id is not None else f"row {offset} of the batch"
                raise CorpusError(f"{named}: the text in {self.column!r} is {kind}")
        return self.model.encode(
            texts,
            self.batch_size,
            prompt=self.prompt,
            instruction=self.instruction,
            dim=self.dim,
        )


def _assigned_cpus() -> int:
    """The CPUs Ray assigned to this actor or task (1 outside Ray or when none was)."""
    if not ray.is_initialized():
        return 1
    assigned: dict[str, float] = ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]
    return max(1, int(assigned.get("CPU", 1)))


def embed_dataset(
    ds: ray.data.Dataset,
    model: str | None = None,
    column: str = "text",
    *,
    actors: int | tuple[int, int] | None = None,
    num_cpus: float = 1,
    batch_size: int = 256,
    rows_per_call: int = 4096,
    batch_format: str = "pyarrow",
    **embedder_kwargs: Any,
) -> ray.data.Dataset:
    """``ds`` with an embedding column: ``map_batches(Embedder, compute=
    ActorPoolStrategy(...), num_cpus=num_cpus)``; each actor loads the model once and runs
    it on ``num_cpus`` threads.

    ``actors`` is the pool's size, or its ``(min_size, max_size)`` for Ray to scale within.
    By default it scales from 1 to the cluster's CPUs divided by ``num_cpus``: a fixed pool
    that takes every CPU leaves none to the tasks that read the input, and then waits for
    them forever. ``rows_per_call`` is Ray's batch (the rows each call gets), ``batch_size``
    the model's: a call sorts its rows by length before cutting them into model batches, as
    ``encode`` does, so larger calls pad less; the other keywords are ``Embedder``'s.
    """
    if actors is None:
        cpus: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        actors = (1, max(1, int(cpus.get("CPU", 1) // num_cpus)))
    if isinstance(actors, int):
        pool = ray.data.ActorPoolStrategy(size=actors)
    else:
        pool = ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    return ds.map_batches(
        Embedder,
        fn_constructor_kwargs={
            "model": model,
            "column": column,
            "batch_size": batch_size,
            **embedder_kwargs,
        },
        compute=pool,
        num_cpus=num_cpus,
        batch_size=rows_per_call,
        batch_format=batch_format,
    )


def read_corpus(path: Path, column: str = "text") -> ray.data.Dataset:
    """A corpus file (``.parquet``, ``.jsonl``, ``.txt``: a text per line, in ``column``)
    as a Ray dataset."""
    if path.suffix == ".parquet":
        return ray.data.read_parquet(str(path))
    if path.suffix == ".jsonl":
        return ray.data.read_json(str(path), lines=True)
    if path.suffix == ".txt":
        ds = ray.data.read_text(str(path))
        return ds if column == "text" else ds.rename_columns({"text": column})
    raise CorpusError(f"{path}: a corpus is one of {', '.join(INPUT_SUFFIXES)}")


def embed_file(
    input_path: Path,
    output: Path,
    *,
    model: str | None = None,
    address: str | None = None,
    column: str = "text",
    id_column: str | None = None,
    num_cpus: float = 1,
    actors: int | tuple[int, int] | None = None,
    overwrite: bool = False,
    prompt: str | None = None,
    **embedder_kwargs: Any,
) -> int:
    """``slimembed embed --input INPUT --output OUTPUT --ray [ADDRESS]``: embed a corpus
    file on a Ray cluster (``address``; a local one when ``None``) into ``output``, a folder
    of Parquet files holding the id column (when given) and the embedding, in input order.
    Returns the number of rows written."""
    check_output(output, overwrite)
    started = not ray.is_initialized()
    if started and address is None:  # a local cluster, reachable from this machine only
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    elif started:
        ray.init(address=address, log_to_driver=False)
    try:
        ds = read_corpus(input_path, column)
        # The dataset's own context: the one it runs with (a copy of the current one).
        ds.context.execution_options.preserve_order = True
        ds = embed_dataset(
            ds,
            model,
            column,
            actors=actors,
            num_cpus=num_cpus,
            id_column=id_column,
            prompt=prompt,
            **embedder_kwargs,
        )
        keep = ([id_column] if id_column is not None else []) + [EMBEDDING_COLUMN]
        ds = ds.select_columns(keep)
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        ds.write_datasink(OrderedParquetSink(str(output)))
        return sum(int(fragment.metadata.num_rows) for fragment in _parquet_fragments(output))
    finally:
        if started:
            ray.shutdown()


class OrderedParquetSink(BlockBasedFileDatasink):
    """Writes each write task's rows to one Parquet file, in the order the task got them.

    Files are named ``{write}_{task:06}.parquet`` by Ray's filename provider, so
    with ``preserve_order`` (tasks numbered in input order) the folder's files sorted by
    name hold the rows in input order, which is how pyarrow reads a folder back.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path, file_format="parquet")

    def write_block_to_file(self, block: BlockAccessor, file: Any) -> None:
        pq.write_table(block.to_arrow(), file)


def _parquet_fragments(folder: Path) -> Any:
    import pyarrow.dataset as pads

    return pads.dataset(str(folder), format="parquet").get_fragments()
