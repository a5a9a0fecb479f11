"""Decoder embedder families: each tiny random model, exported with its family's recipe, against
a reference written from the family's original code (tests/families.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import transformers

from benchmarks.datasets import all_texts
from slimembed import Manifest, TextEmbedding, registry
from slimembed_export import ExportOptions, export_model
from tests import families, reference, tiny

MIN_COSINE = 0.99999
MAX_LENGTH = 128  # the `exported` fixture's
# The padding side each family's original code uses.
REFERENCE_SIDE = {"sgpt": "right", "gritlm": "right"}
FAMILIES = tuple(tiny.FAMILY_ARCH)


def _texts(family: str) -> list[str]:
    texts = reference.mixed_texts()
    # GritLM divides by the number of text tokens: the original gives NaN for an empty text.
    return [t for t in texts if t] if family == "gritlm" else texts


@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_its_original_code(
    family: str, exported: Callable[[str], Path], tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    source, model_dir = tiny_source(family), exported(family)
    manifest = Manifest.load(model_dir)
    recipe = registry.FAMILIES[family]
    assert (manifest.pooling, manifest.padding_side) == (recipe.pooling, recipe.padding_side)
    assert manifest.source["family"] == family
    assert manifest.source["attention"] == recipe.attention
    texts = _texts(family)
    side = REFERENCE_SIDE.get(family, "left")
    for kind in ("query", "document"):
        want = families.embed(family, source, texts, kind, MAX_LENGTH, side)
        # Distinct texts must give distinct vectors, or cosine parity would prove nothing.
        assert reference.cosine(want[:-2], want[1:-1]).min() < 0.99, kind
        for padding in ("left", "right"):
            variant = tmp_path / f"{kind}-{padding}"
            shutil.copytree(model_dir, variant)
            manifest.with_changes(padding_side=padding).save(variant)
            model = TextEmbedding(variant)
            batched = model.encode(texts, batch_size=len(texts), prompt=kind)
            single = model.encode(texts, batch_size=1, prompt=kind)
            assert reference.cosine(batched, want).min() >= MIN_COSINE, (kind, padding)
            assert reference.cosine(single, want).min() >= MIN_COSINE, (kind, padding)
        if kind == "document":  # fastembed's embed() embeds documents
            np.testing.assert_allclose(np.stack(list(model.embed(texts))), batched, atol=1e-6)


def test_queries_and_documents_differ_where_the_recipe_says(
    exported: Callable[[str], Path],
) -> None:
    """SGPT brackets, GritLM and Qwen3 instructions and e5's EOS all reach the model."""
    text = ["A man is playing a guitar."]
    for family in FAMILIES:
        model = TextEmbedding(exported(family))
        query = model.encode(text, prompt="query")
        document = model.encode(text, prompt="document")
        assert reference.cosine(query, document)[0] < 0.999, family
        other_task = model.encode(text, prompt="query", instruction="Classify the sentiment")
        if "{instruction}" in model.manifest.query.template:
            assert reference.cosine(query, other_task)[0] < 0.999, family


def test_gritlm_graph_is_bidirectional(
    exported: Callable[[str], Path], tiny_source: Callable[[str], Path], tmp_path: Path
) -> None:
    """The bidirectional export differs from a causal export of the same weights, and each
    matches the original code run with the same attention."""
    source = tiny_source("gritlm")
    causal_dir = tmp_path / "causal"
    export_model(
        str(source), causal_dir, ExportOptions(family="gritlm", attention="causal", max_length=128)
    )
    assert Manifest.load(causal_dir).source["attention"] == "causal"
    texts = _texts("gritlm")
    bidirectional = TextEmbedding(exported("gritlm")).encode(texts, prompt="document")
    causal = TextEmbedding(causal_dir).encode(texts, prompt="document")
    assert reference.cosine(bidirectional, causal).max() < 0.99

    # The original code with GritLM's attn="cccc" (causal).
    want = families.embed(
        "gritlm", source, texts, "document", MAX_LENGTH, "right", gritlm_attn="cccc"
    )
    assert reference.cosine(causal, want).min() >= MIN_COSINE


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_equal_the_original_on_all_shared_texts(
    family: str, exported: Callable[[str], Path], tiny_source: Callable[[str], Path]
) -> None:
    """Brackets, instruction prefixes (and their lengths), appended EOS and truncation: the
    Rust tokenizer's rows equal the original code's for every text in shared/data."""
    texts = list(all_texts())
    model = TextEmbedding(exported(family))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_source(family))
    for kind in ("query", "document"):
        want = families.tokenize(family, tokenizer, texts, kind, MAX_LENGTH)
        ours = model.tokenize(texts, prompt=kind)
        lengths = ours.lengths()
        np.testing.assert_array_equal(lengths, [len(r) for r in want.ids])
        rows = np.arange(len(texts))
        ids, mask, skip, _ = ours.pad(rows, padding_side="right", pad_id=-1, positions=False)
        flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in want.ids])
        np.testing.assert_array_equal(ids[mask == 1], flat, err_msg=f"{family} {kind}")
        np.testing.assert_array_equal(skip, want.skip, err_msg=f"{family} {kind}")
        assert lengths.max() == MAX_LENGTH, "truncation was not exercised"
