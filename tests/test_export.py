"""Export parity: exported graphs run by slimembed against the PyTorch source models."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from slimembed import Manifest, TextEmbedding
from slimembed.errors import ManifestError
from slimembed_export import ExportError, ExportOptions, export_model
from tests import reference, tiny
from tests.hub_layout import hub_cache

Exported = Callable[[str], Path]
MIN_COSINE = 0.99999


def _torch_reference(source: Path, texts: list[str], manifest: Manifest) -> np.ndarray:
    """Each text alone, unpadded, through the transformers model; pooled by the reference."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    model = transformers.AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    rows = []
    for text in texts:
        ids = tokenizer(text, truncation=True, max_length=manifest.max_length)["input_ids"]
        if not ids:
            rows.append(np.zeros(manifest.dim, np.float32))
            continue
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state.numpy()
        mask = np.ones(hidden.shape[:2], dtype=np.int64)
        rows.append(reference.pool(hidden, mask, manifest.pooling, normalize=manifest.normalize)[0])
    return np.stack(rows)


@pytest.mark.parametrize("family", tiny.DECODERS)
def test_decoder_pooling_and_padding_match_pytorch(
    family: str, exported: Exported, tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    source, model_dir = tiny_source(family), exported(family)
    manifest = Manifest.load(model_dir)
    assert manifest.pooling == "last_token"
    assert manifest.padding_side == "left"
    assert manifest.parity["batch_min_cosine"] >= MIN_COSINE
    assert manifest.parity["tokenizer_ids_equal"] is True
    texts = reference.mixed_texts()
    for pooling in ("last_token", "mean", "weighted_mean"):
        want = _torch_reference(source, texts, manifest.with_changes(pooling=pooling))
        # Distinct texts must give distinct vectors, or cosine parity would prove nothing.
        assert reference.cosine(want[:-2], want[1:-1]).min() < 0.99
        for side in ("left", "right"):
            variant = tmp_path / f"{pooling}-{side}"
            shutil.copytree(model_dir, variant)
            manifest.with_changes(pooling=pooling, padding_side=side).save(variant)
            model = TextEmbedding(variant)
            batched = model.encode(texts, batch_size=len(texts))
            single = model.encode(texts, batch_size=1)
            assert reference.cosine(batched, want).min() >= MIN_COSINE, (pooling, side)
            assert reference.cosine(single, want).min() >= MIN_COSINE, (pooling, side)
            np.testing.assert_allclose(batched, want, atol=2e-5)


def test_bert_cls_pooling_and_token_type_free_graph(
    exported: Exported, tiny_source, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    model_dir = exported("bert")
    manifest = Manifest.load(model_dir)
    assert manifest.graph_inputs == ("input_ids", "attention_mask")
    texts = reference.mixed_texts()
    cls = manifest.with_changes(pooling="cls")
    shutil.copytree(model_dir, tmp_path / "cls")
    cls.save(tmp_path / "cls")
    want = _torch_reference(tiny_source("bert"), texts, cls)
    got = TextEmbedding(tmp_path / "cls").encode(texts, batch_size=8)
    assert reference.cosine(got, want).min() >= MIN_COSINE


def test_sentence_transformers_config_is_read(tiny_source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "st-model"
    shutil.copytree(tiny_source("bert"), source)
    (source / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (source / "1_Pooling").mkdir()
    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (source / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    (source / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "document": "passage: "}})
    )
    manifest = export_model(str(source), tmp_path / "out")
    assert (manifest.pooling, manifest.normalize, manifest.max_length) == ("cls", False, 64)
    assert manifest.query.template == "query: {text}"
    assert manifest.document.template == "passage: {text}"
    assert Manifest.load(tmp_path / "out") == manifest

    (source / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ExportError, match="pooling_mode_max_tokens"):
        export_model(str(source), tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_export_refuses_bad_targets_and_sources(tiny_source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_model(str(tiny_source("bert")), occupied)
    with pytest.raises(ExportError, match=r"config\.json"):
        export_model(str(tmp_path), tmp_path / "out")
    with pytest.raises(ExportError, match="exceeds the model's 512 positions"):
        export_model(str(tiny_source("bert")), tmp_path / "out", ExportOptions(max_length=4096))


def test_failed_parity_check_fails_the_export(tiny_source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ExportError, match="does not match the PyTorch model") as info:
        # No float32 graph reaches cosine 1.5: the check must report figures and write nothing.
        export_model(str(tiny_source("gpt2")), tmp_path / "out", ExportOptions(min_cosine=1.5))
    assert "batch_min_cosine" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_on_all_shared_data(
    minilm_dir: Path, minilm_reference: tuple[list[str], np.ndarray]
) -> None:
    """Real weights: every text in shared/data, slimembed against sentence-transformers."""
    texts, theirs = minilm_reference
    ours = TextEmbedding(minilm_dir).encode(texts, batch_size=64)
    cos = reference.cosine(ours, theirs)
    assert cos.min() >= MIN_COSINE, (cos.min(), texts[int(cos.argmin())][:80])
    assert Manifest.load(minilm_dir).parity["batch_min_cosine"] >= MIN_COSINE


def test_external_data_graph_exports_loads_and_matches(
    tiny_source: Callable[[str], Path], exported: Exported, tmp_path: Path
) -> None:
    """The layout used past 2 GB (weights beside the graph) works end to end."""
    out = tmp_path / "external"
    manifest = export_model(
        str(tiny_source("qwen3")), out, ExportOptions(max_length=128, external_data=True)
    )
    weights = [
        p for p in out.iterdir() if p.name not in ("model.onnx", "tokenizer.json", "slimembed.json")
    ]
    assert weights, "no external data file was written"
    assert (out / "model.onnx").stat().st_size < sum(p.stat().st_size for p in weights)
    assert manifest.parity["batch_min_cosine"] >= MIN_COSINE
    texts = reference.mixed_texts()
    want = TextEmbedding(exported("qwen3")).encode(texts)
    np.testing.assert_allclose(TextEmbedding(out).encode(texts), want, atol=1e-5)


def test_external_data_graph_loads_from_a_hub_cache_layout(
    tiny_source: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the Hugging Face cache stores a download: each file of the snapshot a symlink into
    blobs/ under a hash name. ONNX Runtime refuses external data that resolves outside the
    graph's folder; the runtime must still load it, without copying the weights."""
    out = tmp_path / "external"
    export_model(str(tiny_source("qwen3")), out, ExportOptions(max_length=128, external_data=True))
    snapshot = hub_cache(tmp_path / "hub", "acme/external", out)
    monkeypatch.setenv("SLIMEMBED_CACHE_DIR", str(tmp_path / "cache"))
    texts = reference.mixed_texts()
    want = TextEmbedding(out).encode(texts)
    np.testing.assert_array_equal(TextEmbedding(snapshot).encode(texts), want)
    linked = list((tmp_path / "cache" / "linked").glob("*/model.onnx.data"))
    assert len(linked) == 1
    assert linked[0].stat().st_nlink >= 2  # a hard link, not a copy
    np.testing.assert_array_equal(TextEmbedding(snapshot).encode(texts), want)  # made once
    assert len(list((tmp_path / "cache" / "linked").iterdir())) == 1


def test_external_data_links_only_files_of_the_model_and_copies_keep_permissions(
    tiny_source: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime links or copies a graph's external data into its cache, so it must never
    take a file from outside the model directory (a data symlink pointing elsewhere), and a
    copy (no hard link across file systems) keeps the source's permissions."""
    out = tmp_path / "external"
    export_model(str(tiny_source("qwen3")), out, ExportOptions(max_length=128, external_data=True))
    monkeypatch.setenv("SLIMEMBED_CACHE_DIR", str(tmp_path / "cache"))
    linked = tmp_path / "cache" / "linked"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    model = tmp_path / "model"
    model.mkdir()
    for file in out.iterdir():
        if file.name == "model.onnx.data":
            shutil.copy(file, elsewhere / file.name)
            (model / file.name).symlink_to(elsewhere / file.name)
        else:
            shutil.copy(file, model / file.name)
    with pytest.raises(ManifestError, match=r"external data.*outside the model directory"):
        TextEmbedding(model)
    assert not linked.exists() or not any(linked.iterdir())

    snapshot = hub_cache(tmp_path / "hub", "acme/external", out)
    for blob in (tmp_path / "hub" / "models--acme--external" / "blobs").iterdir():
        blob.chmod(0o600)

    def no_link(src: object, dst: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    texts = reference.mixed_texts()
    np.testing.assert_array_equal(
        TextEmbedding(snapshot).encode(texts), TextEmbedding(out).encode(texts)
    )
    (folder,) = linked.iterdir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for copy in folder.iterdir():
        assert copy.stat().st_nlink == 1  # a copy
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
