"""``GraphRunner``: the one owner of a model directory's ONNX Runtime session.

Every path that runs a graph goes through it: the transformer backend of ``TextEmbedding``,
``TextCrossEncoder``, ``distill``, and export's verification and calibration. It pads rows in
Rust (``Encoded.pad``) with the manifest's padding side and pad id, and builds the graph's feeds
from the inputs the manifest declares, so "pad the rows and build the feeds" is written once.
A causal LM exported with a KV cache (``past_key_values.N.key/value``, as Optimum and
Transformers.js write them) gets zero-length past tensors of the dtype and fixed dims the graph
declares: one pass over the whole text, nothing cached.

The session is created on first use (or by ``load``) under a lock, so threads that share a
runner share one session; ONNX Runtime's ``run`` is itself safe to call from several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from slimembed import _core
from slimembed.manifest import PAST, Manifest
from slimembed.session import PAST_DTYPES, Provider, create_session

Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Batch:
    """One padded batch: int64 ``(batch, seq)`` ids and mask, the ``(batch,)`` number of leading
    tokens left out of pooling, and position ids where the graph takes them."""

    ids: Int64Array
    mask: Int64Array
    skip: Int64Array
    positions: Int64Array | None = None


class GraphRunner:
    """Runs one padded batch through the graph of ``model_dir`` (its ``graph_file``, or the
    manifest's main graph), on the providers asked for."""

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        *,
        graph_file: str | None = None,
        providers: Sequence[Provider] | None = None,
        cuda: bool = False,
        device_id: int = 0,
        threads: int | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.graph_file = graph_file or manifest.graph_file
        self._session_args: dict[str, Any] = {
            "providers": providers,
            "cuda": cuda,
            "device_id": device_id,
            "threads": threads,
            "graph_file": self.graph_file,
        }
        self._session: Any = None
        self._lock = threading.Lock()
        # (name, dtype, dims) of each KV-cache input, read from the session once.
        self._past: list[tuple[str, Any, list[int | str | None]]] | None = None

    @property
    def loaded(self) -> bool:
        """Whether the session exists yet."""
        return self._session is not None

    def load(self) -> Any:
        """The ONNX Runtime session, created on first call."""
        session = self._session
        if session is not None:
            return session
        with self._lock:
            if self._session is None:
                self._session = create_session(self.model_dir, self.manifest, **self._session_args)
            return self._session

    def pad(self, encoded: _core.Encoded, rows: Int64Array) -> Batch:
        """Rows ``rows`` of ``encoded`` padded to the longest of them, as the graph expects."""
        m = self.manifest
        ids, mask, skip, positions = encoded.pad(
            rows,
            padding_side=m.padding_side,
            pad_id=m.pad_id,
            positions="position_ids" in m.graph_inputs,
        )
        return Batch(ids, mask, skip, positions)

    def feeds(
        self, batch: Batch, extra: Mapping[str, Int64Array] | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """The graph's inputs for ``batch``: ids and mask, zero token types, position ids and
        empty KV-cache tensors where the manifest declares them, and ``extra`` inputs (a
        reranker's targets)."""
        inputs = self.manifest.graph_inputs
        feeds: dict[str, npt.NDArray[Any]] = {
            "input_ids": batch.ids,
            "attention_mask": batch.mask,
        }
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(batch.ids)
        if "position_ids" in inputs:
            if batch.positions is None:
                raise ValueError("this graph takes position_ids: the batch has none")
            feeds["position_ids"] = batch.positions
        if PAST in inputs:
            feeds.update(self._empty_past(len(batch.ids)))
        feeds.update(extra or {})
        missing = sorted(set(inputs) - set(feeds) - {PAST})
        if missing:
            raise ValueError(f"no values for the graph's inputs {missing}")
        return feeds

    def _empty_past(self, rows: int) -> dict[str, npt.NDArray[Any]]:
        """Zero-length past keys and values: the batch axis ``rows``, the graph's fixed dims as
        declared (heads, head size), every other symbolic dim (the past length) 0."""
        if self._past is None:  # the session checked these inputs' types (check_graph)
            inputs = self.load().get_inputs()
            self._past = [
                (i.name, PAST_DTYPES[i.type], list(i.shape))
                for i in inputs
                if i.name.startswith(PAST + ".")
            ]
        return {
            name: np.zeros([rows, *(d if isinstance(d, int) else 0 for d in dims[1:])], dtype)
            for name, dtype, dims in self._past
        }

    def run(
        self, batch: Batch, extra: Mapping[str, Int64Array] | None = None
    ) -> npt.NDArray[np.float32]:
        """The graph's output for one batch as float32 (a float16 graph's cast): ``(batch,
        seq, dim)`` hidden states for an embedder (``(batch, dim)`` where the graph pools),
        ``(batch, targets)`` log-probabilities for a reranker."""
        out: npt.NDArray[Any] = self.load().run(
            [self.manifest.graph_output], self.feeds(batch, extra)
        )[0]
        return out.astype(np.float32, copy=False)
