"""Ray Data: ``map_batches`` with slimembed's ``Embedder`` on a local two-CPU cluster (started
and shut down here, on 127.0.0.1) gives the vectors of a single-process ``encode``, matched by
id — bit-identical for the static default and an INT8 model, within 1e-6 for FP32 — for
pyarrow, pandas and numpy batches, and ``slimembed embed --input ... --ray`` writes them as
Parquet."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks.datasets import all_texts
from slimembed import Manifest, TextEmbedding, cli

ray = pytest.importorskip("ray", reason="needs slimembed[ray]")
pytest.importorskip("ray.data")
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from slimembed.integrations.ray import embed_dataset  # noqa: E402

N = 5000


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus() -> tuple[list[str], list[str]]:
    pool = all_texts()
    texts = [pool[i % len(pool)] for i in range(N)]
    return [f"doc{i}" for i in range(N)], texts


@pytest.fixture(scope="module")
def int8_bert(exported: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT with its INT8 graph (the one ``precision="int8"`` runs)."""
    from slimembed.optimize.quantize import add_variants

    out = tmp_path_factory.mktemp("int8") / "bert"
    shutil.copytree(exported("bert"), out)
    add_variants(out, Manifest.load(out), ("int8",), "test").save(out)
    return out


def by_id(table: pa.Table, id_column: str = "id") -> dict[str, np.ndarray]:
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten())
    vectors = vectors.reshape(table.num_rows, -1)
    return dict(zip(table.column(id_column).to_pylist(), vectors, strict=True))


@pytest.mark.parametrize(("which", "exact"), [("static", True), ("fp32", False), ("int8", True)])
def test_map_batches_equals_a_single_process(
    which: str,
    exact: bool,
    cluster: None,
    corpus: tuple[list[str], list[str]],
    exported: Callable[[str], Path],
    int8_bert: Path,
) -> None:
    ids, texts = corpus
    model, kwargs = {
        "static": (None, {}),
        "fp32": (str(exported("bert")), {}),
        "int8": (str(int8_bert), {"precision": "int8"}),
    }[which]
    want = TextEmbedding(model, **kwargs).encode(texts, prompt="document")
    table = pa.table({"id": ids, "text": texts})
    # Eight blocks (of uneven sizes), so both actors get work and batches straddle blocks.
    cuts = [0, 100, 900, 1700, 2000, 3100, 3900, 4700, N]
    ds = ray.data.from_arrow([table.slice(a, b - a) for a, b in itertools.pairwise(cuts)])
    out = embed_dataset(ds, model, actors=2, batch_size=128, **kwargs)
    got = by_id(pa.concat_tables(ray.get(list(out.to_arrow_refs()))))
    assert sorted(got) == sorted(ids)  # every row once, none added
    stacked = np.stack([got[i] for i in ids])
    if exact:
        np.testing.assert_array_equal(stacked, want)
    else:
        np.testing.assert_allclose(stacked, want, atol=1e-6)


@pytest.mark.parametrize("batch_format", ["pandas", "numpy"])
def test_pandas_and_numpy_batches(
    batch_format: str, cluster: None, corpus: tuple[list[str], list[str]]
) -> None:
    ids, texts = corpus[0][:600], corpus[1][:600]
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in zip(ids, texts, strict=True)])
    out = embed_dataset(ds, actors=1, batch_size=100, batch_format=batch_format, prompt="query")
    rows = {row["id"]: np.asarray(row["embedding"]) for row in out.take_all()}
    want = TextEmbedding().encode(texts, prompt="query")
    np.testing.assert_array_equal(np.stack([rows[i] for i in ids]), want)


def test_a_null_text_fails_naming_its_id(cluster: None) -> None:
    ds = ray.data.from_arrow(pa.table({"id": ["a", "b", "c"], "text": ["x", None, "z"]}))
    out = embed_dataset(ds, actors=1, id_column="id")
    with pytest.raises(Exception, match=r"id 'b'.*null"):
        out.materialize()


def test_the_file_command_on_ray(
    cluster: None, corpus: tuple[list[str], list[str]], tmp_path: Path
) -> None:
    ids, texts = corpus
    source = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), source, row_group_size=500)
    output = tmp_path / "vectors.parquet"
    args = ["embed", "--input", str(source), "--output", str(output), "--ray"]
    result = CliRunner().invoke(cli.main, [*args, "--id-column", "id"])
    assert result.exit_code == 0, result.output
    assert f"wrote {N} vectors" in result.output
    table = pq.read_table(output)
    assert table.column_names == ["id", "embedding"]
    assert table.column("id").to_pylist() == ids  # in input order
    want = TextEmbedding().encode(texts)
    got = by_id(table)
    np.testing.assert_array_equal(np.stack([got[i] for i in ids]), want)
    again = CliRunner().invoke(cli.main, [*args, "--id-column", "id"])
    assert again.exit_code != 0
    assert "--overwrite" in again.output
