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

from slimembed.optimize.onnx_file import EXTERNAL_DATA_BYTES, OPSET
from slimembed_export.errors import ExportError


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


class TokenLogProbs(torch.nn.Module):
    """A causal LM as a reranker: (input_ids, attention_mask, target_positions, target_ids) ->
    ``token_logprobs`` (batch, targets), the log-probability of ``target_ids[b, k]`` as the
    token after position ``target_positions[b, k]``.

    Only the hidden states at the target positions go through the LM head, so the
    (batch, seq, vocab) logits are never built: memory grows with the targets, not the text.
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.base = lm.base_model
        self.head = lm.get_output_embeddings()
        if self.head is None:
            raise ExportError(f"{type(lm).__name__} has no LM head to score tokens with")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_positions: torch.Tensor,
        target_ids: torch.Tensor,
    ) -> torch.Tensor:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
        ).last_hidden_state
        index = target_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        logits = self.head(hidden.gather(1, index)).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        picked: torch.Tensor = logprobs.gather(-1, target_ids.unsqueeze(-1)).squeeze(-1)
        return picked


def export_graph(
    model: torch.nn.Module,
    decoder: bool,
    path: Path,
    pad_id: int,
    external_data: bool | None = None,
    bidirectional: bool = False,
    max_length: int = 512,
    fuse: bool = True,
) -> str:
    """Write the embedding graph to ``path``, with weights in external data for large models
    (or when ``external_data`` says so); returns how it was made.

    With ``fuse``, decoders of the families slimembed_export.decoder builds are written fused
    (checked against the model on a padded probe batch, traced when that check fails), and
    encoders' attention is fused where that is exact (slimembed.optimize.fusion)."""
    if bidirectional and not decoder:
        raise ExportError("bidirectional applies to decoders; encoders are bidirectional already")
    from slimembed.optimize.fusion import fuse as fuse_encoder
    from slimembed_export import decoder as fused_decoder

    external = _size(model) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    not_fused = fused_decoder.unsupported_reason(model, max_length) if decoder else None
    if decoder and fuse and not_fused is None:
        built = fused_decoder.build_decoder_graph(model, path, max_length, bidirectional, external)
        try:
            fused_decoder.check(model, path, pad_id, bidirectional)
            return built
        except ExportError as err:
            not_fused = str(err)
            warnings.warn(f"{err}; exporting the traced graph instead", stacklevel=2)
            for stale in (path, path.with_name(path.name + ".data")):
                stale.unlink(missing_ok=True)
    ids, mask = _example(pad_id)
    exporter = _export(
        HiddenStates(model, decoder, bidirectional).eval(),
        {"input_ids": ids, "attention_mask": mask},
        "last_hidden_state",
        path,
        external,
    )
    if decoder:
        why = "--no-fuse" if not fuse else not_fused
        return f"{exporter}, unfused ({why})"
    fused = fuse_encoder(path).attention if fuse else 0
    return f"{exporter}, {fused} attention layers fused" if fused else exporter


def export_rerank_graph(
    lm: torch.nn.Module, path: Path, pad_id: int, external_data: bool | None = None
) -> str:
    """Write the reranking graph of a causal LM (``TokenLogProbs``) to ``path``."""
    ids, mask = _example(pad_id)
    positions = torch.tensor([[2, 3, 4], [3, 4, 5]])
    targets = ids.gather(1, positions + 1)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "target_positions": positions,
        "target_ids": targets,
    }
    return _export(TokenLogProbs(lm).eval(), inputs, "token_logprobs", path, external_data)


def _size(model: torch.nn.Module) -> int:
    """Bytes of the model's weights."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _example(pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch 2 and seq 8 with a padded row: no dimension is 0/1-specialized while tracing."""
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = pad_id
    return ids, mask


def _export(
    wrapper: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    output: str,
    path: Path,
    external_data: bool | None,
) -> str:
    external = _size(wrapper) > EXTERNAL_DATA_BYTES if external_data is None else external_data
    batch, seq, targets = (torch.export.Dim(n) for n in ("batch", "seq", "targets"))
    dims = {"input_ids": seq, "attention_mask": seq, "target_positions": targets}
    dims["target_ids"] = targets
    dynamic = {name: {0: batch, 1: dims[name]} for name in inputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper,
                tuple(inputs.values()),
                str(path),
                input_names=list(inputs),
                output_names=[output],
                dynamic_shapes=dynamic,
                opset_version=OPSET,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
        except torch.onnx.errors.OnnxExporterError as err:
            raise ExportError(f"torch.onnx could not export the model: {err}") from err
    return f"torch.onnx dynamo (opset {OPSET})"
