"""The registry as data, `slimembed export NAME` from a hub-cache layout, loading by name,
custom models and the refusal to run a source's own code."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from slimembed import Manifest, TextEmbedding, hub, registry
from slimembed.cli import main
from slimembed.errors import ModelFileError, UnknownModelError
from slimembed_export import ExportError, ExportOptions, export_model
from tests import reference

REVISION = "89abcdef0123456789abcdef0123456789abcdef"


def _hub_cache(cache: Path, repo_id: str, files: Path) -> Path:
    """Lay ``files`` out as huggingface_hub's cache does for ``repo_id`` at REVISION."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(files, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return repo / "snapshots" / REVISION


def test_every_entry_is_complete_and_consistent() -> None:
    specs = registry.all_specs()
    assert {s.family for s in specs} >= {"sgpt", "gritlm", "qwen3-embedding", "gte-qwen2"}
    for spec in specs:
        recipe = spec.recipe
        assert spec.source.count("/") == 1, spec.name
        assert spec.license, spec.name
        assert min(spec.dim, spec.max_length) > 0, spec.name
        assert all(d <= spec.dim for d in spec.matryoshka_dims), spec.name
        for prompt in (recipe.query, recipe.document):
            assert "{text}" in prompt.template, spec.name
            if "{instruction}" in prompt.template:
                assert prompt.instruction, f"{spec.name}: no default task"
        # Documents never get a query instruction.
        assert "{instruction}" not in recipe.document.template, spec.name
        assert registry.find(spec.source) is spec
    assert registry.get("Qwen3-Embedding-0.6B").matryoshka_dims[0] == 32
    with pytest.raises(UnknownModelError, match="known models"):
        registry.get("no-such-model")


def test_export_by_name_from_the_hub_cache_and_load_by_name(
    tiny_source: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`slimembed export Qwen3-Embedding-0.6B` with the source in the cache (offline), then
    TextEmbedding("Qwen3-Embedding-0.6B") loads the export from the slimembed cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLIMEMBED_CACHE_DIR", str(cache))
    _hub_cache(cache, "Qwen/Qwen3-Embedding-0.6B", tiny_source("qwen3-embedding"))
    name = "Qwen3-Embedding-0.6B"
    with pytest.raises(UnknownModelError, match=f"slimembed export {name}"):
        TextEmbedding(name)
    result = CliRunner().invoke(main, ["export", name, "--max-length", "128"])
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(hub.export_dir(name))
    assert manifest.source["revision"] == REVISION
    assert manifest.source["family"] == "qwen3-embedding"
    assert manifest.query.template == "Instruct: {instruction}\nQuery:{text}"
    assert manifest.matryoshka_dims == (32, 64)  # the registry's sizes that fit the tiny model
    model = TextEmbedding(name)
    assert model.model_dir == hub.export_dir(name)
    assert "exported" in CliRunner().invoke(main, ["models"]).output

    # A pinned revision the cache lacks fails offline with the cache named.
    with pytest.raises(ModelFileError, match="not in the cache"):
        export_model(name, tmp_path / "other", ExportOptions(revision="0" * 40))


def test_add_custom_model_exports_with_its_rules(
    tiny_source: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SLIMEMBED_CACHE_DIR", str(cache))
    _hub_cache(cache, "acme/tiny-llama-embedder", tiny_source("llama"))
    spec = TextEmbedding.add_custom_model(
        "tiny-llama-embedder",
        "acme/tiny-llama-embedder",
        64,
        family="e5-mistral",
        pooling="mean",
        query_template="query: {text}",
        license="apache-2.0",
    )
    assert registry.get("tiny-llama-embedder") == spec
    listed = {m["model"]: m for m in TextEmbedding.list_supported_models()}
    assert listed["tiny-llama-embedder"]["pooling"] == "mean"
    manifest = export_model("tiny-llama-embedder", hub.export_dir("tiny-llama-embedder"))
    assert manifest.pooling == "mean"
    assert manifest.query.template == "query: {text}"
    assert manifest.document.suffix_ids  # e5-mistral's EOS kept from the family
    model = TextEmbedding("tiny-llama-embedder")
    vectors = model.encode(["hello there", "general kenobi"], prompt="document")
    assert reference.cosine(vectors[:1], vectors[1:])[0] < 0.99
    with pytest.raises(ValueError, match="already registered"):
        TextEmbedding.add_custom_model("tiny-llama-embedder", "acme/other", 64)
    with pytest.raises(UnknownModelError, match="unknown family"):
        TextEmbedding.add_custom_model("x", "acme/x", 8, family="nope")
    with pytest.raises(ValueError, match="pooling"):
        TextEmbedding.add_custom_model("y", "acme/y", 8, pooling="max")


def test_family_flag_for_unlisted_models_and_explicit_flags_win(
    tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "export",
            str(tiny_source("qwen2")),
            str(out),
            "--family",
            "gte-qwen2",
            "--padding-side",
            "right",
            "--max-length",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = Manifest.load(out)
    assert (manifest.pooling, manifest.padding_side) == ("last_token", "right")
    # The tiny Qwen2's config has no is_causal: the family's bidirectional attention applies.
    assert manifest.source["attention"] == "bidirectional"
    result = CliRunner().invoke(main, ["export", str(tiny_source("qwen2"))])
    assert result.exit_code != 0
    assert "OUT_DIR is needed" in result.output


def test_remote_code_is_refused_unless_asked(
    tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    source = tmp_path / "remote"
    shutil.copytree(tiny_source("qwen2"), source)
    config = json.loads((source / "config.json").read_text())
    config.update(model_type="acme_qwen", auto_map={"AutoModel": "modeling_acme.AcmeModel"})
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="trust-remote-code"):
        export_model(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_is_causal_decides_attention(
    tiny_source: Callable[[str], Path], exported: Callable[[str], Path], tmp_path: Path
) -> None:
    """gte-Qwen2's config says is_causal=false; an older revision saying true is followed too."""
    assert Manifest.load(exported("gte-qwen2")).source["attention"] == "bidirectional"
    source = tmp_path / "causal-gte"
    shutil.copytree(tiny_source("gte-qwen2"), source)
    config = json.loads((source / "config.json").read_text())
    config["is_causal"] = True
    (source / "config.json").write_text(json.dumps(config))
    manifest = export_model(
        str(source), tmp_path / "out", ExportOptions(family="gte-qwen2", max_length=64)
    )
    assert manifest.source["attention"] == "causal"
    texts = reference.mixed_texts()[:6]
    causal = TextEmbedding(tmp_path / "out").encode(texts)
    bidirectional = TextEmbedding(exported("gte-qwen2")).encode(texts)
    assert reference.cosine(causal, bidirectional).max() < 0.999
    np.testing.assert_array_equal(causal.shape, bidirectional.shape)
