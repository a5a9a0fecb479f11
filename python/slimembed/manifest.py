"""The model-directory contract: ``slimembed.json`` beside ``model.onnx`` and ``tokenizer.json``.

Export writes it, the runtime reads it; this module is the only reader and writer of the
format, which README.md documents field by field. Version 1 is the only version so far: an
unknown version is refused rather than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from slimembed import _core
from slimembed.errors import ManifestError

MANIFEST_FILE = "slimembed.json"
FORMAT = "slimembed-model"
VERSION = 1
POOLING_MODES: tuple[str, ...] = tuple(_core.POOLING_MODES)
# pooling "none": the graph pools itself and gives one (batch, dim) vector per text (a
# sentence-transformers export whose only output is sentence_embedding); only normalization
# and Matryoshka truncation are left to do.
POOLED = "none"
PADDING_SIDES = ("left", "right")
PRECISIONS = ("fp32", "fp16", "int8")
KINDS = ("transformer", "static")
# Graph inputs the runtime knows how to feed; every graph needs the first two. "past_key_values"
# stands for a causal LM's KV-cache inputs (past_key_values.N.key/value), fed empty.
GRAPH_INPUTS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "position_ids",
    "past_key_values",
)
PAST = "past_key_values"
# embed: hidden states to pool; rerank: a causal LM's log-probabilities of chosen tokens.
TASKS = ("embed", "rerank")
# A rerank graph's extra inputs: which positions to score and the tokens expected there.
RERANK_INPUTS = ("input_ids", "attention_mask", "target_positions", "target_ids")


@dataclass(frozen=True)
class Prompt:
    """How a text is dressed before it is embedded (as a query or as a document).

    ``template`` contains ``{text}`` and optionally ``{instruction}``; ``instruction`` is the
    default for the latter. With ``exclude_instruction`` the part of the template before
    ``{text}`` is tokenized on its own and left out of pooling (GritLM). ``prefix_ids`` and
    ``suffix_ids`` are token ids inserted around the text's tokens after tokenization (SGPT's
    brackets, an appended EOS); truncation leaves room for them.
    """

    template: str = "{text}"
    instruction: str | None = None
    exclude_instruction: bool = False
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()

    def split(self, instruction: str | None = None) -> tuple[str, str]:
        """The template's text before and after ``{text}``, with the instruction filled in."""
        chosen = self.instruction if instruction is None else instruction
        if "{instruction}" in self.template and chosen is None:
            raise ValueError("this prompt needs an instruction and the model has no default one")
        head, _, tail = self.template.partition("{text}")
        return head.replace("{instruction}", chosen or ""), tail

    def plan(self, instruction: str | None = None) -> PromptPlan:
        """What this prompt does to every text, with ``instruction`` (else the default)."""
        head, tail = self.split(instruction)
        return PromptPlan(
            head=head,
            tail=tail,
            prefix_ids=self.prefix_ids,
            suffix_ids=self.suffix_ids,
            exclude_instruction=self.exclude_instruction and bool(head),
        )


@dataclass(frozen=True)
class PromptPlan:
    """A prompt resolved for one call: the text before (``head``) and after (``tail``) each
    text, the ids inserted around its tokens, and whether ``head`` is tokenized on its own and
    left out of pooling (``exclude_instruction``, GritLM). ``PromptPlan()`` is the raw text.
    """

    head: str = ""
    tail: str = ""
    prefix_ids: tuple[int, ...] = ()
    suffix_ids: tuple[int, ...] = ()
    exclude_instruction: bool = False

    def wrap(self, texts: list[str]) -> list[str]:
        """``texts`` with the head and tail around them (the head kept apart when excluded)."""
        head = "" if self.exclude_instruction else self.head
        if not (head or self.tail):
            return texts
        return [head + t + self.tail for t in texts]


RAW = PromptPlan()


@dataclass(frozen=True)
class GraphVariant:
    """The same graph in another precision, beside the main one (``export --precision``).

    ``fidelity`` holds what export measured against the main graph: cosine on a probe set
    (mean, min), the batch-invariance check, the file's size and the command that made it.
    """

    graph_file: str
    fidelity: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to reproduce the source model's embeddings."""

    dim: int
    pooling: str
    normalize: bool
    max_length: int | None
    padding_side: str
    pad_id: int
    kind: str = "transformer"
    graph_file: str | None = "model.onnx"
    graph_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    graph_output: str = "last_hidden_state"
    precision: str = "fp32"
    tokenizer_file: str = "tokenizer.json"
    add_special_tokens: bool = True
    # Static models: the table (embeddings.safetensors) and a token id dropped before pooling.
    table_file: str | None = None
    skip_id: int | None = None
    matryoshka_dims: tuple[int, ...] = ()
    query: Prompt = field(default_factory=Prompt)
    document: Prompt = field(default_factory=Prompt)
    task: str = "embed"
    # rerank: the text before the query; {document} marks where the document goes.
    rerank_template: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    # Other precisions of ``graph_file`` in the directory, by precision ("int8", "fp16").
    variants: dict[str, GraphVariant] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_types()
        _check(
            set(self.variants) <= set(PRECISIONS) and self.precision not in self.variants,
            "variants",
            sorted(self.variants),
            f"precisions among {PRECISIONS} other than the main graph's {self.precision!r}",
        )
        _check(self.kind in KINDS, "kind", self.kind, f"one of {KINDS}")
        _check(
            self.pooling in POOLING_MODES or (self.pooling == POOLED and self.task == "embed"),
            "pooling",
            self.pooling,
            f"one of {POOLING_MODES}, or {POOLED!r} for a graph that pools",
        )
        _check(
            self.padding_side in PADDING_SIDES, "padding_side", self.padding_side, "left or right"
        )
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(0 < self.dim <= MAX_DIM, "dim", self.dim, f"an integer from 1 to {MAX_DIM}")
        _check(
            self.max_length is None or 0 < self.max_length <= MAX_LENGTH,
            "max_length",
            self.max_length,
            f"an integer from 1 to {MAX_LENGTH}, or null",
        )
        _check(0 <= self.pad_id <= MAX_ID, "pad_id", self.pad_id, f"a token id (0 to {MAX_ID})")
        _check(
            self.skip_id is None or 0 <= self.skip_id <= MAX_ID,
            "skip_id",
            self.skip_id,
            f"a token id (0 to {MAX_ID}) or null",
        )
        _check(self.task in TASKS, "task", self.task, f"one of {TASKS}")
        if self.task == "rerank":
            _check(
                set(self.graph_inputs) == set(RERANK_INPUTS),
                "graph_inputs",
                self.graph_inputs,
                f"{RERANK_INPUTS} for a rerank graph",
            )
            _check(
                self.rerank_template is not None and "{document}" in self.rerank_template,
                "rerank_template",
                self.rerank_template,
                "a template with {document}",
            )
        else:
            _check(
                {"input_ids", "attention_mask"} <= set(self.graph_inputs)
                and set(self.graph_inputs) <= set(GRAPH_INPUTS),
                "graph_inputs",
                self.graph_inputs,
                f"input_ids and attention_mask, optionally {GRAPH_INPUTS[2:]}",
            )
        _check(
            all(0 < d <= self.dim for d in self.matryoshka_dims),
            "matryoshka_dims",
            self.matryoshka_dims,
            f"dimensions between 1 and {self.dim}",
        )
        for name in ("query", "document"):
            prompt = getattr(self, name)
            _check(
                "{text}" in prompt.template,
                f"{name}.template",
                prompt.template,
                "a template with {text}",
            )
            if self.kind == "static":
                _check(
                    not (prompt.exclude_instruction or prompt.prefix_ids or prompt.suffix_ids),
                    f"{name}",
                    prompt,
                    "a text template only (static models insert no ids)",
                )
        if self.kind == "transformer":
            _check(self.graph_file is not None, "graph_file", self.graph_file, "a file name")
        if self.kind == "static":
            _check(self.table_file is not None, "table_file", self.table_file, "a file name")
            _check(self.pooling == "mean", "pooling", self.pooling, "mean for a static model")

    def _check_types(self) -> None:
        """Every field of its declared JSON type (``true`` is no integer, ``1.5`` no id), and
        every file name relative and inside the model directory."""
        for name, kinds in _FIELD_TYPES.items():
            value = getattr(self, name)
            _check(_is(value, kinds), name, value, _describe(kinds))
        for name in ("graph_inputs", "matryoshka_dims"):
            value = getattr(self, name)
            item = str if name == "graph_inputs" else int
            ok = isinstance(value, tuple) and all(_is(v, (item,)) for v in value)
            _check(ok, name, value, f"a list of {_describe((item,))}s")
        for name in ("query", "document"):
            prompt = getattr(self, name)
            _check(isinstance(prompt, Prompt), name, prompt, "a prompt object")
            for key, kinds in _PROMPT_TYPES.items():
                value = getattr(prompt, key)
                _check(_is(value, kinds), f"{name}.{key}", value, _describe(kinds))
            for key in ("prefix_ids", "suffix_ids"):
                ids = getattr(prompt, key)
                ok = isinstance(ids, tuple) and all(
                    _is(i, (int,)) and 0 <= i <= MAX_ID for i in ids
                )
                _check(ok, f"{name}.{key}", ids, "a list of token ids")
        for key, variant in self.variants.items():
            _check(
                isinstance(variant, GraphVariant) and _is(variant.graph_file, (str,)),
                f"variants.{key}",
                variant,
                "a graph variant with a graph_file",
            )
        for name, value in self.files().items():
            _check(_safe_name(value), name, value, "a relative path inside the model directory")

    def files(self) -> dict[str, str]:
        """Every file this manifest names (field -> relative path)."""
        named = {
            "graph_file": self.graph_file,
            "tokenizer_file": self.tokenizer_file,
            "table_file": self.table_file,
            **{f"variants.{k}.graph_file": v.graph_file for k, v in self.variants.items()},
        }
        return {k: v for k, v in named.items() if isinstance(v, str)}

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        return {"format": FORMAT, "version": VERSION, **body}

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    def with_changes(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, origin: str = "manifest") -> Manifest:
        if data.get("format") != FORMAT:
            raise ManifestError(
                f"{origin}: not a slimembed manifest (format is {data.get('format')!r})"
            )
        if data.get("version") != VERSION:
            raise ManifestError(
                f"{origin}: manifest version {data.get('version')!r} is not supported by this "
                f"slimembed (it reads version {VERSION}); upgrade slimembed or re-export the model"
            )
        known = {f.name for f in fields(cls)}
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ManifestError(f"{origin}: unknown fields {unknown}")
        try:
            for name in ("query", "document"):
                if name in body:
                    if not isinstance(body[name], dict):
                        raise ValueError(f"{name} is {body[name]!r}; expected a prompt object")
                    prompt = dict(body[name])
                    for ids in ("prefix_ids", "suffix_ids"):
                        if isinstance(prompt.get(ids), list):
                            prompt[ids] = tuple(prompt[ids])
                    body[name] = Prompt(**prompt)
            if "variants" in body:
                if not isinstance(body["variants"], dict) or not all(
                    isinstance(v, dict) for v in body["variants"].values()
                ):
                    raise ValueError(f"variants is {body['variants']!r}; expected an object")
                body["variants"] = {str(k): GraphVariant(**v) for k, v in body["variants"].items()}
            for name in ("graph_inputs", "matryoshka_dims"):
                if isinstance(body.get(name), list):
                    body[name] = tuple(body[name])
            return cls(**body)
        except (TypeError, ValueError) as err:
            raise ManifestError(f"{origin}: {err}") from err

    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {directory} is not a slimembed model directory "
                "(make one with `slimembed export SOURCE OUT_DIR`)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path} is unreadable: {err}") from err
        if not isinstance(data, dict):
            raise ManifestError(f"{path} does not hold a JSON object")
        return cls.from_dict(data, origin=str(path))


def _check(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} is {value!r}; expected {expected}")


# Bounds past which a value is a broken manifest, not a model: 2^20 dimensions or positions,
# token ids below 2^31 (ONNX Runtime's int64 ids must index an embedding table).
MAX_DIM = 1 << 20
MAX_LENGTH = 1 << 20
MAX_ID = (1 << 31) - 1
_NONE = type(None)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dim": (int,),
    "pooling": (str,),
    "normalize": (bool,),
    "max_length": (int, _NONE),
    "padding_side": (str,),
    "pad_id": (int,),
    "kind": (str,),
    "graph_file": (str, _NONE),
    "graph_output": (str,),
    "precision": (str,),
    "tokenizer_file": (str,),
    "add_special_tokens": (bool,),
    "table_file": (str, _NONE),
    "skip_id": (int, _NONE),
    "task": (str,),
    "rerank_template": (str, _NONE),
    "source": (dict,),
    "parity": (dict,),
    "variants": (dict,),
}
_PROMPT_TYPES: dict[str, tuple[type, ...]] = {
    "template": (str,),
    "instruction": (str, _NONE),
    "exclude_instruction": (bool,),
}


def _is(value: object, kinds: tuple[type, ...]) -> bool:
    """``isinstance`` where a bool is no integer (JSON ``true`` is not 1)."""
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _describe(kinds: tuple[type, ...]) -> str:
    words = {int: "an integer", str: "a string", bool: "true or false", dict: "an object"}
    return " or ".join(words.get(k, "null") for k in kinds)


def _safe_name(name: str) -> bool:
    """A relative path that stays inside the directory it is read from."""
    path = Path(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name


def model_file(model_dir: Path, name: str, field_name: str = "file") -> Path:
    """``model_dir / name``, refused with ManifestError unless it resolves inside
    ``model_dir``; in a Hugging Face cache snapshot (``models--org--name/snapshots/REV``), a
    symlink into that repository's ``blobs/`` is the one allowed way out."""
    # hub imports this module; the cache layout is hub's to know, so it is asked at call time.
    from slimembed.hub import snapshot_repo

    path = model_dir / name
    real = path.resolve()
    roots = [model_dir.resolve()]
    if snapshot_repo(model_dir) is not None:
        roots.append((model_dir.parent.parent / "blobs").resolve())
    if not _safe_name(name) or not any(real.is_relative_to(root) for root in roots):
        raise ManifestError(
            f"{model_dir / MANIFEST_FILE}: {field_name} {name!r} points outside the model "
            "directory; a manifest may only name files inside it"
        )
    return path
