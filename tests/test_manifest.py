"""The model-directory manifest: round trip and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slimembed import Manifest, ManifestError, Prompt


def _manifest() -> Manifest:
    return Manifest(
        dim=8,
        pooling="last_token",
        normalize=True,
        max_length=32,
        padding_side="left",
        pad_id=0,
        matryoshka_dims=(4, 8),
        query=Prompt(template="Instruct: {instruction}\nQuery:{text}", instruction="Find it"),
        document=Prompt(suffix_ids=(2,)),
        parity={"batch_min_cosine": 1.0},
    )


def test_round_trip(tmp_path: Path) -> None:
    manifest = _manifest()
    manifest.save(tmp_path)
    assert Manifest.load(tmp_path) == manifest


def test_prompt_split_fills_instruction() -> None:
    prompt = _manifest().query
    assert prompt.split() == ("Instruct: Find it\nQuery:", "")
    assert prompt.split("Other") == ("Instruct: Other\nQuery:", "")
    with pytest.raises(ValueError, match="needs an instruction"):
        Prompt(template="{instruction} {text}").split()


def _write(tmp_path: Path, **changes: object) -> Path:
    data = _manifest().to_dict()
    data.update(changes)
    (tmp_path / "slimembed.json").write_text(json.dumps(data))
    return tmp_path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"format": "other"}, "not a slimembed manifest"),
        ({"pooling": "max"}, "pooling is 'max'"),
        ({"padding_side": "up"}, "padding_side"),
        ({"graph_inputs": ["input_ids"]}, "graph_inputs"),
        ({"matryoshka_dims": [16]}, "matryoshka_dims"),
        ({"surprise": 1}, "unknown fields"),
        ({"query": {"template": "no text here"}}, "query.template"),
        ({"dim": 0}, "dim is 0"),
    ],
)
def test_bad_manifests_are_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ManifestError, match=message):
        Manifest.load(_write(tmp_path, **changes))


def test_missing_and_corrupt_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a slimembed model directory") as info:
        Manifest.load(tmp_path)
    assert isinstance(info.value, OSError)
    (tmp_path / "slimembed.json").write_text("{oops")
    with pytest.raises(ManifestError, match="unreadable"):
        Manifest.load(tmp_path)
