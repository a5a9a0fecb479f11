"""Tracing a transformers model into an ONNX graph of the slimembed contract.

The graph takes int64 ``input_ids`` and ``attention_mask`` of shape (batch, seq) and returns the
float32 ``last_hidden_state`` (batch, seq, dim). Decoders get their position ids computed inside
the graph from the mask (``cumsum(mask) - 1``), so a left-padded row sees the same positions as
the text alone; without that, models with absolute positions (GPT-2) are wrong under left
padding. The attention mask is a traced input, never a constant.

Bidirectional decoders (GritLM, gte-Qwen2) get a 4D additive mask built in the graph from the
padding mask alone, ``(batch, 1, 1, seq)``: every token sees every real token, none sees padding,
and no row is ever fully masked (so left padding cannot produce NaN).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from slimembed_export.errors import ExportError

# A graph over this many bytes of weights is written with external data (protobuf's 2 GB cap).
EXTERNAL_DATA_BYTES = 1_800_000_000
OPSET = 20


class HiddenStates(torch.nn.Module):
    """(input_ids, attention_mask) -> last_hidden_state, the graph's whole interface."""

    def __init__(self, model: torch.nn.Module, decoder: bool, bidirectional: bool = False) -> None:
        super().__init__()
        self.model = model
        self.decoder = decoder
        self.bidirectional = bidirectional

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        mask: torch.Tensor = attention_mask
        if self.decoder:
            kwargs["position_ids"] = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            kwargs["use_cache"] = False
            if self.bidirectional:
                keys = attention_mask[:, None, None, :].to(torch.float32)
                mask = (1.0 - keys) * torch.finfo(torch.float32).min
        out = self.model(input_ids=input_ids, attention_mask=mask, **kwargs)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden


def export_graph(
    model: torch.nn.Module,
    decoder: bool,
    path: Path,
    pad_id: int,
    external_data: bool | None = None,
    bidirectional: bool = False,
) -> str:
    """Write ``path``, with weights in external data for large models (or when
    ``external_data`` says so); returns the exporter used."""
    if bidirectional and not decoder:
        raise ExportError("bidirectional applies to decoders; encoders are bidirectional already")
    wrapper = HiddenStates(model, decoder, bidirectional).eval()
    # Batch 2 and seq 8 with a padded row: no dimension is 0/1-specialized while tracing.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = pad_id
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    external = size > EXTERNAL_DATA_BYTES if external_data is None else external_data
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_shapes={
                    "input_ids": {0: batch, 1: seq},
                    "attention_mask": {0: batch, 1: seq},
                },
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
        except torch.onnx.errors.OnnxExporterError as err:
            raise ExportError(f"torch.onnx could not export the model: {err}") from err
    return f"torch.onnx dynamo (opset {OPSET})"
