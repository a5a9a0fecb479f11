"""The numpy safetensors reader/writer against the safetensors library, and table quantization."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from slimembed import ModelFileError, tables


def _tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "embeddings": rng.standard_normal((7, 5)).astype(np.float16),
        "mapping": np.arange(9, dtype=np.int64),
        "scales": rng.random(7).astype(np.float32),
        "q": np.array([[1, -2], [127, -128]], dtype=np.int8),
    }


def test_round_trips_with_the_safetensors_library(tmp_path: Path) -> None:
    want = _tensors()
    tables.save(want, tmp_path / "ours.safetensors")
    for name, array in load_file(str(tmp_path / "ours.safetensors")).items():
        np.testing.assert_array_equal(array, want[name])
        assert array.dtype == want[name].dtype
    save_file(want, str(tmp_path / "theirs.safetensors"))
    got = tables.load(tmp_path / "theirs.safetensors")
    assert set(got) == set(want) == tables.tensor_names(tmp_path / "theirs.safetensors")
    for name, array in got.items():
        np.testing.assert_array_equal(array, want[name])


def test_corrupt_files_are_model_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x05")
    with pytest.raises(ModelFileError, match=r"bad\.safetensors"):
        tables.load(path)
    with pytest.raises(ModelFileError, match=r"bad\.safetensors"):
        tables.tensor_names(path)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 0), ("fp16", 2e-3), ("int8", 1e-2)])
def test_quantize_dequantize_error_is_bounded(precision: str, tolerance: float) -> None:
    table = np.random.default_rng(1).standard_normal((100, 16)).astype(np.float32)
    table[3] = 0.0  # an all-zero row must survive int8 scaling
    back = tables.dequantize(tables.quantize(table, precision))
    scale = np.abs(table).max(axis=1, keepdims=True) + 1e-12
    assert (np.abs(back - table) / scale).max() <= tolerance
    np.testing.assert_array_equal(back[3], 0.0)
    with pytest.raises(ValueError, match="precision"):
        tables.quantize(table, "int4")
