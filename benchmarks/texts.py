"""Texts to benchmark on: the shared evaluation data, a user's file, or a seeded generator.

A source is named by a string, as on the command line:

- ``sts``: STS-B English sentences (short; test, then dev, distinct, in file order);
- ``scifact``: SciFact abstracts, ``title + " " + text`` (long: most over 200 tokens);
- ``mixed``: every distinct text of shared/data (six STS files in five languages, SciFact);
- ``generated``: seeded random English-like text of varied length (no data needed);
- a path to a ``.txt`` (one text per line), ``.jsonl`` (the ``text`` field, else the first
  string field) or ``.parquet`` file (the ``text`` column, else the first string column;
  needs pyarrow).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from benchmarks.datasets import all_texts, scifact, sts

# Frequent English words: the generator's vocabulary, so it runs without any data file.
WORDS = """the of and to in is was for that with as on by at from his her an which are be this
had not or have it one they their were all but been has more when there who will also after
into other first new would its time two only over some city school many such these years can
most may then later part where made world under during war since both state between used known
through while being film team season three river series name number game year could national
university group area people about system church music family house water light model data
cell study patient effect result protein gene disease risk level increase analysis method
treatment clinical response expression human control factor energy market price small large
high low early long short child woman man dog guitar plays playing running street road car
""".split()  # noqa: SIM905 (a word list reads better as text)


def generated(count: int, seed: int = 0, mean_words: int = 24) -> list[str]:
    """``count`` texts of random words; lengths spread around ``mean_words`` (1 to 8x it)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        n = max(1, int(rng.lognormvariate(0, 0.7) * mean_words))
        words = rng.choices(WORDS, k=n)
        texts.append(" ".join(words).capitalize() + ".")
    return texts


def english_sentences() -> list[str]:
    seen: dict[str, None] = {}
    for name in ("en-test", "en-dev"):
        pairs = sts(name)
        for text in pairs.sentences1 + pairs.sentences2:
            seen.setdefault(text)
    return list(seen)


SOURCES: dict[str, Callable[[], list[str]]] = {
    "sts": english_sentences,
    "scifact": lambda: list(scifact().docs),
    "mixed": lambda: list(all_texts()),
}


def _first_string(row: dict[str, object], field: str) -> str:
    if isinstance(row.get(field), str):
        return str(row[field])
    for value in row.values():
        if isinstance(value, str):
            return value
    raise ValueError(f"no string field in {row!r}")


def from_file(path: Path, field: str = "text") -> list[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            return [_first_string(json.loads(line), field) for line in fh if line.strip()]
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ValueError(f"reading {path} needs pyarrow: pip install pyarrow") from err
        table = pq.read_table(path)
        names = [field] if field in table.column_names else table.column_names
        for name in names:
            column = table.column(name).to_pylist()
            if column and all(isinstance(v, str) for v in column):
                return [str(v) for v in column]
        raise ValueError(f"{path} has no string column")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load(source: str, count: int | None = None, seed: int = 0) -> list[str]:
    """The first ``count`` texts of ``source`` (all of them when None)."""
    if source == "generated":
        return generated(count or 1000, seed)
    if source in SOURCES:
        texts = SOURCES[source]()
    elif Path(source).is_file():
        texts = from_file(Path(source))
    else:
        raise ValueError(
            f"unknown text source {source!r}: use {', '.join([*SOURCES, 'generated'])} "
            "or a .txt/.jsonl/.parquet file"
        )
    if not texts:
        raise ValueError(f"text source {source!r} holds no texts")
    return texts if count is None else texts[:count]


def of_length(tokenizer_file: Path, tokens: int, count: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``tokens`` tokens each (no special tokens) under the tokenizer in
    ``tokenizer_file``: cut from SciFact abstracts, else from generated text, then cut by token
    count and decoded back to text."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    try:
        pool = " ".join(scifact().docs)
    except FileNotFoundError:
        pool = " ".join(generated(4000, seed, mean_words=60))
    words = pool.split()
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        # Words are one token or more each, so `tokens` words always hold enough tokens.
        start = rng.randrange(0, max(1, len(words) - tokens))
        chunk = " ".join(words[start : start + tokens])
        ids = tok.encode(chunk, add_special_tokens=False).ids[:tokens]
        out.append(tok.decode(ids))
    return out
