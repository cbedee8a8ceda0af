"""What unmask knows about each masked-LM class, in one table: `ARCHITECTURES`.

Adding an architecture means adding one `Architecture` entry (and, for a masked-only last
layer, a function like `_bert_final_layer`); a class not in the table is trained with its
own dense head. The masked-only last layer runs its queries, attention output and
feed-forward only at the masked positions; only its keys and values need every position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class Picks(NamedTuple):
    """Where the picked positions of a (B, T) batch are, as indices.

    Computed once from the picked mask (`picks_of`): on the host for training, so that the
    device never waits to learn how many positions there are; on the device elsewhere. With
    them every selection is an `index_select` (no boolean indexing, whose size only the
    device knows, and a backward that is deterministic on CUDA).
    """

    flat: torch.Tensor
    """(N,) picked positions in the flattened (B * T) grid, row-major."""
    order: torch.Tensor
    """(B, S) each row's picked positions packed to the left (S: the most any row has; the rest 0)."""
    slots: torch.Tensor
    """(N,) where each picked position sits in the flattened (B * S) grid of `order`."""

    def to(self, device: torch.device, non_blocking: bool = False) -> Picks:
        return Picks(*(t.to(device, non_blocking=non_blocking) for t in self))


def picks_of(picked: torch.Tensor) -> Picks:
    """The `Picks` of a (B, T) boolean mask."""
    counts = picked.sum(dim=1)
    slots = int(counts.max()) if picked.numel() else 0
    # A stable sort of 0 (picked) before 1 keeps each row's positions in increasing order,
    # so the slots come out in the row-major order of `picked`.
    order = torch.argsort((~picked).to(torch.int8), dim=1, stable=True)[:, :slots]
    filled = torch.arange(slots, device=picked.device) < counts[:, None]
    return Picks(picked.reshape(-1).nonzero().squeeze(1), order, filled.reshape(-1).nonzero().squeeze(1))


def rows_at(x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """(N, W) rows of a (B, T, W) tensor at flattened positions `flat`."""
    return x.reshape(-1, x.shape[-1]).index_select(0, flat)


def _attend_at(module: nn.Module, projections: tuple[nn.Module, nn.Module, nn.Module], hidden: torch.Tensor, mask, picks: Picks):
    """Self-attention outputs (N, H) for queries at the N picked positions only, keys and
    values at every position; and the picked positions' input states (N, H), the residual.

    Each row's picked positions are packed to the left of a (B, S) grid, so one batched
    attention call serves all rows; the empty slots are dropped afterwards.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query, key, value = projections
    batch, length, width = hidden.shape
    slots = picks.order.shape[1]
    head_size = module.attention_head_size
    grid = (torch.arange(batch, device=hidden.device)[:, None] * length + picks.order).reshape(-1)
    residual = rows_at(hidden, grid).view(batch, slots, width)
    queries = query(residual).view(batch, slots, -1, head_size).transpose(1, 2)
    keys = key(hidden).view(batch, length, -1, head_size).transpose(1, 2)
    values = value(hidden).view(batch, length, -1, head_size).transpose(1, 2)
    if mask is not None and mask.dim() == 4:
        mask = mask[:, :, :1, :]  # a bidirectional padding mask is the same for every query
    attention = ALL_ATTENTION_FUNCTIONS[module.config._attn_implementation]
    context, _ = attention(
        module, queries, keys, values, mask, dropout=module.dropout.p if module.training else 0.0, scaling=module.scaling
    )
    return rows_at(context.reshape(batch, slots, width), picks.slots), rows_at(residual, picks.slots)


def _bert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picks: Picks) -> torch.Tensor:
    attention = layer.attention
    projections = (attention.self.query, attention.self.key, attention.self.value)
    context, residual = _attend_at(attention.self, projections, hidden, mask, picks)
    attended = attention.output(context, residual)
    return layer.output(layer.intermediate(attended), attended)


def _distilbert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picks: Picks) -> torch.Tensor:
    attention = layer.attention
    context, residual = _attend_at(attention, (attention.q_lin, attention.k_lin, attention.v_lin), hidden, mask, picks)
    attended = layer.sa_layer_norm(attention.out_lin(context) + residual)
    return layer.output_layer_norm(layer.ffn.ff_chunk(attended) + attended)


Head = Callable[[torch.Tensor], torch.Tensor]
FinalLayer = Callable[[nn.Module, torch.Tensor, torch.Tensor | None, Picks], torch.Tensor]


@dataclass(frozen=True)
class Architecture:
    """What unmask knows about one masked-LM class."""

    model_type: str
    """transformers' `config.model_type` of the family (`bert`, `roberta`, ...): finds the entry for the family's other heads."""
    head: Callable[[nn.Module], Head]
    """model -> function from hidden states (N, H) to vocabulary logits (N, V)."""
    head_prefixes: tuple[str, ...]
    """Parameter-name prefixes of the MLM head: a checkpoint without them gets a fresh head."""
    layers: Callable[[nn.Module], nn.ModuleList]
    """model -> its encoder layers (sharding, compiling and the masked-only last layer use them)."""
    final_layer: FinalLayer | None = None
    """(last layer, hidden states, attention mask, picks) -> (N, H) at the picked positions; None: run the whole encoder."""
    plain_attention: bool = False
    """Softmax attention under a padding mask and nothing else, so `cpu_dropout` may take it over."""
    position_offset: int = 0
    """Positions the embedding reserves (RoBERTa counts positions from padding_idx + 1)."""


def _distilbert_head(model: nn.Module) -> Head:
    return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))


def _roberta_family(model_type: str) -> Architecture:
    return Architecture(
        model_type=model_type, head=lambda m: m.lm_head, head_prefixes=("lm_head.",), layers=lambda m: m.base_model.encoder.layer,
        final_layer=_bert_final_layer, plain_attention=True, position_offset=2,
    )  # fmt: skip


ARCHITECTURES: dict[str, Architecture] = {
    "BertForMaskedLM": Architecture(
        model_type="bert", head=lambda m: m.cls, head_prefixes=("cls.",), layers=lambda m: m.base_model.encoder.layer,
        final_layer=_bert_final_layer, plain_attention=True,
    ),
    "RobertaForMaskedLM": _roberta_family("roberta"),
    "XLMRobertaForMaskedLM": _roberta_family("xlm-roberta"),
    "CamembertForMaskedLM": _roberta_family("camembert"),
    "DistilBertForMaskedLM": Architecture(
        model_type="distilbert", head=_distilbert_head, head_prefixes=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
        layers=lambda m: m.base_model.transformer.layer, final_layer=_distilbert_final_layer, plain_attention=True,
    ),
    # ModernBERT's layers mix global and sliding-window attention with rotary positions:
    # its last layer and its attention stay as transformers wrote them.
    "ModernBertForMaskedLM": Architecture(
        model_type="modernbert", head=lambda m: (lambda h: m.decoder(m.head(h))), head_prefixes=("head.", "decoder."), layers=lambda m: m.model.layers,
    ),
}  # fmt: skip
# Head names of architectures outside the table, for the fresh-head report only.
GENERIC_HEAD_PARTS = ("cls.", "lm_head", "vocab_", "decoder", "head.")


def architecture_of(model: nn.Module) -> Architecture | None:
    """The entry of a masked-LM class (None outside the table)."""
    return ARCHITECTURES.get(type(model).__name__)


def architecture_for_type(model_type: str) -> Architecture | None:
    """The entry of a family by `config.model_type`, for its other heads (classification, tagging)."""
    return next((a for a in ARCHITECTURES.values() if a.model_type == model_type), None)
