"""Static models: export from model2vec and sentence-transformers StaticEmbedding folders, run
in Rust, and match the source libraries on every text in shared/data."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.datasets import all_texts
from slimembed import Manifest, ManifestError, ModelFileError, TextEmbedding
from slimembed.backends import StaticBackend
from slimembed_export import ExportError, ExportOptions, export_model
from tests.hub_layout import embed_offline, hub_cache
from tests.reference import cosine

FP32_MIN = 0.99999
INT8_MIN = 0.999


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test extra's package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(all_texts())


@pytest.fixture(scope="module")
def tokenlearn_dir() -> Path:
    """model2vec format with vocabulary quantization: mapping, weights, INT8 rows, Unigram."""
    return _package_dir("static_model") / "model"


@pytest.fixture(scope="module")
def wordllama_model2vec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """wordllama's real 32,000 x 256 table and Llama BPE tokenizer, saved by model2vec itself."""
    from model2vec import StaticModel
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    root = _package_dir("wordllama")
    table = load_file(str(root / "weights" / "l2_supercat_256.safetensors"))["embedding.weight"]
    tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    out = tmp_path_factory.mktemp("m2v") / "wordllama-m2v"
    StaticModel(
        vectors=table.astype(np.float32), tokenizer=tokenizer, normalize=True
    ).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def wordllama_st(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same table as a sentence-transformers StaticEmbedding model with Normalize."""
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    except ImportError:  # sentence-transformers before the modules move
        from sentence_transformers.models import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    root = _package_dir("wordllama")
    table = load_file(str(root / "weights" / "l2_supercat_256.safetensors"))["embedding.weight"]
    tokenizer = Tokenizer.from_file(str(root / "tokenizers" / "l2_supercat_tokenizer_config.json"))
    static = StaticEmbedding(tokenizer, embedding_weights=table.astype(np.float32))
    out = tmp_path_factory.mktemp("st") / "wordllama-st"
    SentenceTransformer(modules=[static, Normalize()], device="cpu").save(str(out))
    return out


def _model2vec_vectors(path: Path, texts: list[str]) -> np.ndarray:
    from model2vec import StaticModel

    return StaticModel.from_pretrained(path).encode(texts, max_length=None)


@pytest.mark.parametrize(("precision", "floor"), [("fp32", FP32_MIN), ("int8", INT8_MIN)])
def test_model2vec_quantized_vocabulary_matches_model2vec(
    tokenlearn_dir: Path, texts: list[str], tmp_path: Path, precision: str, floor: float
) -> None:
    manifest = export_model(
        str(tokenlearn_dir), tmp_path / "m", ExportOptions(precision=(precision,))
    )
    assert manifest.kind == "static"
    assert manifest.skip_id == 3  # the Unigram unk id model2vec drops
    assert manifest.parity["min_cosine_to_source_formula"] >= FP32_MIN
    assert manifest.parity["graph_min_cosine_to_runtime"] >= FP32_MIN
    ours = TextEmbedding(tmp_path / "m").encode(texts)
    want = _model2vec_vectors(tokenlearn_dir, texts)
    assert cosine(ours, want).min() >= floor


@pytest.mark.parametrize(
    ("precision", "floor"), [("fp32", FP32_MIN), ("fp16", 0.9999), ("int8", INT8_MIN)]
)
def test_model2vec_bpe_table_matches_model2vec(
    wordllama_model2vec: Path, texts: list[str], tmp_path: Path, precision: str, floor: float
) -> None:
    manifest = export_model(
        str(wordllama_model2vec), tmp_path / "m", ExportOptions(precision=(precision,))
    )
    # model2vec also writes a modules.json; its own rules (drop <unk>, id 0) must still apply.
    assert manifest.source["architecture"] == "static (model2vec)"
    assert manifest.skip_id == 0
    ours = TextEmbedding(tmp_path / "m").encode(texts)
    want = _model2vec_vectors(wordllama_model2vec, texts)
    assert cosine(ours, want).min() >= floor


@pytest.mark.parametrize(("precision", "floor"), [("fp32", FP32_MIN), ("int8", INT8_MIN)])
def test_sentence_transformers_static_embedding_matches(
    wordllama_st: Path, texts: list[str], tmp_path: Path, precision: str, floor: float
) -> None:
    from sentence_transformers import SentenceTransformer

    manifest = export_model(
        str(wordllama_st), tmp_path / "m", ExportOptions(precision=(precision,))
    )
    assert manifest.normalize is True
    assert manifest.skip_id is None  # sentence-transformers keeps unknown tokens
    ours = TextEmbedding(tmp_path / "m").encode(texts)
    want = SentenceTransformer(str(wordllama_st), device="cpu").encode(texts, batch_size=256)
    assert cosine(ours, want).min() >= floor


def test_int8_table_is_a_quarter_of_fp32(wordllama_model2vec: Path, tmp_path: Path) -> None:
    fp32 = export_model(
        str(wordllama_model2vec), tmp_path / "a", ExportOptions(precision=("fp32",))
    )
    int8 = export_model(
        str(wordllama_model2vec), tmp_path / "b", ExportOptions(precision=("int8",))
    )
    assert int8.parity["table_bytes"] < 0.3 * fp32.parity["table_bytes"]
    assert int8.parity["fp32_cosine_min"] >= INT8_MIN


def test_static_runtime_edges(wordllama_model2vec: Path, tmp_path: Path) -> None:
    export_model(str(wordllama_model2vec), tmp_path / "m", ExportOptions())
    model = TextEmbedding(tmp_path / "m")
    assert isinstance(model.backend, StaticBackend)  # no ONNX Runtime session
    vectors = model.encode(["", "hello world", "hello world " * 2000])
    np.testing.assert_array_equal(vectors[0], 0.0)
    # No maximum length: a long repetition averages to the same direction as one copy.
    assert cosine(vectors[1:2], vectors[2:3])[0] > 0.99
    small = model.encode(["hello world"], dim=64)
    want = vectors[1, :64] / np.linalg.norm(vectors[1, :64])
    np.testing.assert_allclose(small[0], want, atol=1e-6)
    assert len(list(model.embed(["a", "b"], batch_size=1))) == 2


def test_static_manifest_rules_and_bad_tables(
    wordllama_model2vec: Path,
    tmp_path: Path,
    variant: Callable[..., Path],
    tiny_source: Callable[[str], Path],
) -> None:
    export_model(str(wordllama_model2vec), tmp_path / "m", ExportOptions())
    with pytest.raises(ManifestError, match="mean for a static model"):
        Manifest.load(variant(tmp_path / "m", pooling="cls"))
    broken = variant(tmp_path / "m")
    (broken / "embeddings.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelFileError, match=r"embeddings\.safetensors"):
        TextEmbedding(broken)
    with pytest.raises(ExportError, match="precision 'int4'"):
        export_model(str(tiny_source("bert")), tmp_path / "x", ExportOptions(precision=("int4",)))
    assert json.loads((tmp_path / "m" / "slimembed.json").read_text())["kind"] == "static"


def test_inconsistent_or_non_finite_tables_are_refused_at_load(
    tmp_path: Path, variant: Callable[..., Path]
) -> None:
    """A manifest that misdescribes its table, or a table of NaN/inf values, fails at load
    naming the file: never a model that reports one size and returns another, or NaN vectors."""
    from slimembed import tables
    from slimembed.text_embedding import DEFAULT_MODEL_DIR

    default = Manifest.load(DEFAULT_MODEL_DIR)
    with pytest.raises(ManifestError, match=r"dim is 1000000 but the table"):
        TextEmbedding(variant(DEFAULT_MODEL_DIR, dim=1_000_000))
    with pytest.raises(ManifestError, match=r"precision is 'fp32' but the table .* 'int8'"):
        TextEmbedding(variant(DEFAULT_MODEL_DIR, precision="fp32"))
    original = tables.load(DEFAULT_MODEL_DIR / default.table_file)
    for name, change in (
        ("embeddings", lambda t: {"embeddings": np.full((8, 4), np.nan, np.float32)}),
        ("scales", lambda t: {**t, "scales": np.full_like(t["scales"], 3e38)}),
    ):
        model = variant(DEFAULT_MODEL_DIR, precision="fp32" if name == "embeddings" else "int8")
        if name == "embeddings":
            Manifest.load(model).with_changes(dim=4).save(model)
        tables.save(change(original), model / default.table_file)
        with pytest.raises(ModelFileError, match="NaN or infinite"):
            TextEmbedding(model)


_TABLE_DTYPES = {
    "F32": np.float32,
    "F16": np.float16,
    "I8": np.int8,
    "U8": np.uint8,
    "I32": np.int32,
    "F64": np.float64,
}
_VALUES = st.sampled_from([0.0, 1.0, -0.5, 127.0, 3e38, 70000.0, np.nan, np.inf, -np.inf])


@st.composite
def _static_tables(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, object], int]:
    """A table file's tensors, manifest changes, and bytes cut from the file's end."""
    dtype = draw(st.sampled_from(sorted(_TABLE_DTYPES)))
    shape = draw(
        st.sampled_from([(51, 8), (51, 8), (60, 8), (40, 8), (51, 0), (0, 8), (51,), (51, 8, 2)])
    )
    fill = draw(_VALUES)
    table = np.full(shape, 0.25, dtype=np.float64)
    if table.size and draw(st.booleans()):
        table.flat[draw(st.integers(0, table.size - 1))] = fill
    with np.errstate(invalid="ignore", over="ignore"):
        tensors = {"embeddings": table.astype(_TABLE_DTYPES[dtype])}
    if draw(st.booleans()):
        rows = draw(st.sampled_from([51, 50, 0, 60]))
        tensors["scales"] = np.full(rows, draw(_VALUES), np.float32)
    if draw(st.booleans()):
        tensors["mapping"] = np.arange(51, dtype=draw(st.sampled_from([np.int32, np.float32])))
    changes: dict[str, object] = {
        "precision": draw(st.sampled_from(["fp32", "fp16", "int8"])),
        "dim": draw(st.sampled_from([8, 8, 4, 16])),
    }
    return tensors, changes, draw(st.sampled_from([0, 0, 0, 1, 7, 100]))


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=_static_tables())
def test_fuzzed_static_tables_load_consistent_or_fail_naming_the_file(
    case: tuple[dict[str, np.ndarray], dict[str, object], int], tmp_path: Path
) -> None:
    """Tables of any dtype, shape, value and length against any manifest dim and precision:
    either a model whose vectors have the manifest's width and are finite, or a ModelFileError
    naming the table file — never another exception, NaN vectors or a size that lies."""
    from slimembed import tables
    from slimembed.static_model import write_static_model
    from tests.tiny import number_tokenizer_json

    tensors, changes, cut = case
    out = tmp_path / f"fuzzed-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    tokenizer = out / "source-tokenizer.json"
    tokenizer.write_text(number_tokenizer_json())
    manifest = write_static_model(
        out,
        {"embeddings": np.zeros((51, 8), np.float32)},
        tokenizer,
        precision="fp32",
        normalize=True,
        skip_id=None,
        source={"fuzz": True},
    )
    manifest.with_changes(**changes).save(out)
    table = out / str(manifest.table_file)
    tables.save(tensors, table)
    if cut:
        table.write_bytes(table.read_bytes()[:-cut])
    try:
        model = TextEmbedding(out)
    except ModelFileError as err:
        message = str(err)
    else:
        message = ""
    if message:
        assert str(table) in message or str(out / "slimembed.json") in message, message
        return
    vectors = model.encode(["3 17 49", "0", "", "50 [UNK] 12"])
    assert vectors.shape == (4, model.embedding_size)
    assert model.embedding_size == changes["dim"]
    assert np.isfinite(vectors).all()


@pytest.mark.parametrize("layout", ["model2vec-quantized", "model2vec-bpe", "static-embedding"])
def test_static_repositories_load_by_hub_id_without_torch(
    layout: str,
    tokenlearn_dir: Path,
    wordllama_model2vec: Path,
    wordllama_st: Path,
    texts: list[str],
    tmp_path: Path,
) -> None:
    """model2vec and StaticEmbedding repositories in a hub cache load by their id, offline,
    converted by the runtime itself (no torch), with the source library's vectors."""
    from sentence_transformers import SentenceTransformer

    folder = {
        "model2vec-quantized": tokenlearn_dir,
        "model2vec-bpe": wordllama_model2vec,
        "static-embedding": wordllama_st,
    }[layout]
    cache = tmp_path / "hub"
    hub_cache(cache, f"acme/{layout}", folder)

    got, report = embed_offline(cache, f"acme/{layout}", texts, tmp_path / "run")

    assert report["torch"] == []
    assert report["kind"] == "static"
    if layout == "static-embedding":
        want = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=256)
    else:
        want = _model2vec_vectors(folder, texts)
    assert cosine(got, want).min() >= FP32_MIN
    # Converted once, into the cache beside the download; the second load reads it.
    converted = Path(report["model_dir"])
    assert converted.is_relative_to(cache / "adopted")
    again = TextEmbedding(f"acme/{layout}", cache_dir=cache, local_files_only=True)
    assert again.model_dir == converted
