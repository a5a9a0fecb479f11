"""The evaluation sets in ``shared/data`` beside the checkout (STS-B in five languages, BEIR
SciFact)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STS_FILES = ("en-test", "en-dev", "de-test", "zh-test", "ja-test", "ru-test")


def data_dir() -> Path:
    """``SLIMEMBED_SHARED_DATA`` when set; else ``shared/data`` beside the checkout this package
    lives in (a checkout, or an editable install of it); else, for an installed copy, the first
    ``shared/data`` in the current directory or one of its parents (so a run from inside a
    checkout, whose data sits beside it, finds it)."""
    explicit = os.environ.get("SLIMEMBED_SHARED_DATA")
    if explicit:
        path = Path(explicit)
    else:
        beside = Path(__file__).resolve().parents[2] / "shared" / "data"
        found = (f / "shared" / "data" for f in (Path.cwd(), *Path.cwd().parents))
        path = beside if beside.is_dir() else next((p for p in found if p.is_dir()), beside)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} not found: the evaluation data lives in shared/data beside the checkout; "
            "set SLIMEMBED_SHARED_DATA to its path"
        )
    return path


def _jsonl(path: Path) -> Iterator[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True)
class StsPairs:
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]


@cache
def sts(name: str = "en-test") -> StsPairs:
    rows = list(_jsonl(data_dir() / "stsb" / f"{name}.jsonl"))
    return StsPairs(
        [str(r["sentence1"]) for r in rows],
        [str(r["sentence2"]) for r in rows],
        [float(r["score"]) for r in rows],  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class Retrieval:
    doc_ids: list[str]
    docs: list[str]
    query_ids: list[str]
    queries: list[str]
    qrels: dict[str, dict[str, int]]


@cache
def scifact(split: str = "test") -> Retrieval:
    """SciFact with documents as ``title + " " + text`` and only the queries judged in ``split``."""
    root = data_dir() / "scifact"
    corpus = list(_jsonl(root / "corpus.jsonl"))
    qrels: dict[str, dict[str, int]] = {}
    with (root / "qrels" / f"{split}.tsv").open(encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, score = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(score)
    queries = [q for q in _jsonl(root / "queries.jsonl") if str(q["_id"]) in qrels]
    return Retrieval(
        doc_ids=[str(d["_id"]) for d in corpus],
        docs=[f"{d['title']} {d['text']}".strip() for d in corpus],
        query_ids=[str(q["_id"]) for q in queries],
        queries=[str(q["text"]) for q in queries],
        qrels=qrels,
    )


@cache
def all_texts() -> tuple[str, ...]:
    """Every distinct text in shared/data: STS sentences (six files) and SciFact documents
    and queries, in a fixed order."""
    seen: dict[str, None] = {}
    for name in STS_FILES:
        pairs = sts(name)
        for text in pairs.sentences1 + pairs.sentences2:
            seen.setdefault(text)
    sf = scifact("test")
    for text in sf.docs + sf.queries:
        seen.setdefault(text)
    return tuple(seen)
