"""Model repositories that are not slimembed model directories, loaded without torch.

The Hub is full of embedders that already ship what the runtime runs: ONNX graphs
(sentence-transformers' ``onnx/`` folder, Transformers.js and Qdrant layouts with
``model.onnx`` at the root) and static tables (model2vec, sentence-transformers
``StaticEmbedding``). ``adopt`` reads such a folder's own configuration and gives the manifest
that reproduces the source library, so no export step (and no PyTorch) is needed:

- a graph repository runs from its snapshot as it is; the manifest is built from
  ``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``,
  ``config_sentence_transformers.json``, ``tokenizer.json``/``tokenizer_config.json``,
  ``config.json`` and the graph's declared inputs and outputs, and kept in the cache under
  ``adopted/`` so that a second load reads one file;
- a static repository's table is rewritten once into a static model directory under the
  cache (the runtime's table layout), with the rules each library keeps;
- a repository with PyTorch weights only is refused with the command that exports it.

The sentence-transformers and static readers are the runtime's because they need JSON and
numpy only; ``slimembed export`` reads sources through them too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slimembed import _core, registry, tables
from slimembed.errors import ManifestError, ModelFileError
from slimembed.graph_io import declared_io
from slimembed.manifest import MANIFEST_FILE, POOLED, Manifest, Prompt
from slimembed.static_model import unknown_token_id, write_static_model

# Model types whose base model is a causal decoder; everything else is an encoder.
DECODER_TYPES = frozenset(
    {
        "gpt2", "gpt_neo", "gptj", "gpt_neox", "llama", "mistral", "mixtral", "qwen2",
        "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text", "phi", "phi3",
        "olmo", "olmo2", "stablelm", "falcon", "bloom", "opt", "starcoder2",
    }
)  # fmt: skip
# sentence-transformers pooling flags -> slimembed pooling modes.
ST_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
    "pooling_mode_lasttoken": "last_token",
}
ST_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens")
ST_KNOWN_MODULES = ("Transformer", "Pooling", "Normalize")
ST_STATIC = "StaticEmbedding"
# Where repositories keep their graphs: sentence-transformers and Transformers.js in onnx/,
# Qdrant's fastembed repositories at the root. The first that exists is the default graph.
DEFAULT_GRAPHS = ("onnx/model.onnx", "model.onnx")
# Graph outputs of per-token hidden states, as exporters name them.
HIDDEN_OUTPUTS = ("last_hidden_state", "token_embeddings")
# A graph output already pooled, (batch, dim): run as it is where no per-token output exists.
POOLED_OUTPUTS = ("sentence_embedding",)
# Graph file names that say their precision (everything else is taken as float32).
_INT8_MARKS = ("qint8", "quint8", "int8", "uint8", "quantized")
_FP16_MARKS = ("fp16", "float16")
# Files that hold PyTorch weights: such a repository needs `slimembed export`.
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
# A repository graph's name in the model directory slimembed keeps for it under the cache's
# adopted/: the fused graph, or the repository's graph linked as it is.
OWN_GRAPH = "model.onnx"
# Why a kept manifest ran its graph unfused, when installing onnx would fuse it at next load.
FUSION_UNAVAILABLE = (
    "not tried: the onnx package is not installed (pip install 'slimembed[quantize]')"
)
# Positions past this are no limit a tokenizer config really means (transformers' "very large").
_NO_LIMIT = 1_000_000


def read_json(path: Path) -> Any:
    """The JSON in ``path``; ModelFileError naming it when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"cannot read {path}: {err}") from err


def is_decoder(config: dict[str, Any]) -> bool:
    """Whether ``config.json`` describes a causal decoder (last-token models, left padding)."""
    if config.get("model_type") in DECODER_TYPES:
        return True
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or ())


@dataclass
class SentenceTransformersConfig:
    """What a sentence-transformers folder says about embedding with it."""

    pooling: str | None = None
    normalize: bool = False
    include_prompt: bool = True
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)


def read_sentence_transformers(model_dir: Path) -> SentenceTransformersConfig | None:
    """The folder's sentence-transformers configuration; None when it has none
    (no ``modules.json``). ModelFileError for modules or pooling modes slimembed lacks."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    st = SentenceTransformersConfig()
    for module in _modules(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_KNOWN_MODULES:
            raise ModelFileError(
                f"{modules_path}: module {module.get('type')!r} is not supported yet "
                f"(supported: {ST_KNOWN_MODULES})"
            )
        if kind == "Normalize":
            st.normalize = True
        if kind == "Pooling":
            pooling_path = model_dir / str(module.get("path", "")) / "config.json"
            pooling_config = read_json(pooling_path)
            st.pooling = _st_pooling(pooling_config, pooling_path)
            st.include_prompt = bool(pooling_config.get("include_prompt", True))
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        st.max_length = read_json(bert_config).get("max_seq_length")
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        st.prompts = dict(read_json(st_config).get("prompts") or {})
    return st


def _modules(path: Path) -> list[dict[str, Any]]:
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelFileError(f"{path}: expected a list of module objects")
    return modules


def _st_pooling(config: dict[str, Any], origin: Path) -> str:
    unsupported = [k for k in ST_UNSUPPORTED if config.get(k)]
    if unsupported:
        raise ModelFileError(f"{origin}: pooling {unsupported} is not supported")
    modes = [mode for key, mode in ST_POOLING.items() if config.get(key)]
    if len(modes) != 1:
        raise ModelFileError(
            f"{origin}: expected exactly one pooling mode, found {modes or 'none'}"
        )
    return modes[0]


# ----------------------------------------------------------------------------- static tables


@dataclass
class StaticSource:
    """A static model as read from its source folder, in float32."""

    kind: str  # "model2vec" or "sentence-transformers"
    embeddings: np.ndarray  # (rows, dim)
    tokenizer_file: Path
    normalize: bool
    skip_id: int | None = None
    mapping: np.ndarray | None = None  # (vocab,) int64
    weights: np.ndarray | None = None  # (vocab,) float32
    int8_source: bool = False
    # The table's precision as stored ("fp32", "fp16" or "int8").
    precision: str = "fp32"


def static_kind(model_dir: Path) -> str | None:
    """ "model2vec", "sentence-transformers" (StaticEmbedding) or None for other folders.

    model2vec folders also carry a modules.json for sentence-transformers; model2vec's own rules
    (drop the unknown token) win for them, as the folder's maker intended.
    """
    config = model_dir / "config.json"
    if (model_dir / "model.safetensors").is_file() and config.is_file():
        plain = may_be_model2vec(read_json(config))
        if plain and "embeddings" in tables.tensor_names(model_dir / "model.safetensors"):
            return "model2vec"
    modules = model_dir / "modules.json"
    if modules.is_file():
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in _modules(modules)]
        return "sentence-transformers" if ST_STATIC in kinds else None
    return None


def may_be_model2vec(config: dict[str, Any]) -> bool:
    """Whether ``config.json`` may be model2vec's: it says so (``model_type``), or it names
    neither a model type nor an architecture, as model2vec's older versions wrote it. Only
    the table then tells (a tensor named ``embeddings``)."""
    if config.get("model_type") == "model2vec":
        return True
    return not (config.get("model_type") or config.get("architectures"))


def read_static(model_dir: Path, kind: str) -> StaticSource:
    """The table, tokenizer and rules of a model2vec or StaticEmbedding folder.

    model2vec: no special tokens, the unknown token dropped, ``mapping`` and ``weights`` apply,
    ``normalize`` from config.json. StaticEmbedding: no special tokens, unknown tokens kept,
    plain mean, a Normalize module means normalize."""
    if kind == "model2vec":
        tensors = tables.load(model_dir / "model.safetensors")
        config = read_json(model_dir / "config.json")
        table = tensors["embeddings"]
        mapping = tensors.get("mapping")
        weights = tensors.get("weights")
        tokenizer_file = model_dir / "tokenizer.json"
        return StaticSource(
            kind=kind,
            embeddings=table.astype(np.float32),
            tokenizer_file=tokenizer_file,
            normalize=bool(config.get("normalize", False)),
            skip_id=unknown_token_id(tokenizer_file),
            mapping=None if mapping is None else mapping.astype(np.int64),
            weights=None if weights is None else weights.astype(np.float32),
            int8_source=table.dtype == np.int8,
            precision=_table_precision(table),
        )
    modules = _modules(model_dir / "modules.json")
    static = next(m for m in modules if str(m.get("type", "")).endswith(ST_STATIC))
    others = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if m is not static]
    if set(others) - {"Normalize"}:
        raise ModelFileError(
            f"{model_dir}: modules {others} after StaticEmbedding are not supported"
        )
    folder = model_dir / str(static.get("path", ""))
    tensors = tables.load(folder / "model.safetensors")
    key = "embedding.weight" if "embedding.weight" in tensors else next(iter(tensors))
    return StaticSource(
        kind=kind,
        embeddings=tensors[key].astype(np.float32),
        tokenizer_file=folder / "tokenizer.json",
        normalize="Normalize" in others,
        precision=_table_precision(tensors[key]),
    )


def _table_precision(table: np.ndarray) -> str:
    return {np.dtype(np.int8): "int8", np.dtype(np.float16): "fp16"}.get(table.dtype, "fp32")


def static_tensors(source: StaticSource, precision: str) -> dict[str, np.ndarray]:
    """The tensors of the runtime's ``embeddings.safetensors`` for ``precision``."""
    tensors = tables.quantize(source.embeddings, precision, integer_rows=source.int8_source)
    if source.mapping is not None:
        tensors["mapping"] = source.mapping
    if source.weights is not None:
        tensors["weights"] = source.weights
    return tensors


# ----------------------------------------------------------------------------- adopting


def adopt(
    model_dir: Path,
    *,
    source_id: str,
    revision: str | None = None,
    model_file: str | None = None,
    precision: str | None = None,
    store: Path,
    spec: registry.ModelSpec | None = None,
    own_dir: bool = False,
) -> tuple[Path, Manifest]:
    """The model directory and manifest that run the repository folder ``model_dir``; what is
    made for it (manifests, a converted table, a fused graph) is kept under ``store``
    (``hub.adopted_dir``). An FP32 encoder graph is fused at first load where it matches
    (``slimembed.optimize.fusion``; that needs the onnx package) and then runs from a model
    directory under ``store``; ``own_dir`` asks for such a directory in every case (the graph
    linked there as it is when it was not rewritten), for ``slimembed quantize`` to write in.
    ``spec``, the registry entry it was asked for by (else the one of ``source_id``), fills
    what the folder's configuration leaves out; its explicit pooling and normalization win.

    ``model_file`` picks a graph (fastembed's name for it, a path inside the folder); else
    ``precision`` picks among the folder's graphs where one file matches, else the float32
    graph runs. Raises ModelFileError when the folder holds nothing the runtime can run."""
    kind = static_kind(model_dir)
    if kind is not None:
        if model_file is not None:
            raise ValueError(f"{source_id} is a static model: it has no graph to choose")
        return _adopt_static(model_dir, kind, source_id, revision, precision, store)
    files = listing(model_dir)
    graphs = graph_files(files)
    if not graphs:
        raise ManifestError(_nothing_to_run(model_dir, source_id, files))
    spec = spec or registry.find(source_id)
    # The registry entry is part of what the manifest is made from: another (a custom model
    # registered on the same repository) gets a manifest of its own.
    key = "" if spec is None else "." + _digest(json.dumps(spec.to_dict(), sort_keys=True))
    if model_file is None and precision is not None:
        # The default graph's own directory may hold that precision (`slimembed quantize`).
        own = _own_variant(store, graphs, key, precision, source_id)
        if own is not None:
            return own
    graph = choose_graph(graphs, model_file, precision, source_id)
    optimized = optimized_dir(store, graph, key)
    if (optimized / MANIFEST_FILE).is_file():
        return optimized, Manifest.load(optimized)
    cached = store / (graph.replace("/", "%") + key + ".json")
    manifest = _kept_manifest(cached)
    if manifest is None:
        manifest = graph_manifest(model_dir, graph, source_id, revision, spec)
        fused, why = _fuse(model_dir, manifest, optimized)
        if fused is not None:
            return optimized, fused
        manifest = manifest.with_changes(source={**manifest.source, "fusion": why})
        _write_atomically(cached, json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False))
    if own_dir:
        return optimized, _linked_dir(model_dir, manifest, optimized)
    return model_dir, manifest


def _own_variant(
    store: Path, graphs: list[str], key: str, precision: str, source_id: str
) -> tuple[Path, Manifest] | None:
    """The default graph's model directory under ``store`` where it holds ``precision``."""
    try:
        own = optimized_dir(store, choose_graph(graphs, None, None, source_id), key)
    except ValueError:
        return None  # no default graph
    if not (own / MANIFEST_FILE).is_file():
        return None
    manifest = Manifest.load(own)
    return (own, manifest) if precision in (manifest.precision, *manifest.variants) else None


def _link(source: Path, target: Path) -> None:
    """Hard-link ``source`` (through the hub cache's symlink, its blob) to ``target``, or copy
    it where links fail (another file system)."""
    try:
        os.link(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def _link_external_data(graph: Path, folder: Path) -> None:
    """Put ``graph``'s external data files into ``folder`` under their names, by which the
    graph (and a rewritten copy of it there) refers to them (needs onnx, as its callers do)."""
    import onnx

    from slimembed.optimize.fusion import external_data

    for name in sorted(external_data(onnx.load(str(graph), load_external_data=False))):
        _link(graph.parent / name, folder / name)


def _linked_dir(model_dir: Path, manifest: Manifest, out: Path) -> Manifest:
    """A model directory at ``out`` running ``model_dir``'s graph as it is: the graph and its
    external data hard-linked (copied where links fail), the tokenizer copied."""
    graph = manifest.graph_file
    assert graph is not None

    def write(staging: Path) -> Manifest:
        _link(model_dir / graph, staging / OWN_GRAPH)
        _link_external_data(model_dir / graph, staging)
        shutil.copyfile(model_dir / manifest.tokenizer_file, staging / manifest.tokenizer_file)
        linked = manifest.with_changes(graph_file=OWN_GRAPH)
        linked.save(staging)
        return linked

    made = write_model_dir(out, write)
    assert made is not None
    return made


def _kept_manifest(cached: Path) -> Manifest | None:
    """The manifest an earlier load kept at ``cached``; None when there is none, when another
    slimembed version made it, or when it ran unfused only for want of onnx, now installed."""
    if not cached.is_file():
        return None
    try:
        manifest = Manifest.from_dict(read_json(cached), origin=str(cached))
    except ModelFileError:
        return None  # made by another slimembed version: build it again
    if manifest.source.get("fusion") == FUSION_UNAVAILABLE and has_onnx():
        return None
    return manifest


def optimized_dir(store: Path, graph: str, key: str = "") -> Path:
    """Where a repository graph's slimembed model directory is kept once slimembed rewrote it
    (attention fused at first load, INT8 added by ``slimembed quantize``)."""
    return store / (graph.replace("/", "%") + key)


def has_onnx() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnx") is not None


def _fuse(model_dir: Path, manifest: Manifest, out: Path) -> tuple[Manifest | None, str]:
    """Fuse the attention of an FP32 encoder graph into ``out`` (a model directory holding the
    fused graph, the tokenizer and the manifest): the manifest, or None and why not."""
    graph = manifest.graph_file
    if manifest.precision != "fp32" or graph is None:
        return None, f"not tried: a {manifest.precision} graph runs as it is"
    if manifest.source.get("model_type") in DECODER_TYPES:
        return None, "not tried: a causal decoder's attention has no key-padding mask"
    if not has_onnx():
        return None, FUSION_UNAVAILABLE
    from slimembed.optimize.fusion import PROBE_INPUTS, fuse

    if not set(manifest.graph_inputs) <= set(PROBE_INPUTS):
        return None, f"not tried: inputs {list(manifest.graph_inputs)}"

    def write(staging: Path) -> Manifest | None:
        # The graph and its data as real files in the staging folder: ONNX Runtime refuses
        # data that resolves elsewhere (a hub cache's blobs/), and fusing writes a probe
        # graph beside its source, never into the snapshot.
        source = staging / ("source-" + Path(graph).name)
        _link(model_dir / graph, source)
        _link_external_data(model_dir / graph, staging)
        counts = fuse(source, staging / OWN_GRAPH)
        source.unlink()
        if not any(counts):
            return None
        shutil.copyfile(model_dir / manifest.tokenizer_file, staging / manifest.tokenizer_file)
        what = f"{counts.attention} attention layers and {counts.gelu} GELUs fused from {graph}"
        fused = manifest.with_changes(
            graph_file=OWN_GRAPH, source={**manifest.source, "fusion": what}
        )
        fused.save(staging)
        return fused

    made = write_model_dir(out, write)
    if made is None:
        return None, "no attention core nor GELU matched or passed its checks: runs as it is"
    return made, ""


def write_model_dir(out: Path, write: Callable[[Path], Manifest | None]) -> Manifest | None:
    """Make the model directory ``out`` through ``write(staging)`` in a staging folder beside
    it, renamed into place only when ``write`` returns its manifest; None (nothing left behind)
    when it returns None. Another process that made ``out`` first wins."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".partial", dir=out.parent))
    try:
        made = write(staging)
        if made is None:
            return None
        try:
            staging.rename(out)
        except OSError:
            if not (out / MANIFEST_FILE).is_file():  # not made by another process first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Manifest.load(out)


def graph_files(listing: list[str]) -> list[str]:
    """The ONNX graphs among a repository's files (``onnx/`` and the root), sorted."""
    return sorted(
        name
        for name in listing
        if name.endswith(".onnx")
        and ("/" not in name or (name.startswith("onnx/") and name.count("/") == 1))
    )


def listing(model_dir: Path) -> list[str]:
    """Every file under ``model_dir``, relative, as a repository lists them."""
    return sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())


def files_to_fetch(
    model_dir: Path,
    files: list[str],
    model_file: str | None,
    precision: str | None,
    source_id: str,
) -> list[str]:
    """What ``adopt`` needs of a repository beyond its JSON files (already in ``model_dir``),
    given the repository's ``files``: a static table, or the chosen graph and its external
    data. Only those are downloaded, never every graph a repository ships."""
    config_path = model_dir / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    graphs = graph_files(files)
    wanted = ["*.json"]
    if "model.safetensors" in files and may_be_model2vec(config):
        # Only the table's tensors tell a model2vec table from PyTorch weights; unless
        # config.json says model2vec, a graph beside it may be what runs, so both are fetched.
        wanted.append("model.safetensors")
        if config.get("model_type") == "model2vec" or not graphs:
            return wanted
    else:
        modules = model_dir / "modules.json"
        if modules.is_file():
            for module in _modules(modules):
                if str(module.get("type", "")).endswith(ST_STATIC):
                    return [*wanted, f"{module.get('path', '')}/*"]
        if not graphs:
            raise ManifestError(_nothing_to_run(model_dir, source_id, files))
    graph = choose_graph(graphs, model_file, precision, source_id)
    return [*wanted, graph, f"{graph}*", f"{graph.removesuffix('.onnx')}*data*"]


def graph_precision(name: str) -> str:
    """What a graph's file name says of its precision: ``int8``, ``fp16`` or ``fp32``."""
    stem = Path(name).stem.lower()
    if any(mark in stem for mark in _INT8_MARKS):
        return "int8"
    if any(mark in stem for mark in _FP16_MARKS):
        return "fp16"
    return "fp32"


def choose_graph(
    graphs: list[str],
    model_file: str | None,
    precision: str | None,
    source_id: str,
) -> str:
    """The graph to run: ``model_file``, else the one graph of ``precision``, else the float32
    default (``onnx/model.onnx``, else ``model.onnx``). ValueError naming the graphs there are
    when the choice is missing or ambiguous."""
    listing = f"{source_id} holds {graphs}"
    if model_file is not None:
        name = Path(model_file).as_posix()
        if name not in graphs:
            raise ValueError(f"model_file {model_file!r} is not a graph of {listing}")
        return name
    if precision is not None and precision != "fp32":
        matching = [g for g in graphs if graph_precision(g) == precision]
        if len(matching) != 1:
            which = "none" if not matching else f"several ({matching})"
            raise ValueError(
                f"precision {precision!r}: {which} of the graphs match; {listing}: pass "
                "model_file= to choose one"
            )
        return matching[0]
    default = next((g for g in DEFAULT_GRAPHS if g in graphs), None)
    if default is None:
        floats = [g for g in graphs if graph_precision(g) == "fp32"]
        if len(floats) != 1:
            raise ValueError(f"no default graph ({DEFAULT_GRAPHS}): {listing}; pass model_file=")
        default = floats[0]
    return default


def graph_manifest(
    model_dir: Path,
    graph: str,
    source_id: str,
    revision: str | None,
    spec: registry.ModelSpec | None = None,
) -> Manifest:
    """The manifest that runs ``graph`` of a sentence-transformers or ONNX repository folder
    as its own configuration says: pooling, normalization, max length, prompts, padding;
    ``spec`` (else the registry entry of ``source_id``) fills what it leaves out, and its
    explicit ``pooling`` and ``normalize`` (a custom model's, as fastembed applies them)
    replace the folder's."""
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelFileError(
            f"{source_id} has no tokenizer.json; slimembed needs a fast tokenizer file"
        )
    config_path = model_dir / "config.json"
    config: dict[str, Any] = read_json(config_path) if config_path.is_file() else {}
    st = read_sentence_transformers(model_dir)
    decoder = is_decoder(config)
    tokenizer_config = _tokenizer_config(model_dir)
    tokenizer = _core.Tokenizer(tokenizer_path, piece_cache=False)
    inputs, output, width = _graph_io(model_dir / graph)
    # The repository's own configuration first; a registry entry fills what it leaves out.
    spec = spec or registry.find(source_id)
    recipe = spec.recipe if spec else None
    pooling = (spec and spec.pooling) or (st and st.pooling) or (recipe and recipe.pooling)
    pooling = pooling or ("last_token" if decoder else None)
    if output in POOLED_OUTPUTS:
        pooling = POOLED  # the graph pools, as its Pooling module says
    if pooling is None:
        raise ManifestError(
            f"{source_id} says nothing of pooling (no sentence-transformers Pooling module "
            "in modules.json, no registry entry): export it with `slimembed export` and "
            "--pooling"
        )
    normalize = st.normalize if st else bool(recipe and recipe.normalize)
    if spec and spec.normalize is not None:
        normalize = spec.normalize
    dim = width or _config_width(config, source_id)
    if spec and spec.custom and spec.dim != dim:
        raise ManifestError(
            f"{source_id}: the registry entry {spec.name!r} says dim {spec.dim}, but the graph "
            f"{graph} gives {dim}"
        )
    padding_side = tokenizer_config.get("padding_side") or (recipe and recipe.padding_side)
    padding_side = padding_side or ("left" if decoder else "right")
    if st and st.prompts:
        query, document = _st_prompts(st)
    elif recipe:
        eos = _special_id(tokenizer, tokenizer_config, "eos_token")
        query, document = (
            _recipe_prompt(getattr(recipe, kind), tokenizer, eos) for kind in ("query", "document")
        )
    else:
        query, document = _st_prompts(st)
    max_length = (st and st.max_length) or (spec and spec.max_length) or None
    return Manifest(
        dim=dim,
        pooling=pooling,
        normalize=normalize,
        max_length=_max_length(max_length, tokenizer_config, config),
        padding_side=str(padding_side),
        pad_id=_pad_id(tokenizer, tokenizer_config, tokenizer_path),
        graph_file=graph,
        graph_inputs=inputs,
        graph_output=output,
        precision=graph_precision(graph),
        matryoshka_dims=tuple(d for d in (spec.matryoshka_dims if spec else ()) if d <= dim),
        query=query,
        document=document,
        source={
            "id": source_id,
            "revision": revision,
            "layout": "sentence-transformers" if st else "onnx",
            "registry": spec.name if spec else None,
            "files": [graph, "tokenizer.json"],
            "architecture": (config.get("architectures") or [config.get("model_type")])[0],
            "model_type": config.get("model_type"),
            "adopted_by": "slimembed",
        },
    )


def _recipe_prompt(recipe: registry.PromptRecipe, tokenizer: Any, eos: int | None) -> Prompt:
    """A registry prompt with its inserted tokens as this tokenizer's ids: each token text's
    first id, ``EOS`` as the end-of-sequence id (left out where the tokenizer appends it)."""
    ids: dict[str, list[int]] = {"prefix": [], "suffix": []}
    for where, tokens in (("prefix", recipe.prefix_tokens), ("suffix", recipe.suffix_tokens)):
        for token in tokens:
            if token == registry.EOS:
                if eos is None:
                    raise ManifestError("the recipe appends EOS but the tokenizer names none")
                probe = tokenizer.encode(["a"], add_special_tokens=True).row(0)
                if len(probe) and int(probe[-1]) == eos:
                    continue
                ids[where].append(eos)
            else:
                encoded = tokenizer.encode([token], add_special_tokens=False).row(0)
                if not len(encoded):
                    raise ManifestError(f"{token!r} encodes to no token")
                ids[where].append(int(encoded[0]))
    return Prompt(
        template=recipe.template,
        instruction=recipe.instruction,
        exclude_instruction=recipe.exclude_instruction,
        prefix_ids=tuple(ids["prefix"]),
        suffix_ids=tuple(ids["suffix"]),
    )


def _graph_io(path: Path) -> tuple[tuple[str, ...], str, int | None]:
    """The graph's inputs (KV-cache inputs as ``past_key_values``), the output to run (per-token
    hidden states, else an already pooled ``sentence_embedding``) and that output's width
    where the graph declares it: read from the file (``graph_io``), not from an ONNX Runtime
    session, which would load every weight once more than the backend does."""
    from slimembed.manifest import GRAPH_INPUTS, PAST

    graph_inputs, graph_outputs = declared_io(path)
    declared = [i.name for i in graph_inputs]
    inputs = tuple(dict.fromkeys(PAST if n.startswith(PAST + ".") else n for n in declared))
    unknown = [n for n in inputs if n not in GRAPH_INPUTS]
    if unknown or not {"input_ids", "attention_mask"} <= set(inputs):
        raise ModelFileError(
            f"{path}: the runtime cannot feed this graph: it declares inputs {declared}; "
            f"slimembed feeds {list(GRAPH_INPUTS[:-1])} and past_key_values.N.key/value"
        )
    outputs = {o.name: o for o in graph_outputs}
    output = next((n for n in (*HIDDEN_OUTPUTS, *POOLED_OUTPUTS) if n in outputs), None)
    if output is None:
        raise ModelFileError(
            f"{path}: no per-token output ({HIDDEN_OUTPUTS}) nor pooled one ({POOLED_OUTPUTS}) "
            f"among {sorted(outputs)}"
        )
    shape = outputs[output].shape
    rank = 2 if output in POOLED_OUTPUTS else 3
    width = shape[-1] if len(shape) == rank and isinstance(shape[-1], int) else None
    return inputs, output, width


def _config_width(config: dict[str, Any], source_id: str) -> int:
    for key in ("hidden_size", "d_model", "n_embd"):
        if isinstance(config.get(key), int):
            return int(config[key])
    raise ModelFileError(f"{source_id}: neither the graph nor config.json gives the hidden size")


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "tokenizer_config.json"
    data = read_json(path) if path.is_file() else {}
    return data if isinstance(data, dict) else {}


def _max_length(
    chosen: int | None, tokenizer_config: dict[str, Any], config: dict[str, Any]
) -> int | None:
    """``chosen`` (sentence-transformers' max_seq_length or the registry's), else the
    tokenizer's model_max_length, else the model's positions; never past the positions."""
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if not chosen:
        model_max = tokenizer_config.get("model_max_length")
        chosen = model_max if isinstance(model_max, int) and model_max < _NO_LIMIT else positions
    if isinstance(chosen, int) and isinstance(positions, int):
        chosen = min(chosen, positions)
    return int(chosen) if isinstance(chosen, int) and chosen > 0 else None


def _pad_id(tokenizer: Any, tokenizer_config: dict[str, Any], tokenizer_path: Path) -> int:
    """The padding id tokenizer.json sets, else the pad token's, else EOS's, else 0 (as
    transformers picks it; padded positions are masked, so only a graph's inputs see it)."""
    padding = read_json(tokenizer_path).get("padding")
    if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
        return int(padding["pad_id"])
    for key in ("pad_token", "eos_token"):
        found = _special_id(tokenizer, tokenizer_config, key)
        if found is not None:
            return found
    return 0


def _special_id(tokenizer: Any, tokenizer_config: dict[str, Any], key: str) -> int | None:
    """The id of the special token ``tokenizer_config.json`` names under ``key``."""
    token = tokenizer_config.get(key)
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found = tokenizer.token_to_id(token)
    return None if found is None else int(found)


def _st_prompts(st: SentenceTransformersConfig | None) -> tuple[Prompt, Prompt]:
    """sentence-transformers prompts are prefixes; as templates they precede ``{text}``."""
    prompts = st.prompts if st else {}
    exclude = bool(st and not st.include_prompt)
    chosen = []
    for prefix in (prompts.get("query"), prompts.get("document") or prompts.get("passage")):
        chosen.append(
            Prompt(template=prefix + "{text}", exclude_instruction=exclude) if prefix else Prompt()
        )
    return chosen[0], chosen[1]


def _adopt_static(
    model_dir: Path,
    kind: str,
    source_id: str,
    revision: str | None,
    precision: str | None,
    store: Path,
) -> tuple[Path, Manifest]:
    """A static model directory made from a model2vec or StaticEmbedding folder, once."""
    source = read_static(model_dir, kind)
    chosen = precision or source.precision
    out = store / f"static-{chosen}"
    if (out / MANIFEST_FILE).is_file():
        return out, Manifest.load(out)

    def write(staging: Path) -> Manifest:
        try:
            tensors = static_tensors(source, chosen)
        except ValueError as err:
            raise ManifestError(f"{source_id}: {err}") from err
        origin = {"id": source_id, "revision": revision, "adopted_by": "slimembed"}
        manifest = write_static_source(staging, source, tensors, chosen, origin)
        manifest.save(staging)
        return manifest

    made = write_model_dir(out, write)
    assert made is not None
    return out, made


def write_static_source(
    out: Path,
    source: StaticSource,
    tensors: dict[str, np.ndarray],
    precision: str,
    origin: dict[str, Any],
    *,
    max_length: int | None = None,
    graph_file: str | None = None,
) -> Manifest:
    """Write ``source``'s table (as ``tensors``) and tokenizer into ``out`` with the source
    library's rules; the manifest (not saved) records ``origin`` (id, revision, …) and the
    table's shape as its source."""
    rows = len(source.embeddings)
    return write_static_model(
        out,
        tensors,
        source.tokenizer_file,
        precision=precision,
        normalize=source.normalize,
        skip_id=source.skip_id,
        max_length=max_length,
        graph_file=graph_file,
        source={
            **origin,
            "layout": source.kind,
            "architecture": f"static ({source.kind})",
            "rows": rows,
            "vocabulary": len(source.mapping) if source.mapping is not None else rows,
        },
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so no reader sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _nothing_to_run(model_dir: Path, source_id: str, files: list[str]) -> str:
    if any(name in files for name in _WEIGHTS):
        return (
            f"{source_id} holds PyTorch weights but no ONNX graph, slimembed manifest or "
            f"static table: export it once with `slimembed export {source_id} DIR` (that "
            "needs the export extra, torch included), then load DIR"
        )
    return (
        f"{model_dir} is not a slimembed model directory nor a repository slimembed can load: "
        f"no {MANIFEST_FILE}, no ONNX graph (onnx/*.onnx or *.onnx), no model2vec or "
        "StaticEmbedding table"
    )
