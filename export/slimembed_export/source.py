"""Reading a Hugging Face model directory: architecture, tokenizer and sentence-transformers
configuration (modules.json, pooling config, prompts, max length)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slimembed_export.errors import ExportError

# Model types whose base model is a causal decoder; everything else exports as an encoder.
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


@dataclass
class SentenceTransformersConfig:
    """What a sentence-transformers folder says about embedding with it."""

    pooling: str | None = None
    normalize: bool = False
    include_prompt: bool = True
    max_length: int | None = None
    prompts: dict[str, str] = field(default_factory=dict)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ExportError(f"cannot read {path}: {err}") from err


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{path} not found: {model_dir} is not a Hugging Face model directory")
    config: dict[str, Any] = read_json(path)
    return config


def is_decoder(config: dict[str, Any]) -> bool:
    if config.get("model_type") in DECODER_TYPES:
        return True
    return any(a.endswith("ForCausalLM") for a in config.get("architectures") or ())


def read_sentence_transformers(model_dir: Path) -> SentenceTransformersConfig | None:
    """None when the directory is not a sentence-transformers model."""
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return None
    st = SentenceTransformersConfig()
    for module in read_json(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in ST_KNOWN_MODULES:
            raise ExportError(
                f"{modules_path}: module {module.get('type')!r} is not supported yet "
                f"(supported: {ST_KNOWN_MODULES})"
            )
        if kind == "Normalize":
            st.normalize = True
        if kind == "Pooling":
            pooling_config = read_json(model_dir / module.get("path", "") / "config.json")
            st.pooling = _st_pooling(pooling_config, modules_path)
            st.include_prompt = bool(pooling_config.get("include_prompt", True))
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        st.max_length = read_json(bert_config).get("max_seq_length")
    st_config = model_dir / "config_sentence_transformers.json"
    if st_config.is_file():
        st.prompts = dict(read_json(st_config).get("prompts") or {})
    return st


def _st_pooling(config: dict[str, Any], origin: Path) -> str:
    unsupported = [k for k in ST_UNSUPPORTED if config.get(k)]
    if unsupported:
        raise ExportError(f"{origin}: pooling {unsupported} is not supported")
    modes = [mode for key, mode in ST_POOLING.items() if config.get(key)]
    if len(modes) != 1:
        raise ExportError(f"{origin}: expected exactly one pooling mode, found {modes or 'none'}")
    return modes[0]
