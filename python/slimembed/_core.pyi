# Type stubs for the Rust extension (rust/src/py.rs).

from os import PathLike

import numpy as np
import numpy.typing as npt
from typing_extensions import Self, final

__all__ = [
    "POOLING_MODES",
    "Encoded",
    "NonFiniteRow",
    "QueryTooLong",
    "StaticModel",
    "Tokenizer",
    "int8_gemm_saturates",
    "pool",
]

POOLING_MODES: list[str]

@final
class Tokenizer:
    def __new__(cls, path: str | PathLike[str], *, piece_cache: bool = True) -> Self: ...
    @staticmethod
    def from_json(json: str, *, piece_cache: bool = True) -> Tokenizer: ...
    @property
    def piece_rule(self) -> str | None: ...
    @property
    def vocab_size(self) -> int: ...
    def token_to_id(self, token: str) -> int | None: ...
    def encode(
        self,
        texts: list[str],
        *,
        instruction: str | None = None,
        add_special_tokens: bool = True,
        max_length: int | None = None,
        prefix_ids: list[int] = ...,
        suffix_ids: list[int] = ...,
    ) -> Encoded: ...

@final
class Encoded:
    @staticmethod
    def from_ids(
        rows: list[list[int]], *, vocab_size: int, max_length: int | None = None
    ) -> Encoded: ...
    def __len__(self) -> int: ...
    def lengths(self) -> npt.NDArray[np.int64]: ...
    def row(self, index: int) -> npt.NDArray[np.int64]: ...
    def rerank_rows(
        self, queries: Encoded, *, keep: int, room: int | None = None, first: int = 0
    ) -> Encoded: ...
    def pad(
        self,
        rows: npt.NDArray[np.int64],
        *,
        padding_side: str = "right",
        pad_id: int = 0,
        positions: bool = False,
    ) -> tuple[
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64],
        npt.NDArray[np.int64] | None,
    ]: ...

@final
class StaticModel:
    def __new__(
        cls,
        tokenizer: Tokenizer,
        table_path: str | PathLike[str],
        *,
        add_special_tokens: bool = False,
        skip_id: int | None = None,
        normalize: bool = False,
        threads: int | None = None,
    ) -> Self: ...
    @property
    def dim(self) -> int: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def precision(self) -> str: ...
    def embed(
        self,
        texts: list[str],
        *,
        max_length: int | None = None,
        dim: int | None = None,
        normalize: bool | None = None,
    ) -> npt.NDArray[np.float32]: ...
    def embed_ids(
        self,
        encoded: Encoded,
        *,
        max_length: int | None = None,
        dim: int | None = None,
        normalize: bool | None = None,
    ) -> npt.NDArray[np.float32]: ...

# A pooled row is NaN or infinite; args: (message, row in the batch).
class NonFiniteRow(ValueError): ...

# A rerank query is past the model's max length; args: (message, pair index).
class QueryTooLong(ValueError): ...

def pool(
    hidden: npt.NDArray[np.float32],
    mask: npt.NDArray[np.int64],
    mode: str,
    *,
    skip: npt.NDArray[np.int64] | None = None,
    normalize: bool = False,
    dim: int | None = None,
) -> npt.NDArray[np.float32]: ...
def int8_gemm_saturates() -> bool: ...
