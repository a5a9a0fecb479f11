"""Hub repositories built from tiny hand-made graphs: which files a download fetches, graphs
whose output is already pooled, float16 graphs.

The graphs are an embedding lookup (``last_hidden_state`` is the table's row of each token
id), so the vectors a load must give are computed here with numpy. ``fake_hub`` serves
repositories from local folders through huggingface_hub's own entry points
(``snapshot_download``, ``list_repo_files``), copying into the cache only the files that
match what slimembed asks for, as the Hub would send them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slimembed import ModelFileError, TextEmbedding, tables
from slimembed.errors import ManifestError
from tests import tiny
from tests.hub_layout import REVISION, hub_cache

VOCAB, DIM = 51, 8
TEXTS = ["3 17 4", "9", "1 2 3 4 5 6", "42 42"]
ST_MEAN = {"pooling_mode_mean_tokens": True, "word_embedding_dimension": DIM}
ST_CLS = {"pooling_mode_cls_token": True, "word_embedding_dimension": DIM}


def _table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(VOCAB, DIM)).astype(np.float32)


def _ids(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def _mean(table: np.ndarray, normalize: bool = True) -> np.ndarray:
    out = np.stack([table[_ids(t)].mean(axis=0) for t in TEXTS])
    return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out


def lookup_graph(
    path: Path,
    table: np.ndarray,
    *,
    pooled: bool = False,
    fp16: bool = False,
    past_layers: int = 0,
) -> Path:
    """``last_hidden_state`` = ``table[input_ids]`` (float16 with ``fp16``); with ``pooled``
    the only output is ``sentence_embedding``, the first token's row; ``past_layers`` adds
    KV-cache inputs ``past_key_values.N.key/value`` of the graph's float type."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kind = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    weights = numpy_helper.from_array(table.astype(np.float16 if fp16 else np.float32), "table")
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    for layer in range(past_layers):
        for part in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(
                    f"past_key_values.{layer}.{part}", kind, ["batch", 2, "past", 4]
                )
            )
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["hidden"])]
    if pooled:
        first = numpy_helper.from_array(np.array(0, dtype=np.int64), "first")
        nodes.append(
            helper.make_node("Gather", ["hidden", "first"], ["sentence_embedding"], axis=1)
        )
        outputs = [helper.make_tensor_value_info("sentence_embedding", kind, ["batch", DIM])]
        initializers = [weights, first]
    else:
        nodes.append(helper.make_node("Identity", ["hidden"], ["last_hidden_state"]))
        outputs = [helper.make_tensor_value_info("last_hidden_state", kind, ["batch", "seq", DIM])]
        initializers = [weights]
    graph = helper.make_graph(nodes, "lookup", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def repo(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    pooling: dict[str, Any] | None = ST_MEAN,
    normalize: bool = True,
) -> Path:
    """A repository folder with the number tokenizer, config.json and (with ``pooling``) a
    sentence-transformers configuration; graphs and tables are added by the caller."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(tiny.number_tokenizer_json())
    (folder / "config.json").write_text(json.dumps(config if config is not None else {}))
    if pooling is not None:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
        ]
        if normalize:
            modules.append(
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                }
            )
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def fake_hub(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[str, Path], list[list[str]]]:
    """``serve(repo_id, folder)`` puts ``folder`` on a pretend Hub; the list it returns gets,
    for each download, the files sent."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    remote: dict[str, Path] = {}
    sent: list[list[str]] = []

    def snapshot_download(
        repo_id: str,
        *,
        revision: str | None = None,
        cache_dir: str,
        local_files_only: bool = False,
        allow_patterns: list[str] | None = None,
    ) -> str:
        chosen = list(filter_repo_objects(_files(remote[repo_id]), allow_patterns=allow_patterns))
        sent.append(chosen)
        base = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
        snapshot = base / "snapshots" / REVISION
        for name in chosen:
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(remote[repo_id] / name, snapshot / name)
        (base / "refs").mkdir(parents=True, exist_ok=True)
        (base / "refs" / "main").write_text(REVISION)
        return str(snapshot)

    def list_repo_files(repo_id: str, revision: str | None = None) -> list[str]:
        return _files(remote[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)

    def serve(repo_id: str, folder: Path) -> list[list[str]]:
        remote[repo_id] = folder
        return sent

    return serve


# ----------------------------------------------------------------------------- which files


@pytest.mark.parametrize(
    ("config", "weights_fetched"),
    [({"model_type": "bert", "hidden_size": DIM}, False), ({"hidden_size": DIM}, True)],
    ids=["model-type-only", "neither"],
)
def test_pytorch_weights_and_a_config_without_architectures_still_fetch_the_graph(
    fake_hub: Callable[[str, Path], list[list[str]]],
    tmp_path: Path,
    config: dict[str, Any],
    weights_fetched: bool,
) -> None:
    """config.json without ``architectures`` is also how older model2vec versions wrote it;
    beside PyTorch weights and an ONNX graph, the graph is what runs and must be downloaded
    (only what config.json says, or the table's tensors, tell a model2vec table)."""
    folder = repo(tmp_path / "remote", config=config)
    table = _table()
    tables.save({"embeddings.word_embeddings.weight": table}, folder / "model.safetensors")
    lookup_graph(folder / "onnx" / "model.onnx", table)
    sent = fake_hub("acme/old-export", folder)

    model = TextEmbedding("acme/old-export", cache_dir=tmp_path / "cache")

    assert model.manifest.graph_file == "onnx/model.onnx"
    np.testing.assert_allclose(model.encode(TEXTS), _mean(table), atol=1e-6)
    fetched = {name for download in sent for name in download}
    assert "onnx/model.onnx" in fetched
    assert ("model.safetensors" in fetched) == weights_fetched


@pytest.mark.parametrize(
    ("config", "graph_fetched"),
    [({"model_type": "model2vec", "normalize": True}, False), ({"normalize": True}, True)],
    ids=["says-model2vec", "older-model2vec"],
)
def test_a_model2vec_repository_beside_a_graph_still_loads_its_table(
    fake_hub: Callable[[str, Path], list[list[str]]],
    tmp_path: Path,
    config: dict[str, Any],
    graph_fetched: bool,
) -> None:
    folder = repo(tmp_path / "remote", config=config, pooling=None)
    table = _table(1)
    tables.save({"embeddings": table}, folder / "model.safetensors")
    lookup_graph(folder / "onnx" / "model.onnx", table)
    sent = fake_hub("acme/potion-like", folder)

    model = TextEmbedding("acme/potion-like", cache_dir=tmp_path / "cache")

    assert model.manifest.kind == "static"
    fetched = {name for download in sent for name in download}
    assert "model.safetensors" in fetched
    assert ("onnx/model.onnx" in fetched) == graph_fetched
    np.testing.assert_allclose(model.encode(TEXTS), _mean(table), atol=1e-6)


# ----------------------------------------------------------------------------- pooled graphs


@pytest.mark.parametrize("normalize", [True, False])
def test_a_graph_that_pools_runs_as_it_is_normalized_as_modules_json_says(
    tmp_path: Path, normalize: bool
) -> None:
    """A sentence-transformers export whose only output is ``sentence_embedding``: no pooling
    on top (the graph's first-token rows come out as they are), normalization only where
    modules.json has a Normalize module."""
    folder = repo(tmp_path / "repo", pooling=ST_CLS, normalize=normalize)
    table = _table(2)
    lookup_graph(folder / "onnx" / "model.onnx", table, pooled=True)
    want = table[[_ids(t)[0] for t in TEXTS]]
    if normalize:
        want = want / np.linalg.norm(want, axis=1, keepdims=True)

    model = TextEmbedding(folder, cache_dir=tmp_path / "cache")

    assert (model.manifest.pooling, model.manifest.graph_output) == ("none", "sentence_embedding")
    assert model.manifest.normalize is normalize
    assert model.embedding_size == DIM
    np.testing.assert_allclose(model.encode(TEXTS), want, atol=1e-6)
    np.testing.assert_allclose(model.encode(TEXTS, batch_size=1), want, atol=1e-6)
    cut = want[:, :4] / np.linalg.norm(want[:, :4], axis=1, keepdims=True) if normalize else None
    if cut is not None:
        np.testing.assert_allclose(np.stack(list(model.embed(TEXTS, dim=4))), cut, atol=1e-6)


def test_a_pooled_graph_needs_no_pooling_configuration(tmp_path: Path) -> None:
    folder = repo(tmp_path / "repo", pooling=None)
    table = _table(3)
    lookup_graph(folder / "model.onnx", table, pooled=True)

    model = TextEmbedding(folder, cache_dir=tmp_path / "cache")

    assert model.manifest.normalize is False
    np.testing.assert_allclose(model.encode(TEXTS), table[[_ids(t)[0] for t in TEXTS]], atol=1e-6)


# ----------------------------------------------------------------------------- float16 graphs


def test_a_float16_graph_is_chosen_by_precision_and_gives_float32_vectors(
    fake_hub: Callable[[str, Path], list[list[str]]], tmp_path: Path
) -> None:
    """Transformers.js' layout: onnx/model.onnx beside onnx/model_fp16.onnx, whose output is
    float16; ``precision="fp16"`` picks it (and downloads only it), the default stays the
    float32 graph."""
    folder = repo(tmp_path / "remote")
    table = _table(4)
    lookup_graph(folder / "onnx" / "model.onnx", table)
    lookup_graph(folder / "onnx" / "model_fp16.onnx", table, fp16=True)
    lookup_graph(folder / "onnx" / "model_quantized.onnx", table)
    sent = fake_hub("acme/tjs", folder)

    half = TextEmbedding("acme/tjs", cache_dir=tmp_path / "cache", precision="fp16")

    assert half.precision == "fp16"
    assert half.manifest.graph_file == "onnx/model_fp16.onnx"
    assert not any("onnx/model.onnx" in download for download in sent)
    vectors = half.encode(TEXTS)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(
        vectors, _mean(table.astype(np.float16).astype(np.float32)), atol=1e-3
    )
    full = TextEmbedding("acme/tjs", cache_dir=tmp_path / "cache")
    assert (full.precision, full.manifest.graph_file) == ("fp32", "onnx/model.onnx")
    np.testing.assert_allclose(full.encode(TEXTS), _mean(table), atol=1e-6)


def test_a_float16_graph_with_a_kv_cache_gets_float16_past_tensors(tmp_path: Path) -> None:
    folder = repo(tmp_path / "repo")
    table = _table(5)
    lookup_graph(folder / "onnx" / "model_fp16.onnx", table, fp16=True, past_layers=2)

    model = TextEmbedding(folder, cache_dir=tmp_path / "cache", precision="fp16")

    assert "past_key_values" in model.manifest.graph_inputs
    feeds = model.backend.runner.feeds(  # type: ignore[union-attr]
        model.backend.runner.pad(  # type: ignore[union-attr]
            model.backend.encode(TEXTS, model.manifest.document.plan()), np.arange(2)
        )
    )
    assert feeds["past_key_values.1.value"].dtype == np.float16
    assert feeds["past_key_values.1.value"].shape == (2, 2, 0, 4)
    np.testing.assert_allclose(
        model.encode(TEXTS), _mean(table.astype(np.float16).astype(np.float32)), atol=1e-3
    )


def test_a_graph_of_another_output_type_is_refused_naming_it(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    folder = repo(tmp_path / "repo", config={"hidden_size": DIM})
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
        for n in ("input_ids", "attention_mask")
    ]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.DOUBLE, ["b", "s", DIM])
    node = helper.make_node("Cast", ["input_ids"], ["last_hidden_state"], to=TensorProto.DOUBLE)
    model = helper.make_model(
        helper.make_graph([node], "g", inputs, [out]), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    (folder / "onnx").mkdir()
    onnx.save(model, str(folder / "onnx" / "model.onnx"))
    with pytest.raises(ModelFileError, match="float32 or float16"):
        TextEmbedding(folder, cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- cache layout


def test_a_snapshot_of_the_hub_cache_names_its_repository_and_commit(tmp_path: Path) -> None:
    from slimembed import hub

    folder = repo(tmp_path / "files")
    snapshot = hub_cache(tmp_path / "hub", "acme/some--model", folder)

    assert hub.snapshot_repo(snapshot) == "acme/some--model"
    assert hub.snapshot_revision(snapshot) == REVISION
    assert hub.adopted_dir(snapshot, tmp_path) == (
        tmp_path / "adopted" / "models--acme--some--model" / REVISION
    )
    # Folders that only look like it: no models-- repository above snapshots/, or no snapshots/.
    lookalike = tmp_path / "plain" / "snapshots" / REVISION
    lookalike.mkdir(parents=True)
    for other in (lookalike, folder, snapshot.parent):
        assert (hub.snapshot_repo(other), hub.snapshot_revision(other)) == (None, None)
    assert hub.adopted_dir(lookalike, tmp_path).parent == tmp_path / "adopted" / "local"


# ----------------------------------------------------------------------------- fastembed's registry


FASTEMBED_FIELDS = {
    "model",
    "sources",
    "model_file",
    "description",
    "license",
    "size_in_GB",
    "additional_files",
    "dim",
    "tasks",
}


class PoolingType(str, Enum):
    """fastembed.common.model_description.PoolingType, as a fastembed user passes it."""

    CLS = "CLS"
    MEAN = "MEAN"
    LAST_TOKEN = "LAST_TOKEN"
    DISABLED = "DISABLED"


def test_list_supported_models_has_fastembeds_fields() -> None:
    listed = TextEmbedding.list_supported_models()

    assert all(set(m) >= FASTEMBED_FIELDS for m in listed)
    minilm = next(m for m in listed if m["name"] == "all-MiniLM-L6-v2")
    assert minilm["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm["sources"] == {"hf": "sentence-transformers/all-MiniLM-L6-v2", "url": None}
    assert (minilm["model_file"], minilm["dim"], minilm["tasks"]) == ("onnx/model.onnx", 384, {})
    qwen = next(m for m in listed if m["name"] == "Qwen3-Embedding-0.6B")
    assert qwen["model"] == "Qwen/Qwen3-Embedding-0.6B"
    assert qwen["sources"]["hf"] == "onnx-community/Qwen3-Embedding-0.6B-ONNX"
    # Built-in entries (listed by hub id, custom ones by their name) give their size.
    assert all(m["size_in_GB"] > 0 for m in listed if m["model"] != m["name"])


def test_add_custom_model_then_load_it_by_name(
    fake_hub: Callable[[str, Path], list[list[str]]], tmp_path: Path
) -> None:
    folder = repo(tmp_path / "remote")  # sentence-transformers: mean, normalized
    table = _table(6)
    lookup_graph(folder / "onnx" / "model.onnx", table)
    (folder / "NOTICE.txt").write_text("fetched because the entry names it")
    sent = fake_hub("acme/lookup", folder)
    cache = tmp_path / "cache"

    # slimembed's short form: a folder (or hub id) and the dim; the folder's configuration rules.
    TextEmbedding.add_custom_model("fe-local", folder, DIM)
    local = TextEmbedding("fe-local", cache_dir=cache)
    np.testing.assert_allclose(local.encode(TEXTS), _mean(table), atol=1e-6)
    plain = TextEmbedding("acme/lookup", cache_dir=cache)
    np.testing.assert_allclose(plain.encode(TEXTS), _mean(table), atol=1e-6)

    # fastembed's form, by keyword: its pooling and normalization replace the repository's.
    TextEmbedding.add_custom_model(
        model="fe-cls",
        pooling=PoolingType.CLS,
        normalization=False,
        sources={"hf": "acme/lookup"},
        dim=DIM,
        model_file="onnx/model.onnx",
        description="a lookup table",
        license="mit",
        size_in_gb=0.001,
        additional_files=["NOTICE.txt"],
    )
    model = TextEmbedding("fe-cls", cache_dir=cache)

    np.testing.assert_allclose(model.encode(TEXTS), table[[_ids(t)[0] for t in TEXTS]], atol=1e-6)
    assert "NOTICE.txt" in {name for download in sent for name in download}
    # The manifest kept from the plain load above was not reused for the entry's rules; the
    # entry's source id now finds the entry too, as the registry's names and sources do.
    cls = TextEmbedding("acme/lookup", cache_dir=cache).encode(TEXTS)
    np.testing.assert_allclose(cls, table[[_ids(t)[0] for t in TEXTS]], atol=1e-6)
    listed = {m["model"]: m for m in TextEmbedding.list_supported_models()}
    entry = listed["fe-cls"]
    assert entry["sources"] == {"hf": "acme/lookup", "url": None}
    assert (entry["model_file"], entry["additional_files"]) == ("onnx/model.onnx", ["NOTICE.txt"])
    assert (entry["size_in_GB"], entry["license"], entry["dim"]) == (0.001, "mit", DIM)
    assert (entry["pooling"], entry["normalize"]) == ("cls", False)
    assert listed["fe-local"]["sources"]["hf"] == str(folder)


def test_add_custom_model_refuses_what_fastembed_refuses_or_cannot_be_run(
    tmp_path: Path,
) -> None:
    folder = repo(tmp_path / "repo")
    lookup_graph(folder / "onnx" / "model.onnx", _table(7))
    TextEmbedding.add_custom_model("fe-taken", folder, DIM)

    with pytest.raises(ValueError, match="already registered"):
        TextEmbedding.add_custom_model("FE-TAKEN", folder, DIM)
    with pytest.raises(TypeError, match="by keyword"):
        # fastembed's positional order (model, pooling, normalization, sources, dim)
        TextEmbedding.add_custom_model("fe-positional", PoolingType.MEAN, True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hf="):
        TextEmbedding.add_custom_model("fe-url", sources={"url": "https://x/y.tgz"}, dim=DIM)
    with pytest.raises(TypeError, match="source"):
        TextEmbedding.add_custom_model("fe-nothing", dim=DIM)
    TextEmbedding.add_custom_model("fe-wrong-dim", folder, DIM * 2)
    with pytest.raises(ManifestError, match="dim 16"):
        TextEmbedding("fe-wrong-dim", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- declared I/O


def test_declared_io_reads_what_onnx_runtime_lists(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from slimembed.graph_io import declared_io

    table = _table(8)
    paths = [
        lookup_graph(tmp_path / "a.onnx", table),
        lookup_graph(tmp_path / "b.onnx", table, pooled=True),
        lookup_graph(tmp_path / "c.onnx", table, fp16=True, past_layers=2),
    ]
    # An initializer listed among the inputs too (as IR 3 graphs list them): not an input.
    model = onnx.load(str(paths[0]))
    model.graph.input.append(onnx.helper.make_tensor_value_info("table", 1, [VOCAB, DIM]))
    onnx.save(model, str(tmp_path / "d.onnx"))
    paths.append(tmp_path / "d.onnx")
    for path in paths:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inputs, outputs = declared_io(path)
        for got, want in ((inputs, session.get_inputs()), (outputs, session.get_outputs())):
            assert [(d.name, d.type, d.shape) for d in got] == [
                (w.name, w.type, tuple(w.shape)) for w in want
            ], path.name

    data = paths[0].read_bytes()
    for broken in (data[: len(data) - 5], b"", b"\xff" * 40):
        (tmp_path / "broken.onnx").write_bytes(broken)
        with pytest.raises(ModelFileError, match=r"broken\.onnx"):
            declared_io(tmp_path / "broken.onnx")
