"""``GraphRunner``: the one owner of a model directory's ONNX Runtime session.

Every path that runs a graph goes through it: the transformer backend of ``TextEmbedding``,
``TextCrossEncoder``, ``distill``, and export's verification and calibration. It pads rows in
Rust (``Encoded.pad``) with the manifest's padding side and pad id, and builds the graph's feeds
from the inputs the manifest declares, so "pad the rows and build the feeds" is written once.

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
from slimembed.manifest import Manifest
from slimembed.session import create_session

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
        providers: Sequence[str] | None = None,
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
    ) -> dict[str, Int64Array]:
        """The graph's inputs for ``batch``: ids and mask, zero token types and position ids
        where the manifest declares them, and ``extra`` inputs (a reranker's targets)."""
        inputs = self.manifest.graph_inputs
        feeds = {"input_ids": batch.ids, "attention_mask": batch.mask}
        if "token_type_ids" in inputs:
            feeds["token_type_ids"] = np.zeros_like(batch.ids)
        if "position_ids" in inputs:
            if batch.positions is None:
                raise ValueError("this graph takes position_ids: the batch has none")
            feeds["position_ids"] = batch.positions
        feeds.update(extra or {})
        missing = sorted(set(inputs) - set(feeds))
        if missing:
            raise ValueError(f"no values for the graph's inputs {missing}")
        return feeds

    def run(
        self, batch: Batch, extra: Mapping[str, Int64Array] | None = None
    ) -> npt.NDArray[np.float32]:
        """The graph's output for one batch: float32 ``(batch, seq, dim)`` hidden states for an
        embedder, ``(batch, targets)`` log-probabilities for a reranker."""
        out: npt.NDArray[np.float32] = self.load().run(
            [self.manifest.graph_output], self.feeds(batch, extra)
        )[0]
        return out
