"""The benchmark suite: every measure for every model and engine, as a list of JSON records.

Fairness rules, applied everywhere: the same model files, texts and thread count for every
engine; one warm-up call each; repetitions interleaved between engines (A B A B ...) so that
drift of the machine hits all alike; speed ratios are the median of per-pair ratios (with
their range). Cold start and peak memory run each engine alone in a fresh process.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import texts as text_sources
from benchmarks.engines import ENGINES, Engine, EngineSpec, load
from benchmarks.footprint import footprint
from benchmarks.models import ModelSet
from benchmarks.probe import run_probe
from benchmarks.quality import scifact_ndcg, sts_spearman
from benchmarks.timing import interleaved, interleaved_each, latency, ratio, ratios_vs, summary

Record = dict[str, Any]


@dataclass
class Config:
    engines: list[str]
    threads: int
    sources: list[str] = field(default_factory=lambda: ["sts"])
    n_texts: int = 1000
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32, 128])
    reps: int = 3
    latency_calls: int = 200
    probe_reps: int = 3
    probe_batch_size: int = 32
    sts_pairs: int | None = None  # None: all of STS-B en-test; 0: skip
    scifact_docs: int | None = None  # None: the whole corpus; 0: skip
    scaling_lengths: list[int] = field(default_factory=lambda: [16, 64, 256, 1024, 4096, 8192])
    scaling_tokens: int = 65536  # tokens per timed call at each length
    scaling_reps: int = 3
    seed: int = 0
    baseline: str = "slimembed"  # label prefix; the first matching label is the baseline
    cache: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def token_counts(models: ModelSet, texts: list[str]) -> np.ndarray:
    """Tokens each text gives the model (special tokens included, after truncation)."""
    from slimembed import _core

    tok = _core.Tokenizer(models.tokenizer_file)
    encoded = tok.encode(
        texts, add_special_tokens=models.add_special_tokens, max_length=models.max_length
    )
    return encoded.lengths()


def _baseline(labels: list[str], wanted: str) -> str:
    for label in labels:
        if label == wanted:
            return label
    for label in labels:
        if label.startswith(wanted):
            return label
    return labels[0]


class Suite:
    def __init__(self, config: Config, progress: Progress = _quiet) -> None:
        self.config = config
        self.progress = progress
        self.records: list[Record] = []
        self.notes: list[str] = []

    def _add(self, **record: Any) -> None:
        self.records.append(record)

    # ---- one model ---------------------------------------------------------------------------

    def run_model(self, models: ModelSet, measures: set[str], describe: bool = True) -> None:
        """Take ``measures`` for every engine that can run ``models``; ``describe=False`` adds
        measures to a model already described (no model record, notes already taken)."""
        cfg = self.config
        specs, notes = models.specs(cfg.engines, cfg.threads)
        if describe:
            self.notes += models.notes + notes
        if not specs:
            self.notes.append(f"{models.name}: no engine can run it here")
            return
        if describe:
            self._add(
                measure="model",
                model=models.name,
                kind=models.kind,
                max_length=models.max_length,
                dim=models.dim,
                engines={s.label: {"engine": s.engine, "path": s.path} for s in specs},
                reference=models.reference,
            )
        self.progress(f"{models.name}: loading {', '.join(s.label for s in specs)}")
        engines = {s.label: load(s) for s in specs}
        base = _baseline(list(engines), cfg.baseline)
        if "throughput" in measures:
            self.throughput(models, engines, base)
        if "latency" in measures:
            self.latency(models, engines, base)
        if "fidelity" in measures:
            self.fidelity(models, engines)
        if "scaling" in measures:
            self.scaling(models, engines, base)
        if "memory" in measures:
            self.probes(models, specs)

    def throughput(self, models: ModelSet, engines: dict[str, Engine], base: str) -> None:
        cfg = self.config
        for source in cfg.sources:
            texts = text_sources.load(source, cfg.n_texts, cfg.seed)
            tokens = int(token_counts(models, texts).sum())
            for batch_size in cfg.batch_sizes:
                self.progress(f"{models.name}: throughput, {source}, batch {batch_size}")
                fns = {
                    name: (lambda e=e, b=batch_size, t=texts: e.encode(t, b))
                    for name, e in engines.items()
                }
                times = interleaved(fns, cfg.reps)
                rel = ratios_vs(times, base)
                for name, t in times.items():
                    self._add(
                        measure="throughput",
                        model=models.name,
                        engine=name,
                        source=source,
                        texts=len(texts),
                        tokens=tokens,
                        batch_size=batch_size,
                        threads=cfg.threads,
                        reps=cfg.reps,
                        seconds=t,
                        texts_per_s=summary(t, len(texts)),
                        tokens_per_s=summary(t, tokens),
                        baseline=base,
                        vs_baseline=rel[name],
                    )

    def latency(self, models: ModelSet, engines: dict[str, Engine], base: str) -> None:
        cfg = self.config
        pool = text_sources.load(cfg.sources[0], None, cfg.seed)
        items = [pool[i % len(pool)] for i in range(cfg.latency_calls)]
        self.progress(f"{models.name}: latency, {len(items)} single texts")
        fns = {name: (lambda t, e=e: e.encode([t], 1)) for name, e in engines.items()}
        times = interleaved_each(fns, items)
        for name, t in times.items():
            self._add(
                measure="latency",
                model=models.name,
                engine=name,
                source=cfg.sources[0],
                calls=len(t),
                ms=latency(t),
                samples_ms=[x * 1000 for x in t],
                baseline=base,
                # Per-call pairs: the baseline's call and this engine's on the same text.
                vs_baseline=ratio(t, times[base]),
            )

    def fidelity(self, models: ModelSet, engines: dict[str, Engine]) -> None:
        cfg = self.config
        texts = text_sources.load(cfg.sources[0], cfg.n_texts, cfg.seed)
        self.progress(f"{models.name}: fidelity, cosine to {models.reference}")
        vectors = {name: e.encode(texts, 32) for name, e in engines.items()}
        reference = vectors.get(models.reference)
        for name, e in engines.items():
            record: Record = {"measure": "fidelity", "model": models.name, "engine": name}
            if reference is not None:
                cos = _cosine(vectors[name], reference)
                record |= {
                    "reference": models.reference,
                    "cosine_min": float(cos.min()),
                    "cosine_mean": float(cos.mean()),
                    "cosine_texts": len(texts),
                }
            encode = self._cached(models, name, e)
            if cfg.sts_pairs != 0:
                self.progress(f"{models.name}: fidelity, STS-B en-test, {name}")
                record["sts_spearman"] = sts_spearman(encode, max_pairs=cfg.sts_pairs)
                record["sts_pairs"] = cfg.sts_pairs or "all"
            if cfg.scifact_docs != 0:
                self.progress(f"{models.name}: fidelity, SciFact nDCG@10, {name}")
                record["scifact_ndcg10"] = scifact_ndcg(encode, max_docs=cfg.scifact_docs)
                record["scifact_docs"] = cfg.scifact_docs or "all"
            self._add(**record)
        if reference is None:
            self.notes.append(
                f"{models.name}: no cosine to reference: {models.reference} did not run"
            )

    def _cached(self, models: ModelSet, name: str, engine: Engine) -> Callable[[list[str]], Any]:
        """Encode through a disk cache keyed by the engine, its model files and the texts
        (SciFact's corpus takes minutes per transformer engine on 2 cores)."""
        root = self.config.cache / "vectors"
        files = _files_key(Path(engine.path))

        def encode(texts: list[str]) -> Any:
            key = hashlib.sha256(
                json.dumps([name, files, models.max_length, texts]).encode()
            ).hexdigest()[:24]
            path = root / f"{key}.npy"
            if path.is_file():
                return np.load(path)
            out = engine.encode(texts, 32)
            root.mkdir(parents=True, exist_ok=True)
            np.save(path, out)
            return out

        return encode

    def scaling(self, models: ModelSet, engines: dict[str, Engine], base: str) -> None:
        cfg = self.config
        for length in cfg.scaling_lengths:
            count = max(2, min(256, cfg.scaling_tokens // length))
            batch = text_sources.of_length(models.tokenizer_file, length, count, cfg.seed)
            tokens = int(token_counts(models, batch).sum())
            self.progress(f"{models.name}: scaling, {count} texts of {length} tokens")
            fns = {n: (lambda e=e, b=batch: e.encode(b, 32)) for n, e in engines.items()}
            times = interleaved(fns, cfg.scaling_reps)
            rel = ratios_vs(times, base)
            for name, t in times.items():
                self._add(
                    measure="scaling",
                    model=models.name,
                    engine=name,
                    length=length,
                    texts=count,
                    tokens=tokens,
                    max_length=models.max_length,
                    truncated=models.max_length is not None and length > models.max_length,
                    texts_per_s=summary(t, count),
                    tokens_per_s=summary(t, tokens),
                    baseline=base,
                    vs_baseline=rel[name],
                )

    def probes(self, models: ModelSet, specs: list[EngineSpec]) -> None:
        cfg = self.config
        texts = text_sources.load(cfg.sources[0], cfg.n_texts, cfg.seed)
        with tempfile.TemporaryDirectory() as tmp:
            texts_file = Path(tmp) / "texts.json"
            texts_file.write_text(json.dumps(texts), encoding="utf-8")
            runs: dict[str, list[dict[str, Any]]] = {s.label: [] for s in specs}
            for rep in range(cfg.probe_reps):
                for spec in specs:
                    self.progress(f"{models.name}: cold start + memory, {spec.label} ({rep + 1})")
                    runs[spec.label].append(run_probe(spec, texts_file, cfg.probe_batch_size))
        for spec in specs:
            got = runs[spec.label]
            self._add(
                measure="process",
                model=models.name,
                engine=spec.label,
                runs=got,
                workload_texts=len(texts),
                batch_size=cfg.probe_batch_size,
                **{
                    key: _median_range([r[key] for r in got])
                    for key in (
                        "cold_start_s",
                        "import_s",
                        "load_s",
                        "first_vector_s",
                        "peak_rss_mib",
                    )
                },
                model_mib=_folder_mib(Path(spec.path)),
            )

    # ---- engines, whatever the model -------------------------------------------------------

    def footprints(self) -> None:
        done: set[str] = set()
        for engine in self.config.engines:
            dist = ENGINES[engine].distribution
            if dist in done:
                continue
            done.add(dist)
            self._add(measure="footprint", engine=engine, **footprint(dist))

    def config_record(self) -> Record:
        cfg = asdict(self.config)
        cfg["cache"] = str(cfg["cache"])
        return cfg


def _median_range(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median": float(np.median(ordered)), "min": ordered[0], "max": ordered[-1]}


def _folder_mib(path: Path) -> float:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.resolve().stat().st_size for p in files) / 2**20


def _files_key(path: Path) -> str:
    parts = []
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        st = f.resolve().stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray((a * b).sum(1))
