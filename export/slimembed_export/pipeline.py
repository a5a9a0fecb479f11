"""``export_model``: a Hugging Face embedder in, a checked slimembed model directory out.

Settings come from, in order: explicit options, the sentence-transformers configuration, the
registry entry for the source id, and defaults by architecture (encoders: mean pooling;
decoders: last-token pooling with left padding).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from slimembed import hub, registry
from slimembed.manifest import MANIFEST_FILE, Manifest, Prompt
from slimembed_export import static
from slimembed_export.errors import ExportError
from slimembed_export.graph import export_graph
from slimembed_export.source import is_decoder, read_config, read_sentence_transformers
from slimembed_export.verify import check_parity, check_static_parity

MIN_COSINE = 0.99999


@dataclass(frozen=True)
class ExportOptions:
    """Explicit choices; None means: take it from the source model's configuration."""

    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    padding_side: str | None = None
    query_template: str | None = None
    document_template: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    # None: external data only past protobuf's 2 GB limit.
    external_data: bool | None = None
    # fp32 for every model; fp16 and int8 (per-row scales) for static tables so far.
    precision: str = "fp32"
    min_cosine: float = MIN_COSINE


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
    model_dir = hub.resolve_source(source, revision=opts.revision)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        static_kind = static.detect(model_dir)
        if static_kind is not None:
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
        opts.precision,
        opts.max_length,
        opts.revision or _snapshot_revision(model_dir),
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
    if opts.precision != "fp32":
        raise ExportError(
            f"precision {opts.precision!r} is not available for transformer models yet (fp32 only)"
        )
    config = read_config(model_dir)
    decoder = is_decoder(config)
    st = read_sentence_transformers(model_dir)
    spec = registry.find(source)

    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=opts.trust_remote_code
    )
    if not tokenizer.is_fast:
        raise ExportError(f"{source} has no fast tokenizer (tokenizer.json); slimembed needs one")
    model = transformers.AutoModel.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=opts.trust_remote_code
    ).eval()

    pooling = opts.pooling or (st and st.pooling) or (spec and spec.pooling)
    pooling = pooling or ("last_token" if decoder else "mean")
    normalize = opts.normalize
    if normalize is None:
        normalize = st.normalize if st else (spec.normalize if spec else True)
    padding_side = opts.padding_side or (
        "left" if decoder else getattr(tokenizer, "padding_side", "right")
    )
    max_length = _max_length(opts, st, spec, tokenizer, config)
    prompts = st.prompts if st else {}
    query = Prompt(
        template=opts.query_template
        or _prefix_template(prompts.get("query"))
        or (spec.query_template if spec else "{text}"),
        exclude_instruction=bool(st and not st.include_prompt),
    )
    document = Prompt(
        template=opts.document_template
        or _prefix_template(prompts.get("document") or prompts.get("passage"))
        or (spec.document_template if spec else "{text}"),
        exclude_instruction=bool(st and not st.include_prompt),
    )
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    exporter = export_graph(
        model, decoder, staging / "model.onnx", pad_id, external_data=opts.external_data
    )
    (staging / "tokenizer.json").write_text(tokenizer.backend_tokenizer.to_str(), encoding="utf-8")
    manifest = Manifest(
        dim=int(config.get("hidden_size") or config.get("n_embd") or model.config.hidden_size),
        pooling=pooling,
        normalize=bool(normalize),
        max_length=max_length,
        padding_side=padding_side,
        pad_id=int(pad_id),
        query=query,
        document=document,
        source={
            "id": source,
            "revision": opts.revision or _snapshot_revision(model_dir),
            "architecture": (config.get("architectures") or [config.get("model_type")])[0],
            "model_type": config.get("model_type"),
            "exporter": exporter,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    )
    manifest.save(staging)
    figures = check_parity(staging, manifest, model, tokenizer, opts.min_cosine)
    return manifest.with_changes(parity=figures)


def _prefix_template(prompt: str | None) -> str | None:
    """sentence-transformers prompts are prefixes; as templates they precede {text}."""
    if not prompt:
        return None
    return prompt + "{text}"


def _max_length(
    opts: ExportOptions, st: Any, spec: Any, tokenizer: Any, config: dict[str, Any]
) -> int | None:
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    chosen = opts.max_length or (st and st.max_length) or (spec and spec.max_length)
    if not chosen:
        model_max = getattr(tokenizer, "model_max_length", None)
        chosen = model_max if model_max and model_max < 1_000_000 else positions
    if chosen and positions and chosen > positions:
        raise ExportError(f"max_length {chosen} exceeds the model's {positions} positions")
    return int(chosen) if chosen else None


def _snapshot_revision(model_dir: Path) -> str | None:
    """The commit of a hub-cache snapshot (…/snapshots/<commit>), None for a plain directory."""
    return model_dir.name if model_dir.parent.name == "snapshots" else None
