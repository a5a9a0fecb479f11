"""``export_model``: a Hugging Face embedder in, a checked slimembed model directory out.

Settings come from, in order: explicit options, the registry's family recipe (for a registered
name or source id, or the family named in the options), the sentence-transformers
configuration, and defaults by architecture (encoders: mean pooling; decoders: last-token
pooling with left padding). torch and transformers are imported only for transformer models.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimembed import hub, registry
from slimembed.errors import QuantizeError
from slimembed.manifest import (
    MANIFEST_FILE,
    PRECISIONS,
    RERANK_INPUTS,
    Manifest,
    Prompt,
)
from slimembed_export import static
from slimembed_export.errors import ExportError
from slimembed_export.source import is_decoder, read_config, read_sentence_transformers
from slimembed_export.verify import check_static_parity

# SGPT's cross-encoder prompt (github.com/Muennighoff/sgpt, crossencoder/beir/sgptce.py), the
# default of `--task rerank`; the query's tokens follow it and are scored.
SGPT_RERANK_TEMPLATE = (
    "Documents are searched to find matches with the same content.\n"
    'The document "{document}" is a good search result for "'
)
MIN_COSINE = 0.99999
MAX_SCORE_DIFF = 1e-4


@dataclass(frozen=True)
class ExportOptions:
    """Explicit choices; None means: take it from the source model's configuration."""

    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    padding_side: str | None = None
    query_template: str | None = None
    document_template: str | None = None
    # A registry family (slimembed.registry.FAMILIES) for models the registry does not list.
    family: str | None = None
    # "causal" or "bidirectional"; None: the source config's is_causal, else the family's.
    attention: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    # None: external data only past protobuf's 2 GB limit.
    external_data: bool | None = None
    # Fused graphs: decoders written into ONNX Runtime's fused operators
    # (slimembed_export.decoder), encoders' attention into MultiHeadAttention (fusion).
    fuse: bool = True
    # Static tables: one of fp32, fp16, int8 (per-row scales). Transformers: the fp32 graph
    # plus int8 and/or fp16 graphs beside it (("int8",), ("int8", "fp16")). A single name is
    # accepted too.
    precision: tuple[str, ...] | str = ("fp32",)
    min_cosine: float = MIN_COSINE
    # "embed", or "rerank": a causal LM scoring (query, document) pairs (SGPT cross-encoder).
    task: str = "embed"
    # rerank: the prompt before the query, with {document}; None: SGPT's.
    rerank_template: str | None = None
    # rerank: the largest |score difference| to the PyTorch formula the export accepts.
    max_score_diff: float = MAX_SCORE_DIFF


def resolve_source(source: str | Path, *, revision: str | None = None) -> Path:
    """The Hugging Face model directory to export: a local path, a registry name (its source
    repository) or a hub id, downloaded whole into the cache."""
    spec = None if Path(source).expanduser().exists() else registry.find(str(source))
    return hub.snapshot(spec.source if spec else source, revision=revision)


def export_model(
    source: str, out_dir: str | Path, options: ExportOptions | None = None
) -> Manifest:
    """Export ``source`` (a local model directory or hub id) to ``out_dir`` and verify it.

    Nothing is left at ``out_dir`` when export or its parity check fails.
    """
    opts = options or ExportOptions()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ExportError(
            f"{out} exists and is not a slimembed model directory; refusing to overwrite it"
        )
    model_dir = resolve_source(source, revision=opts.revision)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        static_kind = static.detect(model_dir)
        if opts.task not in ("embed", "rerank"):
            raise ExportError(f"task must be 'embed' or 'rerank', got {opts.task!r}")
        if opts.task == "rerank":
            manifest = _export_rerank(source, model_dir, staging, opts)
        elif static_kind is not None:
            manifest = _export_static(source, model_dir, static_kind, staging, opts)
        else:
            manifest = _export_transformer(source, model_dir, staging, opts)
        manifest.save(staging)
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _export_static(
    source: str, model_dir: Path, kind: str, staging: Path, opts: ExportOptions
) -> Manifest:
    manifest, static_source, tensors = static.export_static(
        model_dir,
        kind,
        staging,
        source,
        _static_precision(opts.precision),
        opts.max_length,
        opts.revision or hub.snapshot_revision(model_dir),
    )
    if opts.normalize is not None:
        manifest = manifest.with_changes(normalize=opts.normalize)
        static_source.normalize = opts.normalize
    manifest.save(staging)
    figures = check_static_parity(staging, manifest, static_source, tensors, opts.min_cosine)
    return manifest.with_changes(parity=figures)


def _export_transformer(
    source: str, model_dir: Path, staging: Path, opts: ExportOptions
) -> Manifest:
    import torch
    import transformers

    from slimembed_export.graph import export_graph
    from slimembed_export.verify import check_parity

    precisions = _precisions(opts.precision)
    config = read_config(model_dir)
    decoder = is_decoder(config)
    st = read_sentence_transformers(model_dir)
    spec = registry.find(source)
    family = registry.family(opts.family) if opts.family else (spec.recipe if spec else None)

    _check_remote_code(config, source, opts.trust_remote_code)
    tokenizer = _fast_tokenizer(source, model_dir, opts)
    model = transformers.AutoModel.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=opts.trust_remote_code
    ).eval()

    # Explicit options, then the family recipe (curated), then the sentence-transformers
    # configuration, then defaults by architecture.
    pooling = opts.pooling or (family and family.pooling) or (st and st.pooling)
    pooling = pooling or ("last_token" if decoder else "mean")
    normalize = opts.normalize
    if normalize is None:
        normalize = family.normalize if family else (st.normalize if st else True)
    padding_side = opts.padding_side or (family and family.padding_side)
    padding_side = padding_side or (
        "left" if decoder else getattr(tokenizer, "padding_side", "right")
    )
    attention = _attention(opts, config, family, decoder)
    max_length = _max_length(opts, st, spec, tokenizer, config)
    query, document = _prompts(opts, st, family, tokenizer)
    pad_id = _pad_id(tokenizer)

    exporter = export_graph(
        model,
        decoder,
        staging / "model.onnx",
        pad_id,
        external_data=opts.external_data,
        bidirectional=decoder and attention == "bidirectional",
        max_length=max_length,
        fuse=opts.fuse,
    )
    (staging / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    dim = int(config.get("hidden_size") or config.get("n_embd") or model.config.hidden_size)
    manifest = Manifest(
        dim=dim,
        pooling=pooling,
        normalize=bool(normalize),
        max_length=max_length,
        padding_side=padding_side,
        pad_id=int(pad_id),
        matryoshka_dims=_matryoshka(spec, dim),
        query=query,
        document=document,
        source={
            **_source_info(source, model_dir, config, exporter, opts),
            "family": family.name if family else None,
            "attention": attention,
        },
    )
    manifest.save(staging)
    figures = check_parity(
        staging,
        manifest,
        model,
        tokenizer,
        opts.min_cosine,
        bidirectional=attention == "bidirectional",
    )
    manifest = manifest.with_changes(parity=figures)
    if set(precisions) - {"fp32"}:
        from slimembed.optimize.quantize import release_freed_memory, variants_in_fresh_process

        # The PyTorch weights are not needed past the parity check, and quantizing a large
        # model holds the FP32 graph's session and its calibration statistics: that runs in
        # a fresh process, beside nothing the export held.
        del model
        release_freed_memory()  # transformers' modules hold reference cycles
        manifest.save(staging)
        try:
            manifest = variants_in_fresh_process(staging, precisions, _command(source, opts))
        except QuantizeError as err:  # an export's failures are ExportErrors to its callers
            raise ExportError(str(err)) from err
    return manifest


def _precisions(precision: Sequence[str] | str) -> tuple[str, ...]:
    """("int8", "fp16") -> ("int8", "fp16"), each checked, repeats dropped; a single name
    ``"int8"`` is one precision."""
    names = (precision,) if isinstance(precision, str) else tuple(precision)
    chosen = tuple(dict.fromkeys(p.strip() for p in names if p.strip()))
    unknown = [p for p in chosen if p not in PRECISIONS]
    if unknown or not chosen:
        shown = names[0] if len(names) == 1 else ",".join(names)
        raise ExportError(f"precision {shown!r}: expected some of {PRECISIONS}")
    return chosen


def _static_precision(precision: Sequence[str] | str) -> str:
    """A static table has one precision."""
    chosen = _precisions(precision)
    if len(chosen) != 1:
        raise ExportError(f"a static table has one precision, got {', '.join(chosen)}")
    return chosen[0]


def _command(source: str, opts: ExportOptions) -> str:
    """The export command line that gives these options (OUT_DIR left symbolic)."""
    import shlex

    flags = []
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        if f.name == "precision":
            value = _precisions(value)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "precision":
            for precision in _precisions(value):
                flags += [flag, precision]
        elif isinstance(value, bool):
            flags.append(flag if value else "--no-" + f.name.replace("_", "-"))
        else:
            flags += [flag, str(value)]
    return shlex.join(["slimembed", "export", source, "OUT_DIR", *flags])


def _export_rerank(source: str, model_dir: Path, staging: Path, opts: ExportOptions) -> Manifest:
    import torch
    import transformers

    from slimembed_export.graph import export_rerank_graph
    from slimembed_export.verify import check_rerank_parity

    precisions = _precisions(opts.precision)
    if precisions != ("fp32",):
        raise ExportError(
            f"precision {','.join(precisions)!r} is not available for rerank graphs yet"
        )
    config = read_config(model_dir)
    if not is_decoder(config):
        raise ExportError(
            f"{source} is not a causal LM ({config.get('model_type')!r}); --task rerank scores "
            "tokens with a decoder's LM head"
        )
    _check_remote_code(config, source, opts.trust_remote_code)
    tokenizer = _fast_tokenizer(source, model_dir, opts)
    lm = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=opts.trust_remote_code
    ).eval()
    template = opts.rerank_template or SGPT_RERANK_TEMPLATE
    if "{document}" not in template:
        raise ExportError(f"rerank template {template!r} has no {{document}}")
    pad_id = _pad_id(tokenizer)
    exporter = export_rerank_graph(
        lm, staging / "model.onnx", pad_id, external_data=opts.external_data
    )
    (staging / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    manifest = Manifest(
        dim=int(config.get("hidden_size") or config.get("n_embd") or lm.config.hidden_size),
        pooling="last_token",
        normalize=False,
        max_length=_max_length(opts, None, None, tokenizer, config),
        padding_side=opts.padding_side or "left",
        pad_id=int(pad_id),
        add_special_tokens=False,
        graph_inputs=RERANK_INPUTS,
        graph_output="token_logprobs",
        task="rerank",
        rerank_template=template,
        source=_source_info(source, model_dir, config, exporter, opts),
    )
    manifest.save(staging)
    figures = check_rerank_parity(staging, manifest, lm, tokenizer, opts.max_score_diff)
    return manifest.with_changes(parity=figures)


def _fast_tokenizer(source: str, model_dir: Path, opts: ExportOptions) -> Any:
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=opts.trust_remote_code
    )
    if not tokenizer.is_fast:
        raise ExportError(f"{source} has no fast tokenizer (tokenizer.json); slimembed needs one")
    return tokenizer


def _pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS (decoders rarely have a pad token), else 0."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _source_info(
    source: str, model_dir: Path, config: dict[str, Any], exporter: str, opts: ExportOptions
) -> dict[str, Any]:
    """Where a transformer export came from, for the manifest's ``source``."""
    import torch
    import transformers

    return {
        "id": source,
        "revision": opts.revision or hub.snapshot_revision(model_dir),
        "architecture": (config.get("architectures") or [config.get("model_type")])[0],
        "model_type": config.get("model_type"),
        "exporter": exporter,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _check_remote_code(config: dict[str, Any], source: str, trust: bool) -> None:
    """A model whose architecture only its own Python code defines runs that code only when
    asked; one transformers knows (gte-Qwen2's Qwen2) runs on transformers' code."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.get("auto_map") and not trust and config.get("model_type") not in CONFIG_MAPPING:
        raise ExportError(
            f"{source} needs its own modeling code (auto_map in config.json, model type "
            f"{config.get('model_type')!r} unknown to transformers); review it, then pass "
            "--trust-remote-code (trust_remote_code=True) to run it"
        )


def _matryoshka(spec: registry.ModelSpec | None, dim: int) -> tuple[int, ...]:
    """The registry's Matryoshka sizes that fit this model (all of them for the real one)."""
    if spec is None or not spec.matryoshka_dims:
        return ()
    return (*(d for d in spec.matryoshka_dims if d < dim), dim)


def _attention(
    opts: ExportOptions, config: dict[str, Any], family: registry.Family | None, decoder: bool
) -> str:
    """Causal or bidirectional: as told, else as the source config says (``is_causal``, which
    gte-Qwen2's reference code honours), else the family's, else causal for decoders."""
    if not decoder:
        if opts.attention == "causal":
            raise ExportError("encoders attend bidirectionally; --attention causal needs a decoder")
        return "bidirectional"
    if opts.attention:
        return opts.attention
    if isinstance(config.get("is_causal"), bool):
        return "causal" if config["is_causal"] else "bidirectional"
    return family.attention if family else "causal"


def _prompts(
    opts: ExportOptions, st: Any, family: registry.Family | None, tokenizer: Any
) -> tuple[Prompt, Prompt]:
    st_prompts = st.prompts if st else {}
    exclude = bool(st and not st.include_prompt)
    chosen = []
    for kind, template, st_prompt in (
        ("query", opts.query_template, st_prompts.get("query")),
        (
            "document",
            opts.document_template,
            st_prompts.get("document") or st_prompts.get("passage"),
        ),
    ):
        recipe: registry.PromptRecipe = getattr(family, kind) if family else registry.PromptRecipe()
        if template is None and family is None:
            template = _prefix_template(st_prompt)
        if template is not None:
            # An explicit or sentence-transformers template keeps the recipe's inserted ids.
            recipe = dataclasses.replace(
                recipe, template=template, exclude_instruction=recipe.exclude_instruction or exclude
            )
        chosen.append(
            Prompt(
                template=recipe.template,
                instruction=recipe.instruction,
                exclude_instruction=recipe.exclude_instruction,
                prefix_ids=_token_ids(recipe.prefix_tokens, tokenizer),
                suffix_ids=_token_ids(recipe.suffix_tokens, tokenizer, kind),
            )
        )
    return chosen[0], chosen[1]


def _token_ids(tokens: tuple[str, ...], tokenizer: Any, kind: str = "") -> tuple[int, ...]:
    """Ids of a recipe's inserted tokens: each text's first id, or the EOS id.

    An EOS suffix is dropped where the tokenizer's post-processor appends EOS already (newer
    e5-mistral tokenizers do), so it is never doubled."""
    ids = []
    for token in tokens:
        if token == registry.EOS:
            eos = tokenizer.eos_token_id
            if eos is None:
                raise ExportError("the recipe appends EOS but the tokenizer has no eos_token")
            probe = tokenizer("a", add_special_tokens=True)["input_ids"]
            if probe and probe[-1] == eos:
                continue
            ids.append(int(eos))
        else:
            encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
            if not encoded:
                raise ExportError(f"{token!r} encodes to no token ({kind} prompt)")
            ids.append(int(encoded[0]))
    return tuple(ids)


def _prefix_template(prompt: str | None) -> str | None:
    """sentence-transformers prompts are prefixes; as templates they precede {text}."""
    if not prompt:
        return None
    return prompt + "{text}"


def _max_length(
    opts: ExportOptions, st: Any, spec: Any, tokenizer: Any, config: dict[str, Any]
) -> int | None:
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    chosen = opts.max_length or (spec and spec.max_length) or (st and st.max_length)
    if not chosen:
        model_max = getattr(tokenizer, "model_max_length", None)
        chosen = model_max if model_max and model_max < 1_000_000 else positions
    if chosen and positions and chosen > positions:
        raise ExportError(f"max_length {chosen} exceeds the model's {positions} positions")
    return int(chosen) if chosen else None
