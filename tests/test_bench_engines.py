"""The benchmark's engine adapters on real and tiny models: each engine gives the same vectors
as slimembed on the same model (so a benchmark compares equal work), a missing engine is
skipped with a note, and a small suite run writes every report."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from benchmarks import engines, models, report
from benchmarks.datasets import scifact
from benchmarks.suite import Config, Suite
from slimembed import TextEmbedding
from tests.tiny import minilm_source

# Short, empty, non-Latin and long (past 256 and past 512 tokens) texts.
TEXTS = [
    "A man is playing a guitar.",
    "",
    "Ein Mann spielt Gitarre. 一个男人在弹吉他。",
    scifact().docs[0],
    " ".join(scifact().docs[:6]),
]


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-12)
    return np.where(both_zero, 1.0, cos)


def _vectors(models_: models.ModelSet) -> dict[str, np.ndarray]:
    specs, _ = models_.specs(list(engines.ENGINES), threads=2)
    return {s.label: engines.load(s).encode(TEXTS, 2) for s in specs}


def test_slimembed_adapter_is_text_embedding(exported: Callable[[str], Path]) -> None:
    spec = engines.EngineSpec("slimembed", "slimembed fp32", str(exported("bert")), threads=1)
    got = engines.load(spec).encode(TEXTS, 2)
    want = TextEmbedding(exported("bert"), threads=1).encode(TEXTS)
    np.testing.assert_array_equal(got, want)
    again = engines.EngineSpec.from_json(spec.to_json())
    assert again == spec


def test_missing_engine_is_skipped_with_a_note(
    exported: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = engines.Adapter(("no_such_module_for_bench",), "no-such-dist", lambda spec: None)  # type: ignore[arg-type, return-value]
    monkeypatch.setitem(engines.ENGINES, "absent-engine", absent)
    assert engines.missing("absent-engine") is not None
    tiny = models.transformer({"fp32": exported("bert")}, None, tmp_path)
    specs, notes = tiny.specs(["slimembed", "absent-engine", "model2vec"], threads=1)
    assert [s.label for s in specs] == ["slimembed fp32"]
    assert any("absent-engine skipped" in n and "no_such_module" in n for n in notes)
    # No model2vec folder for a transformer: skipped, said so.
    assert any("model2vec skipped" in n for n in notes)
    with pytest.raises(ValueError, match="unknown engine"):
        engines.missing("nope")


def test_minilm_engines_agree(minilm_dir: Path, tmp_path: Path) -> None:
    """sentence-transformers and fastembed run the same MiniLM as slimembed, truncating alike."""
    minilm = models.transformer({"fp32": minilm_dir}, minilm_source(), tmp_path, "minilm")
    vectors = _vectors(minilm)
    assert "sentence-transformers" in vectors
    ours = vectors.pop("slimembed fp32")
    for label, theirs in vectors.items():
        assert _cosine(ours, theirs).min() > 0.9999, label
    if importlib.util.find_spec("fastembed") is None:
        assert any("fastembed" in n for n in minilm.specs(["fastembed"], 1)[1])


def test_static_engines_agree(tmp_path: Path) -> None:
    """model2vec, fastembed and sentence-transformers read the embedded default's table as
    slimembed does, all cut at 512 tokens."""
    from slimembed.text_embedding import DEFAULT_MODEL_DIR

    static = models.static(DEFAULT_MODEL_DIR, tmp_path, "default")
    assert set(static.slimembed) == {"int8", "fp32"}
    vectors = _vectors(static)
    assert "model2vec" in vectors
    want = vectors.pop("model2vec")
    for label, got in vectors.items():
        # sentence-transformers' StaticEmbedding keeps the unknown token that the others drop.
        floor = 0.999 if label == "sentence-transformers" else 0.99999
        assert _cosine(got, want).min() > floor, label


def test_suite_on_a_tiny_model_writes_every_report(
    exported: Callable[[str], Path], tmp_path: Path
) -> None:
    cfg = Config(
        engines=["slimembed", "sentence-transformers-onnx", "model2vec"],
        threads=1,
        sources=["generated"],
        n_texts=20,
        batch_sizes=[4, 16],
        reps=2,
        latency_calls=5,
        probe_reps=1,
        sts_pairs=20,
        scifact_docs=0,
        scaling_lengths=[8, 64],
        scaling_tokens=256,
        scaling_reps=1,
        cache=tmp_path / "cache",
    )
    tiny = models.transformer({"fp32": exported("bert")}, None, tmp_path, "tiny-bert")
    suite = Suite(cfg)
    suite.run_model(tiny, {"throughput", "latency", "memory", "fidelity", "scaling"})
    suite.footprints()
    kinds = {r["measure"] for r in suite.records}
    assert kinds == {
        "model",
        "throughput",
        "latency",
        "process",
        "fidelity",
        "scaling",
        "footprint",
    }
    thr = [r for r in suite.records if r["measure"] == "throughput"]
    assert [r["batch_size"] for r in thr] == [4, 16]
    assert all(r["vs_baseline"]["median"] == 1.0 for r in thr)  # slimembed is its own baseline
    proc = next(r for r in suite.records if r["measure"] == "process")
    assert 10 < proc["peak_rss_mib"]["median"] < 4000
    assert proc["cold_start_s"]["median"] >= proc["load_s"]["median"] > 0
    fid = next(r for r in suite.records if r["measure"] == "fidelity")
    assert fid["cosine_min"] == pytest.approx(1.0)  # slimembed is the reference here
    assert -1 <= fid["sts_spearman"] <= 1
    assert any("model2vec skipped" in n for n in suite.notes)
    rep = {
        "command": "test",
        "machine": {"cpu": "x", "cores": 1, "python": "3", "git": "g"},
        "versions": {},
        "config": suite.config_record(),
        "records": suite.records,
        "notes": suite.notes,
    }
    paths = report.write(rep, tmp_path / "out")
    assert "tiny-bert" in paths["markdown"].read_text()
    assert json.loads(paths["json"].read_text())["records"]
    assert "model2vec skipped" in report.terminal(rep)


def test_slimembed_bench_without_the_bench_distribution(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slimembed import cli

    monkeypatch.setattr(cli, "_entry_points", dict)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["bench", "--quick"])
    assert result.exit_code != 0
    assert "pip install ./benchmarks" in result.output


def test_slimembed_bench_comes_from_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from importlib.metadata import EntryPoint

    from slimembed import cli

    # As slimembed-bench's pyproject.toml declares it (installed or not: pythonpath has ".").
    bench = EntryPoint("bench", "benchmarks.cli:bench", cli.COMMANDS_GROUP)
    monkeypatch.setattr(cli, "_entry_points", lambda: {"bench": bench})
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.main, ["bench", "--help"])
    assert result.exit_code == 0, result.output
    assert "--quick" in result.output
    assert "--engines" in result.output
