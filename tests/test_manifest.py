"""The model-directory manifest: round trip and clear refusals."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": 256.5}, "dim is 256.5"),
        ({"dim": True}, "dim is True"),
        ({"dim": 10**12}, "dim is 1000000000000"),
        ({"normalize": "false"}, "normalize is 'false'"),
        ({"skip_id": -1}, "skip_id is -1"),
        ({"tokenizer_file": 5}, "tokenizer_file is 5"),
        ({"max_length": 1.5}, "max_length is 1.5"),
        ({"max_length": 1e30}, "max_length is 1e"),
        ({"pad_id": 1e6}, "pad_id is 1000000.0"),
        ({"query": {"template": "{text}", "prefix_ids": ["5"]}}, "query.prefix_ids"),
        ({"query": "{text}"}, "query is '{text}'"),
        ({"graph_inputs": "input_ids"}, "graph_inputs is 'input_ids'"),
        ({"variants": {"int8": "model.int8.onnx"}}, "variants"),
        ({"tokenizer_file": "../tokenizer.json"}, "tokenizer_file is '../tokenizer.json'"),
        ({"graph_file": "/etc/passwd"}, "graph_file is '/etc/passwd'"),
    ],
)
def test_wrong_values_name_the_file_the_field_and_the_value(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    """Refused at load, as ManifestError naming the manifest's path, never a bare TypeError
    or a failure at the first embed."""
    with pytest.raises(ManifestError, match=re.escape(message)) as info:
        Manifest.load(_write(tmp_path, **changes))
    assert str(tmp_path / "slimembed.json") in str(info.value)


def test_files_must_stay_inside_the_model_directory(
    exported: Callable[[str], Path], tmp_path: Path
) -> None:
    """A symlink out of the directory is refused with the same message whether its target
    exists or not (no probing of the file system through a manifest)."""
    from slimembed import TextEmbedding

    model = tmp_path / "model"
    shutil.copytree(exported("bert"), model)
    outside = tmp_path / "elsewhere.json"
    shutil.copy(model / "tokenizer.json", outside)
    messages = []
    for target in (outside, tmp_path / "missing.json", Path("/etc/passwd")):
        link = model / "tokenizer.json"
        link.unlink()
        link.symlink_to(target)
        with pytest.raises(ManifestError, match="points outside the model directory") as info:
            TextEmbedding(model)
        messages.append(str(info.value))
    assert len(set(messages)) == 1
    # The same file linked from inside the directory loads.
    (model / "tokenizer.json").unlink()
    (model / "real.json").write_bytes(outside.read_bytes())
    (model / "tokenizer.json").symlink_to("real.json")
    TextEmbedding(model).encode(["fine"])


def test_token_ids_outside_the_vocabulary_are_refused_at_load(
    exported: Callable[[str], Path], variant: Callable[..., Path]
) -> None:
    from slimembed import TextEmbedding

    with pytest.raises(ManifestError, match="pad_id 1000000 is outside the vocabulary"):
        TextEmbedding(variant(exported("bert"), pad_id=1_000_000))


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True)
    | st.sampled_from(["", "..", "../x", "/etc/passwd", "model.onnx", "{text}", "mean", "int8"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(Manifest.__dataclass_fields__)), _JSON, min_size=1, max_size=3
    )
)
def test_fuzzed_manifests_load_consistent_or_fail_as_manifest_errors(
    changes: dict[str, object],
) -> None:
    """Any mix of wrong types, ranges and paths: either a manifest whose fields have their
    declared types, or a ManifestError naming the file — never another exception."""
    data = _manifest().to_dict()
    data.update(changes)
    try:
        manifest = Manifest.from_dict(data, origin="fuzzed/slimembed.json")
    except ManifestError as err:
        message = str(err)
    else:
        message = ""
        assert type(manifest.dim) is int
        assert type(manifest.normalize) is bool
        assert manifest.max_length is None or type(manifest.max_length) is int
        assert type(manifest.pad_id) is int
        for name in manifest.files().values():
            assert not Path(name).is_absolute()
            assert ".." not in Path(name).parts
    assert not message or message.startswith("fuzzed/slimembed.json: ")
