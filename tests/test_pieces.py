"""The piece cache: a text's ids, assembled from its pieces' cached ids, equal the `tokenizers`
library's encoding of the whole text, for every tokenizer layout the cache accepts, on every
text in shared/data and on texts built to break the cut (odd whitespace, combining marks,
contractions, special-token literals)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from benchmarks.datasets import all_texts
from slimembed import _core
from tests.tiny import _bpe, _sentencepiece_bpe, minilm_source

# Qwen2's split pattern (Qwen3 keeps it); Llama 3's differs only in \p{N}{1,3}.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EDGE_TEXTS = [
    "",
    " ",
    "   ",
    "a",
    " leading space",
    "trailing space ",
    "two  spaces and   three",
    "tab\tand\nnewline \n and\r\nCRLF",
    "newline then space\n next",
    "no\u00a0break\u3000ideographic\u2003em",
    "next line\u0085control",
    "combining \u0301accent after a space, and e\u0301 in a word",
    "diaeresis \u00a8 alone, Caf\u00e9 cr\u00e8me",
    "it 's what they 've said ' quoted ' 'll",
    "numbers 1 22 333 4444 55555 and 3.14 , 1,000",
    "\u4e2d\u6587 \u65e5\u672c\u8a9e text",
    "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442",
    "emoji \U0001f600 \U0001f44d\U0001f3fd ok",
    "specials <s> </s> <unk> [CLS] [SEP] [UNK] [MASK] <|endoftext|>",
    'punctuation ... !? -- (a) [b] {c} "d"',
    "x" * 300 + " " + "y " * 50,
]


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the test extra's package {package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def _qwen_split() -> Tokenizer:
    split = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")
    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return _bpe(["<|endoftext|>"], pre_tokenizers.Sequence([split, level]))


def _minilm() -> Tokenizer:
    return Tokenizer.from_file(str(minilm_source() / "tokenizer.json"))


def _minilm_nfkc() -> Tokenizer:
    """MiniLM's WordPiece behind other character-local normalizers and Whitespace."""
    data = json.loads(_minilm().to_str())
    data["normalizer"] = {
        "type": "Sequence",
        "normalizers": [{"type": "NFKD"}, {"type": "StripAccents"}, {"type": "Lowercase"}],
    }
    data["pre_tokenizer"] = {"type": "Whitespace"}
    return Tokenizer.from_str(json.dumps(data))


LAYOUTS: dict[str, tuple[Callable[[], Tokenizer], str | None]] = {
    "bert-wordpiece": (_minilm, "drop"),
    "nfkd-whitespace": (_minilm_nfkc, "drop"),
    "llama2-legacy": (
        lambda: Tokenizer.from_file(
            str(_package_file("wordllama", "tokenizers", "l2_supercat_tokenizer_config.json"))
        ),
        "attach-stripped",
    ),
    "gpt2-byte-level": (lambda: _bpe(["<|endoftext|>"]), "attach"),
    "qwen2-split-byte-level": (_qwen_split, "attach"),
    "metaspace": (_sentencepiece_bpe, "attach"),
    # A Precompiled normalizer may rewrite across characters: encoded whole.
    "unigram-precompiled": (
        lambda: Tokenizer.from_file(str(_package_file("static_model", "model", "tokenizer.json"))),
        None,
    ),
}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return EDGE_TEXTS + list(all_texts())


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_cached_ids_equal_whole_text_encoding(layout: str, texts: list[str]) -> None:
    build, rule = LAYOUTS[layout]
    reference = build()
    # slimembed ignores the file's own padding and truncation (see rust/src/tokenize.rs).
    reference.no_padding()
    reference.no_truncation()
    ours = _core.Tokenizer.from_json(reference.to_str())
    assert ours.piece_rule == rule
    expected = [e.ids for e in reference.encode_batch(texts, add_special_tokens=False)]
    for attempt in ("cold", "warm"):
        encoded = ours.encode(texts, add_special_tokens=False)
        wrong = [i for i, ids in enumerate(expected) if encoded.row(i).tolist() != ids]
        assert not wrong, f"{attempt} cache, {len(wrong)} texts differ, first {texts[wrong[0]]!r}"
    # Truncation cuts the assembled ids as it cuts the whole encoding.
    cut = ours.encode(texts[:200], add_special_tokens=False, max_length=5)
    assert all(cut.row(i).tolist() == expected[i][:5] for i in range(200))


def test_piece_cache_can_be_switched_off() -> None:
    path = minilm_source() / "tokenizer.json"
    plain = _core.Tokenizer(path, piece_cache=False)
    assert plain.piece_rule is None
    cached = _core.Tokenizer(path)
    texts = list(all_texts())[:500]
    a = plain.encode(texts, add_special_tokens=False)
    b = cached.encode(texts, add_special_tokens=False)
    assert all(a.row(i).tolist() == b.row(i).tolist() for i in range(len(texts)))


@pytest.fixture(scope="module")
def long_texts() -> list[str]:
    """Long texts cut from shared/data at many offsets and lengths around the lengths at which
    slimembed tokenizes only a head of a text (4096 bytes, then 8 per kept token), and texts
    whose head yields too few tokens (whitespace runs, one long word, no spaces)."""
    big = " ".join(all_texts())
    lengths = [4095, 4097, 4103, 4500, 8191, 8193, 8300, 12000, 40000]
    cut = [big[start : start + n] for n in lengths for start in range(0, 300_000, 43_210)]
    return [
        *cut,
        big[:300_000],
        " " * 9000 + big[:20000],
        "\n \t" * 3000 + big[:20000],
        "x" * 10_000 + " " + big[:5000],
        "y" * 50_000,
        "\u4e2d\u6587\u65e5\u672c\u8a9e" * 4000,
        "e\u0301" * 3000 + " " + big[:9000],
        ("word " * 900)[:-1] + "wordy" * 300 + " " + big[:9000],
    ]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_long_texts_cut_before_tokenizing_keep_the_same_ids(
    layout: str, long_texts: list[str]
) -> None:
    """A long text is tokenized from a head only as long as its kept tokens need (bounded
    memory); the ids kept are those of the whole text, cut to max_length."""
    reference = LAYOUTS[layout][0]()
    reference.no_padding()
    for cache in (True, False):
        ours = _core.Tokenizer.from_json(reference.to_str(), piece_cache=cache)
        for max_length, specials in ((128, False), (256, True), (1024, True)):
            reference.enable_truncation(max_length)
            expected = [
                e.ids for e in reference.encode_batch(long_texts, add_special_tokens=specials)
            ]
            encoded = ours.encode(long_texts, add_special_tokens=specials, max_length=max_length)
            wrong = [i for i, ids in enumerate(expected) if encoded.row(i).tolist() != ids]
            assert not wrong, (
                f"cache={cache} max_length={max_length}: {len(wrong)} texts differ, "
                f"first {long_texts[wrong[0]][:80]!r} ({len(long_texts[wrong[0]])} chars)"
            )
