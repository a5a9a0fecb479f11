"""Hugging Face repositories without a slimembed manifest, loaded by their hub id from a local
hub cache with the hub offline, in a process that never imports torch.

The sentence-transformers repository is all-MiniLM-L6-v2 (real weights) with ``onnx/model.onnx``
exported as optimum exports it (``input_ids``, ``attention_mask``, ``token_type_ids`` ->
``last_hidden_state``, no fusion) and ONNX Runtime's dynamic INT8 quantization of it under the
name sentence-transformers gives that file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

from benchmarks.hub_load import QINT8, sentence_transformers_onnx_repo
from slimembed import ModelFileError, TextEmbedding
from slimembed.errors import ManifestError
from slimembed.text_embedding import DEFAULT_MODEL_DIR
from tests import tiny
from tests.hub_layout import embed_offline, hub_cache
from tests.reference import cosine

FP32_MIN = 0.99999


def _export_with_kv_cache(model_dir: Path, path: Path) -> None:
    """A causal LM's base model as onnx-community exports it for feature extraction:
    ``input_ids``, ``attention_mask``, ``position_ids`` and ``past_key_values.N.key/value``
    in; ``last_hidden_state`` and ``present.N.key/value`` out."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = model.config
    layers, heads, head_dim = (
        config.num_hidden_layers,
        config.num_key_value_heads,
        config.head_dim,
    )

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            position_ids: torch.Tensor,
            *past: torch.Tensor,
        ) -> tuple[torch.Tensor, ...]:
            cache = transformers.DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            layers_out = out.past_key_values.layers
            present = [t for layer in layers_out for t in (layer.keys, layer.values)]
            return (out.last_hidden_state, *present)

    batch, seq = 2, 5
    ids = torch.ones(batch, seq, dtype=torch.int64)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1, :2] = 0  # left padding in the traced batch, so the mask path is traced
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["last_hidden_state"]
    axes = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
    }
    past = []
    for i in range(layers):
        for kind in ("key", "value"):
            past.append(torch.zeros(batch, heads, 0, head_dim))
            inputs.append(f"past_key_values.{i}.{kind}")
            outputs.append(f"present.{i}.{kind}")
            axes[inputs[-1]] = {0: "batch_size", 2: "past_sequence_length"}
            axes[outputs[-1]] = {0: "batch_size", 2: "total_sequence_length"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithCache(),
            (ids, mask, positions, *past),
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


@pytest.fixture(scope="module")
def minilm_onnx_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 with its onnx/ folder, as the Hub
    repository has it (PyTorch weights included, which the runtime must not need)."""
    out = tmp_path_factory.mktemp("st-onnx") / "all-MiniLM-L6-v2"
    return sentence_transformers_onnx_repo(tiny.minilm_source(), out)


@pytest.mark.slow
def test_sentence_transformers_onnx_repo_matches_sentence_transformers(
    minilm_onnx_repo: Path, minilm_reference: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    texts, want = minilm_reference
    cache = tmp_path / "hub"
    snapshot = hub_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_onnx_repo)

    got, report = embed_offline(
        cache, "sentence-transformers/all-MiniLM-L6-v2", texts, tmp_path / "run"
    )

    assert report["torch"] == []
    # Fused at first load: the graph and its manifest are kept in a model directory under
    # the cache's adopted/, which the next load runs.
    fused = Path(report["model_dir"])
    # adopted/models--org--name/REVISION/<graph>.<key>: one directory per revision and graph
    assert fused.parent == cache / "adopted" / snapshot.parent.parent.name / snapshot.name
    assert report["graph_file"] == "model.onnx"
    assert report["precision"] == "fp32"
    cos = cosine(got, want)
    assert cos.min() >= FP32_MIN, (cos.min(), texts[int(cos.argmin())][:80])
    kept = list((cache / "adopted").rglob("slimembed.json"))
    assert kept == [fused / "slimembed.json"]
    ops = [n.op_type for n in onnx.load(str(fused / "model.onnx")).graph.node]
    assert (ops.count("MultiHeadAttention"), ops.count("Gelu"), ops.count("Softmax")) == (6, 6, 0)
    manifest = json.loads(kept[0].read_text())
    assert manifest["source"]["fusion"] == (
        "6 attention layers and 6 GELUs fused from onnx/model.onnx"
    )
    assert manifest["source"]["id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert manifest["source"]["revision"] == snapshot.name
    assert (manifest["pooling"], manifest["normalize"], manifest["max_length"]) == (
        "mean",
        True,
        256,
    )


def test_a_repository_graph_is_chosen_by_file_or_by_precision(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    snapshot = hub_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_onnx_repo)
    texts = ["a man is playing a guitar", "the cat sat on the mat", "Quantum chromodynamics"]
    fp32 = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache)
    by_file = TextEmbedding(
        "sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache, model_file=QINT8
    )
    by_precision = TextEmbedding(
        "sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache, precision="int8"
    )

    assert fp32.precision == "fp32"
    assert fp32.manifest.source["files"][0] == "onnx/model.onnx"
    assert by_file.precision == "int8"
    assert by_file.manifest.graph_file == QINT8
    assert by_precision.manifest.graph_file == QINT8
    np.testing.assert_array_equal(by_file.encode(texts), by_precision.encode(texts))
    assert cosine(by_file.encode(texts), fp32.encode(texts)).min() > 0.9

    shutil.copy(snapshot / QINT8, snapshot / "onnx" / "model_quint8_avx2.onnx")
    with pytest.raises(ValueError, match="several") as info:
        TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache, precision="int8")
    assert "model_file=" in str(info.value)
    assert "model_quint8_avx2.onnx" in str(info.value)
    with pytest.raises(ValueError, match="is not a graph of"):
        TextEmbedding(
            "sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache, model_file="onnx/x.onnx"
        )


def test_a_local_folder_of_a_repository_loads_as_its_hub_id_does(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    hub_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_onnx_repo)
    texts = ["hello world", "a second, longer text about embeddings"]
    local = TextEmbedding(minilm_onnx_repo, cache_dir=tmp_path / "other")
    by_id = TextEmbedding("sentence-transformers/all-MiniLM-L6-v2", cache_dir=cache)
    np.testing.assert_array_equal(local.encode(texts), by_id.encode(texts))


def test_pytorch_only_repository_names_the_export_command(
    tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    hub_cache(tmp_path, "acme/plain-bert", tiny_source("bert"))
    with pytest.raises(ModelFileError, match="PyTorch weights") as info:
        TextEmbedding("acme/plain-bert", cache_dir=tmp_path)
    assert "slimembed export acme/plain-bert" in str(info.value)
    assert not (tmp_path / "adopted").exists()


def test_graphs_the_runtime_cannot_run_are_refused_naming_the_file(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "repo"
    shutil.copytree(minilm_onnx_repo, folder, ignore=shutil.ignore_patterns("*.onnx"))
    (folder / "onnx").mkdir(exist_ok=True)
    # Inputs the runner has no way to feed: the error lists what the graph declares.
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["b", "s"])
        for n in ("input_ids", "attention_mask", "pixel_values")
    ]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", 4])
    node = helper.make_node("Cast", ["input_ids"], ["last_hidden_state"], to=TensorProto.FLOAT)
    graph = helper.make_graph([node], "g", inputs, [out])
    onnx.save(helper.make_model(graph), str(folder / "onnx" / "model.onnx"))
    with pytest.raises(ModelFileError, match="pixel_values") as info:
        TextEmbedding(folder, cache_dir=tmp_path / "cache")
    assert "model.onnx" in str(info.value)

    # A truncated graph: ModelFileError naming it, and nothing left in the cache.
    data = (minilm_onnx_repo / "onnx" / "model.onnx").read_bytes()
    (folder / "onnx" / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match=r"model\.onnx"):
        TextEmbedding(folder, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.json"))


def test_a_repository_without_pooling_information_says_what_to_do(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "repo"
    shutil.copytree(minilm_onnx_repo, folder, ignore=shutil.ignore_patterns(QINT8.split("/")[1]))
    (folder / "modules.json").unlink()
    with pytest.raises(ManifestError, match="pooling"):
        TextEmbedding(folder, cache_dir=tmp_path / "cache")


def test_a_root_graph_with_external_data_loads_from_the_hub_cache(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    """Qdrant's layout: model.onnx at the root with its weights in model.onnx_data, both
    symlinks into blobs/ under hash names as the hub cache stores them."""
    import onnx

    folder = tmp_path / "qdrant-style"
    shutil.copytree(minilm_onnx_repo, folder, ignore=shutil.ignore_patterns("onnx"))
    graph = onnx.load(str(minilm_onnx_repo / "onnx" / "model.onnx"))
    onnx.save_model(
        graph,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx_data",
        size_threshold=1024,
    )
    assert (folder / "model.onnx_data").stat().st_size > (folder / "model.onnx").stat().st_size
    cache = tmp_path / "hub"
    hub_cache(cache, "acme/minilm-onnx", folder)
    texts = ["hello world", "a second, longer text about embeddings"]

    model = TextEmbedding("acme/minilm-onnx", cache_dir=cache)

    assert model.manifest.graph_file == "model.onnx"
    assert model.manifest.source["fusion"].startswith("6 attention layers")
    # The fused graph refers to its weights by name: the data file is linked beside it, not
    # copied (the blob's own inode).
    blob = (cache / "models--acme--minilm-onnx" / "snapshots").glob("*/model.onnx_data")
    assert (model.model_dir / "model.onnx_data").stat().st_ino == next(blob).stat().st_ino
    want = TextEmbedding(minilm_onnx_repo, cache_dir=tmp_path / "other").encode(texts)
    np.testing.assert_allclose(model.encode(texts), want, atol=1e-6)


def test_info_says_which_graph_of_a_repository_runs_and_why(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from slimembed.cli import main

    env = {"SLIMEMBED_CACHE_DIR": str(tmp_path / "cache")}
    default = CliRunner(env=env).invoke(main, ["info", str(minilm_onnx_repo)])
    chosen = CliRunner(env=env).invoke(main, ["info", str(minilm_onnx_repo), "--model-file", QINT8])

    assert default.exit_code == 0, default.output
    assert '"pooling": "mean"' in default.output
    assert "/model.onnx (onnx/model.onnx: the float32 default" in default.output
    assert "fusion: 6 attention layers and 6 GELUs fused from onnx/model.onnx" in default.output
    assert f"also here: {QINT8} (int8" in default.output
    assert chosen.exit_code == 0, chosen.output
    assert f"{QINT8} ({QINT8}: model_file=" in chosen.output
    assert "also here: onnx/model.onnx (fp32" in chosen.output


def test_a_causal_lm_graph_with_a_kv_cache_embeds_as_its_family(
    tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    """onnx-community's layout of Qwen3-Embedding: a tiny random Qwen3 exported with KV-cache
    inputs and position ids, no sentence-transformers configuration. The registry entry of
    the repository (Qwen3-Embedding-0.6B's ONNX source) supplies the family's last-token
    pooling, normalization and query instruction; vectors match the family's original code
    for queries and documents, batched with left padding."""
    from tests import families, reference

    source = tiny_source("qwen3-embedding")
    folder = tmp_path / "repo"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "onnx").mkdir()
    _export_with_kv_cache(source, folder / "onnx" / "model.onnx")
    cache = tmp_path / "hub"
    hub_cache(cache, "onnx-community/Qwen3-Embedding-0.6B-ONNX", folder)
    texts = reference.mixed_texts()

    model = TextEmbedding("Qwen3-Embedding-0.6B", cache_dir=cache)

    assert model.manifest.source["id"] == "onnx-community/Qwen3-Embedding-0.6B-ONNX"
    assert "past_key_values" in model.manifest.graph_inputs
    assert (model.manifest.pooling, model.manifest.normalize) == ("last_token", True)
    for kind in ("query", "document"):
        want = families.embed("qwen3-embedding", source, texts, kind, 512, "left")
        assert reference.cosine(want[:-2], want[1:-1]).min() < 0.99, kind
        got = model.encode(texts, batch_size=len(texts), prompt=kind)
        assert cosine(got, want).min() >= FP32_MIN, kind


def test_a_cached_repository_loads_when_the_hub_cannot_be_reached(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    """Not in offline mode, but the Hub unreachable (a user whose network is down): the
    repository in the cache loads, as huggingface_hub's own snapshot_download falls back."""
    cache = tmp_path / "hub"
    hub_cache(cache, "sentence-transformers/all-MiniLM-L6-v2", minilm_onnx_repo)
    texts = ["hello world", "a second, longer text about embeddings"]

    got, report = embed_offline(
        cache, "sentence-transformers/all-MiniLM-L6-v2", texts, tmp_path / "run", unreachable=True
    )

    assert report["graph_file"] == "model.onnx"
    want = TextEmbedding(minilm_onnx_repo, cache_dir=tmp_path / "other").encode(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_slimembed_serve_serves_a_hub_repository_by_its_id(
    minilm_onnx_repo: Path, tmp_path: Path
) -> None:
    """``slimembed serve ORG/NAME`` on a cached repository: the server's loader adopts it,
    names it by its id, and /v1/embeddings and /info answer with its vectors and settings."""
    pytest.importorskip("starlette")
    from slimembed.serve import ServeSettings, create_app
    from slimembed.serve.cli import load_model, served_name
    from tests.test_serve import Running, call

    cache = tmp_path / "hub"
    hub_cache(cache, "acme/minilm-onnx", minilm_onnx_repo)
    texts = ["hello world", "a second, longer text about embeddings"]
    model = load_model("acme/minilm-onnx", cache_dir=cache, threads=1)
    name = served_name("acme/minilm-onnx")
    assert name == "acme/minilm-onnx"
    want = TextEmbedding("acme/minilm-onnx", cache_dir=cache, threads=1).encode(texts)
    with Running(create_app({name: model}, ServeSettings())) as running:
        body = {"model": name, "input": texts, "encoding_format": "float"}
        status, _, reply = call(f"{running.url}/v1/embeddings", body)
        assert status == 200, reply
        got = np.array([item["embedding"] for item in reply["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, want, atol=1e-6)
        status, _, info = call(f"{running.url}/info")
    assert status == 200
    served = info["models"][name]
    # The repository's own settings: its graph's width, 1_Pooling/config.json, the Normalize
    # module, sentence_bert_config.json's max_seq_length.
    assert served["model_id"] == "acme/minilm-onnx"
    assert (served["dim"], served["pooling"], served["normalize"]) == (384, "mean", True)
    assert served["max_input_length"] == 256


_QUANTIZE = """
import sys
# As where torch is not installed: any import of it fails.
for name in ("torch", "transformers", "sentence_transformers"):
    sys.modules[name] = None
from slimembed.cli import main
main(["quantize", sys.argv[1]])
"""


def test_slimembed_quantize_gives_a_hub_repository_our_int8_without_torch(
    minilm_onnx_repo: Path, minilm_reference: tuple[list[str], np.ndarray], tmp_path: Path
) -> None:
    repo = "sentence-transformers/all-MiniLM-L6-v2"
    cache = tmp_path / "hub"
    hub_cache(cache, repo, minilm_onnx_repo)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SLIMEMBED_CACHE_DIR": str(cache)}

    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, repo],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert "int8: " in done.stdout
    assert "alone vs batched min 1.0000000" in done.stdout
    texts = minilm_reference[0][::40]
    int8, report = embed_offline(cache, repo, texts, tmp_path / "int8")
    fp32, _ = embed_offline(cache, repo, texts, tmp_path / "fp32", precision="fp32")
    assert report["torch"] == []
    # The next load by the repository's id runs slimembed's INT8 (the default on CPU).
    assert report["precision"] == "int8"
    assert (Path(report["model_dir"]) / "model.int8.onnx").is_file()
    cos = cosine(int8, fp32)
    assert cos.mean() >= 0.999, cos.mean()
    assert cos.min() >= 0.995, cos.min()
    model = TextEmbedding(repo, cache_dir=cache, local_files_only=True)
    alone = model.encode(texts[:40], batch_size=1)
    np.testing.assert_array_equal(alone, int8[:40])
    figures = model.manifest.variants["int8"].fidelity
    assert figures["cosine_to_fp32_min"] >= 0.995
    assert figures["command"] == f"slimembed quantize {repo} --precision int8"


def test_slimembed_quantize_says_what_it_needs(
    minilm_onnx_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from slimembed import repos
    from slimembed.cli import main

    runner = CliRunner(env={"SLIMEMBED_CACHE_DIR": str(tmp_path / "cache")})
    static = runner.invoke(main, ["quantize", str(DEFAULT_MODEL_DIR)])
    int8_file = runner.invoke(main, ["quantize", str(minilm_onnx_repo), "--model-file", QINT8])
    monkeypatch.setattr(repos, "has_onnx", lambda: False)
    no_onnx = runner.invoke(main, ["quantize", str(minilm_onnx_repo)])

    assert static.exit_code != 0
    assert "static model: it has no graph" in static.output
    assert int8_file.exit_code != 0
    assert "model_file=" in int8_file.output
    assert no_onnx.exit_code != 0
    assert "pip install 'slimembed[quantize]'" in no_onnx.output


def test_without_onnx_a_repository_runs_unfused_and_is_fused_once_onnx_is_there(
    minilm_onnx_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimembed import repos

    repo = "sentence-transformers/all-MiniLM-L6-v2"
    cache = tmp_path / "hub"
    snapshot = hub_cache(cache, repo, minilm_onnx_repo)
    texts = ["hello world", "a second, longer text about embeddings"]
    monkeypatch.setattr(repos, "has_onnx", lambda: False)
    plain = TextEmbedding(repo, cache_dir=cache, local_files_only=True)
    monkeypatch.undo()
    fused = TextEmbedding(repo, cache_dir=cache, local_files_only=True)

    assert (plain.model_dir, plain.manifest.graph_file) == (snapshot, "onnx/model.onnx")
    assert plain.manifest.source["fusion"] == repos.FUSION_UNAVAILABLE
    assert fused.model_dir.parent == cache / "adopted" / snapshot.parent.parent.name / snapshot.name
    assert fused.manifest.source["fusion"].startswith("6 attention layers")
    assert cosine(fused.encode(texts), plain.encode(texts)).min() >= FP32_MIN
