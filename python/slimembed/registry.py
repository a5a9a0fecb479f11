"""Known models as data: one frozen ModelSpec per model, read by export and listed by the API.

A spec records how the source model embeds (pooling, normalization, prompts, padding side, max
length); the export pipeline turns it into a manifest. Models not listed here export with
explicit flags or from their sentence-transformers configuration.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from slimembed.errors import UnknownModelError


@dataclass(frozen=True)
class ModelSpec:
    """One known embedding model."""

    name: str
    source: str
    dim: int
    pooling: str
    normalize: bool
    max_length: int
    padding_side: str = "right"
    query_template: str = "{text}"
    document_template: str = "{text}"
    license: str = ""
    description: str = ""
    matryoshka_dims: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; its name and its source id both find it afterwards."""
    if spec.name in _MODELS and _MODELS[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered with other settings")
    _MODELS[spec.name] = spec
    return spec


def find(name: str) -> ModelSpec | None:
    """The spec registered under ``name`` or with ``name`` as its source id."""
    if name in _MODELS:
        return _MODELS[name]
    return next((s for s in _MODELS.values() if s.source == name), None)


def get(name: str) -> ModelSpec:
    spec = find(name)
    if spec is None:
        raise UnknownModelError(f"unknown model {name!r}; known models: {sorted(_MODELS)}")
    return spec


def all_specs() -> list[ModelSpec]:
    return list(_MODELS.values())


for _spec in (
    ModelSpec(
        name="all-MiniLM-L6-v2",
        source="sentence-transformers/all-MiniLM-L6-v2",
        dim=384,
        pooling="mean",
        normalize=True,
        max_length=256,
        license="apache-2.0",
        description="Small English sentence encoder (BERT, 6 layers)",
    ),
    ModelSpec(
        name="bge-small-en-v1.5",
        source="BAAI/bge-small-en-v1.5",
        dim=384,
        pooling="cls",
        normalize=True,
        max_length=512,
        query_template="Represent this sentence for searching relevant passages: {text}",
        license="mit",
        description="Small English retrieval encoder (BERT, 12 layers)",
    ),
):
    register(_spec)
