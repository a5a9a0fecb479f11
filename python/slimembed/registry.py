"""Known models as data: family recipes, and one frozen ModelSpec per model.

A *family* records how a kind of embedder turns text into a vector (pooling, normalization,
padding side, attention, the query and document prompts, token ids inserted around the text);
each rule cites the original code it reproduces. A *model spec* names a model (its hub source,
dims, max length, license) and its family. ``slimembed export NAME`` turns a spec into a
manifest; models not listed here export with explicit flags (``--family`` picks a recipe), from
their sentence-transformers configuration, or by architecture defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from slimembed.errors import UnknownModelError
from slimembed.manifest import PADDING_SIDES, POOLING_MODES

# The task most retrieval embedders were tuned with; the default query instruction.
WEB_SEARCH_TASK = "Given a web search query, retrieve relevant passages that answer the query"
# In prefix_tokens / suffix_tokens: the tokenizer's end-of-sequence token.
EOS = "<eos>"
ATTENTIONS = ("causal", "bidirectional")


@dataclass(frozen=True)
class PromptRecipe:
    """A prompt as a family defines it; export resolves the token texts to ids.

    ``prefix_tokens`` and ``suffix_tokens`` are token texts whose ids are inserted right before
    and after the text's tokens after tokenization (each is encoded alone and its first id
    taken, as SGPT does for its brackets); ``EOS`` stands for the tokenizer's end-of-sequence
    token. The other fields are those of the manifest's ``Prompt``.
    """

    template: str = "{text}"
    instruction: str | None = None
    exclude_instruction: bool = False
    prefix_tokens: tuple[str, ...] = ()
    suffix_tokens: tuple[str, ...] = ()


@dataclass(frozen=True)
class Family:
    """How one family of embedders embeds, and where the rules come from."""

    name: str
    pooling: str
    normalize: bool
    padding_side: str
    attention: str
    query: PromptRecipe = field(default_factory=PromptRecipe)
    document: PromptRecipe = field(default_factory=PromptRecipe)
    reference: str = ""

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be left or right, got {self.padding_side!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        for prompt in (self.query, self.document):
            if "{text}" not in prompt.template:
                raise ValueError(f"prompt template {prompt.template!r} has no {{text}}")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("encoder-mean", "mean", True, "right", "bidirectional"),
        Family("encoder-cls", "cls", True, "right", "bidirectional"),
        Family(
            # Muennighoff/sgpt README, tokenize_with_specb: bracket ids inserted after
            # tokenization; weighted mean with weights 1..n over real tokens; right padding.
            "sgpt",
            "weighted_mean",
            False,
            "right",
            "causal",
            query=PromptRecipe(prefix_tokens=("[",), suffix_tokens=("]",)),
            document=PromptRecipe(prefix_tokens=("{",), suffix_tokens=("}",)),
            reference="github.com/Muennighoff/sgpt (biencoder, specb)",
        ),
        Family(
            # ContextualAI/gritlm gritlm.py: gritlm_instruction(); BOS added by the tokenizer;
            # instruction tokens (BOS included) masked out of the mean; padding_side='right';
            # attn='bbcc' -> bidirectional attention when embedding.
            "gritlm",
            "mean",
            True,
            "right",
            "bidirectional",
            query=PromptRecipe(
                template="<|user|>\n{instruction}\n<|embed|>\n{text}",
                instruction=WEB_SEARCH_TASK,
                exclude_instruction=True,
            ),
            document=PromptRecipe(template="<|embed|>\n{text}", exclude_instruction=True),
            reference="github.com/ContextualAI/gritlm (gritlm/gritlm.py)",
        ),
        Family(
            # QwenLM/Qwen3-Embedding: get_detailed_instruct (no space after "Query:"),
            # last_token_pool, left padding; the tokenizer appends <|endoftext|> itself.
            "qwen3-embedding",
            "last_token",
            True,
            "left",
            "causal",
            query=PromptRecipe(
                template="Instruct: {instruction}\nQuery:{text}", instruction=WEB_SEARCH_TASK
            ),
            reference="github.com/QwenLM/Qwen3-Embedding (evaluation, README usage)",
        ),
        Family(
            # Alibaba-NLP/gte-Qwen2-*-instruct model card: "Instruct: {task}\nQuery: {text}",
            # last_token_pool; config.json has is_causal=false (bidirectional), which export
            # reads from the source config when present.
            "gte-qwen2",
            "last_token",
            True,
            "left",
            "bidirectional",
            query=PromptRecipe(
                template="Instruct: {instruction}\nQuery: {text}", instruction=WEB_SEARCH_TASK
            ),
            reference="huggingface.co/Alibaba-NLP/gte-Qwen2-7B-instruct (model card)",
        ),
        Family(
            # intfloat/e5-mistral-7b-instruct model card: truncate at max_length - 1, append
            # EOS to every text, last_token_pool, normalize.
            "e5-mistral",
            "last_token",
            True,
            "left",
            "causal",
            query=PromptRecipe(
                template="Instruct: {instruction}\nQuery: {text}",
                instruction=WEB_SEARCH_TASK,
                suffix_tokens=(EOS,),
            ),
            document=PromptRecipe(suffix_tokens=(EOS,)),
            reference="huggingface.co/intfloat/e5-mistral-7b-instruct (model card)",
        ),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    """One known embedding model: its source, its family's recipe and its own limits.

    The optional fields replace the family's rules where a model has its own (bge's query
    prefix, a custom model's pooling).
    """

    name: str
    source: str
    family: str
    dim: int
    max_length: int
    license: str = ""
    description: str = ""
    matryoshka_dims: tuple[int, ...] = ()
    query: PromptRecipe | None = None
    document: PromptRecipe | None = None
    pooling: str | None = None
    normalize: bool | None = None
    padding_side: str | None = None
    attention: str | None = None
    # Hub repositories that ship this model as ONNX graphs, tried in order when the model is
    # asked for by name or by its source id and no export of it is here (the source itself
    # is tried too where it ships an onnx/ folder).
    onnx_sources: tuple[str, ...] = ()
    # fastembed's fields: the graph to run in the repository (None: its default graph, as
    # repos.choose_graph picks it), files fetched beside it, the download's size (FP32, about).
    model_file: str | None = None
    additional_files: tuple[str, ...] = ()
    size_in_gb: float = 0.0
    # Registered by add_custom_model: listed under its own name, as fastembed lists it.
    custom: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"model {self.name!r}: unknown family {self.family!r}; known: {sorted(FAMILIES)}"
            )
        if self.dim < 1 or self.max_length < 1:
            raise ValueError(f"model {self.name!r}: dim and max_length must be positive")
        self.recipe  # noqa: B018 -- validates the overrides now, not at export

    @property
    def recipe(self) -> Family:
        """The family's rules with this model's overrides applied."""
        base = FAMILIES[self.family]
        return replace(
            base,
            pooling=self.pooling or base.pooling,
            normalize=base.normalize if self.normalize is None else self.normalize,
            padding_side=self.padding_side or base.padding_side,
            attention=self.attention or base.attention,
            query=self.query or base.query,
            document=self.document or base.document,
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as fastembed's ``list_supported_models`` lists a model (``model``: the hub
        id, or a custom model's name; ``sources``, ``model_file``, ``additional_files``,
        ``size_in_GB``, ``dim``, ``tasks``, ``description``, ``license``), and slimembed's
        recipe beside it (``name``, ``family``, ``pooling``, prompts, …)."""
        recipe = self.recipe
        hub_id = (self.onnx_sources or (self.source,))[0]
        return {
            "model": self.name if self.custom else self.source,
            "sources": {"hf": hub_id, "url": None},
            "model_file": self.model_file or ("onnx/model.onnx" if self.onnx_sources else None),
            "additional_files": list(self.additional_files),
            "size_in_GB": self.size_in_gb,
            "tasks": {},
            "name": self.name,
            "source": self.source,
            "family": self.family,
            "dim": self.dim,
            "max_length": self.max_length,
            "pooling": recipe.pooling,
            "normalize": recipe.normalize,
            "padding_side": recipe.padding_side,
            "attention": recipe.attention,
            "query": asdict(recipe.query),
            "document": asdict(recipe.document),
            "matryoshka_dims": list(self.matryoshka_dims),
            "onnx_sources": list(self.onnx_sources),
            "license": self.license,
            "description": self.description,
        }


_MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add a spec; its name and its source id both find it afterwards."""
    if spec.name in _MODELS and _MODELS[spec.name] != spec:
        raise ValueError(f"model {spec.name!r} is already registered with other settings")
    _MODELS[spec.name] = spec
    return spec


def find(name: str) -> ModelSpec | None:
    """The spec registered under ``name``, or with ``name`` as its source id or one of its
    ONNX sources."""
    if name in _MODELS:
        return _MODELS[name]
    return next((s for s in _MODELS.values() if name == s.source or name in s.onnx_sources), None)


def get(name: str) -> ModelSpec:
    spec = find(name)
    if spec is None:
        raise UnknownModelError(f"unknown model {name!r}; known models: {sorted(_MODELS)}")
    return spec


def all_specs() -> list[ModelSpec]:
    return list(_MODELS.values())


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise UnknownModelError(f"unknown family {name!r}; known families: {sorted(FAMILIES)}")
    return FAMILIES[name]


def _matryoshka(dim: int) -> tuple[int, ...]:
    """Qwen3-Embedding's documented output sizes: powers of two from 32, and the full size."""
    dims = [d for d in (32, 64, 128, 256, 512, 1024, 2048) if d < dim]
    return (*dims, dim)


# size_in_gb: the FP32 weights, about (parameters x 4 bytes), as fastembed lists a download.
for _spec in (
    ModelSpec(
        "all-MiniLM-L6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        "encoder-mean",
        384,
        256,
        "apache-2.0",
        "Small English sentence encoder (BERT, 6 layers)",
        model_file="onnx/model.onnx",
        size_in_gb=0.09,
    ),
    ModelSpec(
        "bge-small-en-v1.5",
        "BAAI/bge-small-en-v1.5",
        "encoder-cls",
        384,
        512,
        "mit",
        "Small English retrieval encoder (BERT, 12 layers)",
        query=PromptRecipe("Represent this sentence for searching relevant passages: {text}"),
        model_file="onnx/model.onnx",
        size_in_gb=0.13,
    ),
    ModelSpec(
        "SGPT-125M-weightedmean-msmarco-specb-bitfit",
        "Muennighoff/SGPT-125M-weightedmean-msmarco-specb-bitfit",
        "sgpt",
        768,
        300,
        "mit",
        "SGPT bi-encoder for asymmetric search (GPT-Neo 125M)",
        size_in_gb=0.5,
    ),
    ModelSpec(
        "SGPT-5.8B-weightedmean-msmarco-specb-bitfit",
        "Muennighoff/SGPT-5.8B-weightedmean-msmarco-specb-bitfit",
        "sgpt",
        4096,
        300,
        "mit",
        "SGPT bi-encoder for asymmetric search (GPT-J 6B)",
        size_in_gb=23.4,
    ),
    ModelSpec(
        "GritLM-7B",
        "GritLM/GritLM-7B",
        "gritlm",
        4096,
        512,
        "apache-2.0",
        "Generative representational instruction-tuned Mistral 7B (embedding mode)",
        size_in_gb=29.0,
    ),
    *(
        ModelSpec(
            f"Qwen3-Embedding-{size}",
            f"Qwen/Qwen3-Embedding-{size}",
            "qwen3-embedding",
            dim,
            8192,
            "apache-2.0",
            f"Qwen3 {size} embedder, multilingual, instruction-aware, Matryoshka",
            _matryoshka(dim),
            onnx_sources=onnx,
            size_in_gb=gb,
        )
        for size, dim, gb, onnx in (
            (
                "0.6B",
                1024,
                2.4,
                ("onnx-community/Qwen3-Embedding-0.6B-ONNX", "Qdrant/Qwen3-Embedding-0.6B-onnx"),
            ),
            ("4B", 2560, 16.1, ()),
            ("8B", 4096, 30.3, ()),
        )
    ),
    *(
        ModelSpec(
            f"gte-Qwen2-{size}-instruct",
            f"Alibaba-NLP/gte-Qwen2-{size}-instruct",
            "gte-qwen2",
            dim,
            8192,
            "apache-2.0",
            f"GTE on Qwen2 {size}, instruction-aware",
            size_in_gb=gb,
        )
        for size, dim, gb in (("1.5B", 1536, 7.1), ("7B", 3584, 30.5))
    ),
    ModelSpec(
        "e5-mistral-7b-instruct",
        "intfloat/e5-mistral-7b-instruct",
        "e5-mistral",
        4096,
        4096,
        "mit",
        "E5 on Mistral 7B, instruction-aware",
        size_in_gb=28.4,
    ),
):
    register(_spec)
