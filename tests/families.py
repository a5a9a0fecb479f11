"""Reference embedders written from each family's original code, in PyTorch, for the tests.

Each function follows its source line by line (tokenizer calls, inserted ids, padding side,
attention, pooling), so slimembed's exported graph and Rust pooling are checked against the
formulas the models were trained and evaluated with, not against slimembed's own logic:
- SGPT: github.com/Muennighoff/sgpt, README "Asymmetric Semantic Search BE" (tokenize_with_specb,
  position-weighted mean); truncation leaves room for the two brackets.
- GritLM: github.com/ContextualAI/gritlm, gritlm/gritlm.py (GritLM.encode with attn="bbcc",
  gritlm_instruction, pooling="mean").
- Qwen3-Embedding: its model card / README (get_detailed_instruct, last_token_pool, left padding).
- gte-Qwen2: its model card (get_detailed_instruct with a space, last_token_pool); the model's
  config.json says is_causal=false, which transformers honours.
- e5-mistral: its model card (max_length - 1, EOS appended, tokenizer.pad, last_token_pool).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import transformers

TASK = "Given a web search query, retrieve relevant passages that answer the query"


@dataclass
class Batch:
    """Token ids as the original code feeds them, before padding, and pooling skips."""

    ids: list[list[int]]
    skip: list[int]


def gritlm_instruction(instruction: str) -> str:
    return "<|user|>\n" + instruction + "\n<|embed|>\n" if instruction else "<|embed|>\n"


def tokenize(
    family: str,
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: list[str],
    kind: str,
    max_length: int,
    task: str = TASK,
) -> Batch:
    """The ids each family's original code builds for ``texts`` as ``kind`` (query/document)."""
    query = kind == "query"
    if family == "sgpt":
        brackets = ("[", "]") if query else ("{", "}")
        bos, eos = (tokenizer.encode(b, add_special_tokens=False)[0] for b in brackets)
        rows = tokenizer(texts, padding=False, truncation=True, max_length=max_length - 2)
        return Batch([[bos, *seq, eos] for seq in rows["input_ids"]], [0] * len(texts))
    if family == "gritlm":
        instruction = gritlm_instruction(task if query else "")
        rows = tokenizer(
            [instruction + t for t in texts],
            truncation=True,
            max_length=max_length,
            add_special_tokens=True,
        )["input_ids"]
        n = len(
            tokenizer(instruction, truncation=True, max_length=max_length, add_special_tokens=True)[
                "input_ids"
            ]
        )
        return Batch([list(r) for r in rows], [n] * len(texts))
    if family in ("qwen3-embedding", "gte-qwen2"):
        space = "" if family == "qwen3-embedding" else " "
        dressed = [f"Instruct: {task}\nQuery:{space}{t}" for t in texts] if query else texts
        rows = tokenizer(dressed, truncation=True, max_length=max_length)["input_ids"]
        return Batch([list(r) for r in rows], [0] * len(texts))
    if family == "e5-mistral":
        dressed = [f"Instruct: {task}\nQuery: {t}" for t in texts] if query else texts
        rows = tokenizer(
            dressed, max_length=max_length - 1, return_attention_mask=False, truncation=True
        )["input_ids"]
        return Batch([[*r, tokenizer.eos_token_id] for r in rows], [0] * len(texts))
    raise ValueError(family)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Qwen3-Embedding / gte-Qwen2 / e5-mistral's last_token_pool, as published."""
    left_padding = mask[:, -1].sum() == mask.shape[0]
    if left_padding:
        return hidden[:, -1]
    lengths = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0]), lengths]


def embed(
    family: str,
    source: Path,
    texts: list[str],
    kind: str,
    max_length: int,
    padding_side: str,
    task: str = TASK,
    gritlm_attn: str = "bbcc",
) -> np.ndarray:
    """Embed ``texts`` in one padded batch the way the family's original code does.

    ``gritlm_attn`` is GritLM's ``attn`` argument: "bbcc" embeds bidirectionally, "cccc"
    causally.
    """
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, padding_side=padding_side)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModel.from_pretrained(source, dtype=torch.float32).eval()
    if family == "gritlm" and gritlm_attn[:2] == "bb":
        model.config.is_causal = False  # GritLM passes is_causal=False when embedding
    batch = tokenize(family, tokenizer, texts, kind, max_length, task)
    padded = tokenizer.pad(
        {"input_ids": batch.ids}, padding=True, return_attention_mask=True, return_tensors="pt"
    )
    ids, mask = padded["input_ids"], padded["attention_mask"]
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.double()
    if family == "sgpt":
        weights = torch.arange(1, hidden.shape[1] + 1, dtype=torch.float64)[None, :, None]
        m = mask[:, :, None].double()
        return ((hidden * m * weights).sum(1) / (m * weights).sum(1)).numpy()
    if family == "gritlm":
        pool_mask = mask.clone()
        pool_mask[:, : batch.skip[0]] = 0  # right padding: the instruction leads every row
        m = pool_mask[:, :, None].double()
        vectors = (hidden * m).sum(1) / m.sum(1)
    else:
        vectors = last_token_pool(hidden, mask)
    return torch.nn.functional.normalize(vectors, dim=-1).numpy()
