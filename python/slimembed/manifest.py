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
        _check(
            set(self.variants) <= set(PRECISIONS) and self.precision not in self.variants,
            "variants",
            sorted(self.variants),
            f"precisions among {PRECISIONS} other than the main graph's {self.precision!r}",
        )
        _check(self.kind in KINDS, "kind", self.kind, f"one of {KINDS}")
        _check(self.pooling in POOLING_MODES, "pooling", self.pooling, f"one of {POOLING_MODES}")
        _check(
            self.padding_side in PADDING_SIDES, "padding_side", self.padding_side, "left or right"
        )
        _check(self.precision in PRECISIONS, "precision", self.precision, f"one of {PRECISIONS}")
        _check(self.dim > 0, "dim", self.dim, "a positive integer")
        _check(
            self.max_length is None or self.max_length > 0,
            "max_length",
            self.max_length,
            "a positive integer or null",
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
                    prompt = dict(body[name])
                    for ids in ("prefix_ids", "suffix_ids"):
                        prompt[ids] = tuple(int(i) for i in prompt.get(ids, ()))
                    body[name] = Prompt(**prompt)
            if "variants" in body:
                body["variants"] = {
                    str(k): GraphVariant(**v) for k, v in dict(body["variants"]).items()
                }
            for name in ("graph_inputs", "matryoshka_dims"):
                if name in body:
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
