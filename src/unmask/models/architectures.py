"""What unmask knows about each masked-LM class, in one table: `ARCHITECTURES`.

Adding an architecture means adding one `Architecture` entry (and, for a masked-only last
layer, a function like `_bert_final_layer`); a class not in the table is trained with its
own dense head. The masked-only last layer runs its queries, attention output and
feed-forward only at the masked positions; only its keys and values need every position.

The entry also says how the family is built from scratch (`scratch`: a transformers config
for a size and a vocabulary), what kind of positions it has (learned ones can be extended,
rotary ones take a new base), how a packed window is encoded with its documents kept
apart (`encode_documents`), and how many FLOPs a forward pass takes (`flops`, `models.flops`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from unmask.data.masking import IGNORE_INDEX
from unmask.data.tokenizer import Vocabulary
from unmask.models.flops import Formula, bert_flops, deberta_v2_flops, modernbert_flops


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


def padded_picks(picks: Picks, targets: torch.Tensor, rows: int, slots: int) -> tuple[Picks, torch.Tensor]:
    """`picks` and their (N,) `targets` padded to a multiple of `rows` picked positions and of
    `slots` slots a row, the extra positions repeating the first and ignored (-100).

    The number of masked positions differs from step to step; each new matrix shape makes
    oneDNN (bf16 on a CPU) compile and cache kernels of its own, and that cache grew the
    process by megabytes a step until it held a thousand shapes. A few shapes serve all
    steps; an extra position costs its share of the head and nothing else (the loss is a sum
    over the real ones, normalised by their count)."""
    count, width = picks.flat.shape[0], picks.order.shape[1]
    if count == 0:
        return picks, targets
    wide = -(-width // slots) * slots
    order = torch.nn.functional.pad(picks.order, (0, wide - width))  # position 0: attended to, then dropped
    moved = (picks.slots // width) * wide + picks.slots % width
    extra = -(-count // rows) * rows - count
    flat = torch.cat([picks.flat, picks.flat[:1].expand(extra)])
    moved = torch.cat([moved, moved[:1].expand(extra)])
    targets = torch.cat([targets, targets.new_full((extra,), IGNORE_INDEX)])
    return Picks(flat, order, moved), targets


def rows_at(x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """(N, W) rows of a (B, T, W) tensor at flattened positions `flat`."""
    return x.reshape(-1, x.shape[-1]).index_select(0, flat)


def _attend_at(
    module: nn.Module, projections: tuple[nn.Module, nn.Module, nn.Module], hidden: torch.Tensor, mask, picks: Picks, documents_apart: bool
):
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
    if mask is not None and mask.dim() == 4 and mask.shape[2] > 1:
        if documents_apart:  # each query keeps its own row: documents see only themselves
            mask = mask[torch.arange(batch, device=mask.device)[:, None], :, picks.order].transpose(1, 2)
        else:
            mask = mask[:, :, :1, :]  # a bidirectional padding mask is the same for every query
    attention = ALL_ATTENTION_FUNCTIONS[module.config._attn_implementation]
    context, _ = attention(
        module, queries, keys, values, mask, dropout=module.dropout.p if module.training else 0.0, scaling=module.scaling
    )
    return rows_at(context.reshape(batch, slots, width), picks.slots), rows_at(residual, picks.slots)


def _bert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picks: Picks, documents_apart: bool) -> torch.Tensor:
    attention = layer.attention
    projections = (attention.self.query, attention.self.key, attention.self.value)
    context, residual = _attend_at(attention.self, projections, hidden, mask, picks, documents_apart)
    attended = attention.output(context, residual)
    return layer.output(layer.intermediate(attended), attended)


def _distilbert_final_layer(layer: nn.Module, hidden: torch.Tensor, mask, picks: Picks, documents_apart: bool) -> torch.Tensor:
    attention = layer.attention
    projections = (attention.q_lin, attention.k_lin, attention.v_lin)
    context, residual = _attend_at(attention, projections, hidden, mask, picks, documents_apart)
    attended = layer.sa_layer_norm(attention.out_lin(context) + residual)
    return layer.output_layer_norm(layer.ffn.ff_chunk(attended) + attended)


def document_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, separator_id: int) -> torch.Tensor:
    """(B, T) the document of each position of packed windows: the number of separators
    before it (a document's own closing separator is its last token). Padding is a document
    of its own, so that nothing real attends to it and it attends to nothing real."""
    is_separator = (input_ids == separator_id).to(torch.int32)
    documents = torch.cumsum(is_separator, dim=1) - is_separator
    return torch.where(attention_mask.bool(), documents, input_ids.shape[1])


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """(B, T) each position's offset from the start of its document."""
    index = torch.arange(documents.shape[1], device=documents.device).expand_as(documents)
    begins = torch.ones_like(documents, dtype=torch.bool)
    begins[:, 1:] = documents[:, 1:] != documents[:, :-1]
    return index - torch.cummax(torch.where(begins, index, 0), dim=1).values


def document_mask(documents: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: may query i attend to key j? Only within its own document."""
    return (documents[:, :, None] == documents[:, None, :])[:, None]


Head = Callable[[torch.Tensor], torch.Tensor]
FinalLayer = Callable[[nn.Module, torch.Tensor, torch.Tensor | None, Picks, bool], torch.Tensor]
EncodeDocuments = Callable[..., torch.Tensor]


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
    """(last layer, hidden states, attention mask, picks, documents apart) -> (N, H) at the picked positions; None: run the whole encoder."""
    plain_attention: bool = False
    """Softmax attention under a padding mask and nothing else, so `cpu_dropout` may take it over."""
    reserved_positions: Callable[[object], int] = lambda config: 0
    """config -> positions the embedding reserves before the first token (RoBERTa counts from padding_idx + 1)."""
    positions: Literal["learned", "rotary", "relative"] = "learned"
    """`learned`: a table of absolute positions, extended by copying; `rotary`: RoPE, with a base (`--rope-theta`); `relative`: buckets of distances."""
    position_table: Callable[[nn.Module], nn.Embedding] | None = None
    """model -> its learned position embedding (to extend it to a longer context)."""
    encode_documents: EncodeDocuments | None = None
    """(model, input_ids, attention_mask, documents, spans) -> hidden states (B, T, H) with each document of a packed window apart
    (`spans`: `attention.Spans` of the documents, from the host, for the unpadded paths); None: not supported."""
    scratch: Callable[[str, Vocabulary, int, float | None], object] | None = None
    """(size, vocabulary, positions, rope theta) -> a transformers config of a fresh model; None: not built from scratch."""
    required_ids: tuple[str, ...] = ("pad_id",)
    """The `Vocabulary` ids the family's config needs."""
    flops: Formula = bert_flops
    """(config, `flops.Shape`, masked-only last layer?) -> a forward pass's model FLOPs: the family's formula in `models.flops`."""


def _distilbert_head(model: nn.Module) -> Head:
    return lambda h: model.vocab_projector(model.vocab_layer_norm(model.activation(model.vocab_transform(h))))


# Sizes for building from scratch. tiny/mini/small are Google's BERT miniatures (Turc et al.,
# 2019), the same depth and width for every family so that they compare; base and large are
# each family's published shape.
BERT_SHAPES = {
    "tiny": dict(num_hidden_layers=2, hidden_size=128, num_attention_heads=2, intermediate_size=512),
    "mini": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "small": dict(num_hidden_layers=4, hidden_size=512, num_attention_heads=8, intermediate_size=2048),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
}
# ModernBERT (Warner et al., 2024): GeGLU's inner width is 1.5x the hidden size at base (1,152);
# base has 22 layers, large 28 with a 2,624 inner width.
MODERNBERT_SHAPES = {
    **{size: {**shape, "intermediate_size": shape["hidden_size"] * 3 // 2} for size, shape in BERT_SHAPES.items()},
    "base": dict(num_hidden_layers=22, hidden_size=768, num_attention_heads=12, intermediate_size=1152),
    "large": dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, intermediate_size=2624),
}
# The 10,000 ModernBERT pretrained at; it raised the global layers' base to 160,000 to extend to 8,192 tokens.
MODERNBERT_PRETRAINING_THETA = 10_000.0


def _bert_config(size: str, vocab: Vocabulary, positions: int, rope_theta: float | None):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab.size,
        max_position_embeddings=max(512, positions),
        pad_token_id=vocab.pad_id,
        tie_word_embeddings=True,
        **BERT_SHAPES[size],
    )


def _roberta_config(size: str, vocab: Vocabulary, positions: int, rope_theta: float | None):
    from transformers import RobertaConfig

    # RoBERTa's positions start after the padding id (`reserved_positions`).
    return RobertaConfig(
        vocab_size=vocab.size,
        max_position_embeddings=max(512, positions) + vocab.pad_id + 1,
        pad_token_id=vocab.pad_id,
        bos_token_id=vocab.opener_id,
        eos_token_id=vocab.closer_id,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        tie_word_embeddings=True,
        **BERT_SHAPES[size],
    )


def _modernbert_config(size: str, vocab: Vocabulary, positions: int, rope_theta: float | None):
    from transformers import ModernBertConfig

    rope = {
        "full_attention": {"rope_type": "default", "rope_theta": rope_theta or MODERNBERT_PRETRAINING_THETA},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
    }
    return ModernBertConfig(
        vocab_size=vocab.size,
        max_position_embeddings=max(positions, 512),
        pad_token_id=vocab.pad_id,
        cls_token_id=vocab.opener_id,
        sep_token_id=vocab.closer_id,
        bos_token_id=vocab.opener_id,
        eos_token_id=vocab.closer_id,
        rope_parameters=rope,
        tie_word_embeddings=True,
        **MODERNBERT_SHAPES[size],
    )


def _deberta_v2_config(size: str, vocab: Vocabulary, positions: int, rope_theta: float | None):
    from transformers import DebertaV2Config

    # DeBERTa-v3's settings (He et al., 2021; microsoft/deberta-v3-base config.json):
    # relative positions only, in 256 log buckets, keys shared between content and position.
    return DebertaV2Config(
        vocab_size=vocab.size,
        max_position_embeddings=max(512, positions),
        pad_token_id=vocab.pad_id,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        layer_norm_eps=1e-7,
        max_relative_positions=-1,
        position_biased_input=False,
        type_vocab_size=0,
        tie_word_embeddings=True,
        **BERT_SHAPES[size],
    )


def _documents_apart(model: nn.Module, documents: torch.Tensor, spans, window: int | None = None) -> dict:
    """The keyword arguments that keep a packed window's documents apart under the model's
    attention: the spans (varlen, flash: each document its own unpadded sequence, no mask),
    a block mask (flex: the blocks between documents skipped), or a (T x T) mask (SDPA).
    `window`: ModernBERT's local layers also see only this far; a dict of masks then."""
    from unmask.models.attention import VARLEN_NAME, document_block_mask, spans_of

    implementation = model.config._attn_implementation
    if implementation == VARLEN_NAME or implementation.startswith("flash_attention"):
        return (spans if spans is not None else spans_of(documents).to(documents.device)).as_kwargs()
    if implementation == "flex_attention":
        apart = document_block_mask(documents)
        local = document_block_mask(documents, window=window) if window is not None else None
    else:
        apart = document_mask(documents)
        if window is not None:
            index = torch.arange(documents.shape[1], device=documents.device)
            local = apart & ((index[:, None] - index[None, :]).abs() <= window)
    return {"attention_mask": apart if window is None else {"full_attention": apart, "sliding_attention": local}}


def _bert_encode_documents(model: nn.Module, input_ids: torch.Tensor, attention_mask, documents: torch.Tensor, spans=None) -> torch.Tensor:
    positions = document_positions(documents) + architecture_of(model).reserved_positions(model.config)
    apart = _documents_apart(model, documents, spans)
    if "attention_mask" not in apart:
        # Spans, no mask: the embeddings and the encoder are called apart, because the model's
        # own mask builder, given restarting positions and no mask, asks the device whether
        # the batch is packed (a wait in every step).
        base = model.base_model
        return base.encoder(base.embeddings(input_ids=input_ids, position_ids=positions), attention_mask=None, **apart)[0]
    return model.base_model(input_ids=input_ids, position_ids=positions, **apart)[0]


def _modernbert_encode_documents(
    model: nn.Module, input_ids: torch.Tensor, attention_mask, documents: torch.Tensor, spans=None
) -> torch.Tensor:
    apart = _documents_apart(model, documents, spans, window=model.config.sliding_window)
    return model.base_model(input_ids=input_ids, position_ids=document_positions(documents), **apart)[0]


def _deberta_v2_encode_documents(
    model: nn.Module, input_ids: torch.Tensor, attention_mask, documents: torch.Tensor, spans=None
) -> torch.Tensor:
    # DeBERTa's embeddings take a padding mask and its encoder a full one; its model's forward
    # passes one mask to both, so the two are called here. Relative positions need no restart.
    base = model.base_model
    padding = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    hidden = base.embeddings(input_ids=input_ids, mask=padding)
    return base.encoder(hidden, document_mask(documents).to(torch.int64), output_hidden_states=True, return_dict=True).last_hidden_state


def _roberta_family(model_type: str) -> Architecture:
    return Architecture(
        model_type=model_type,
        head=lambda m: m.lm_head,
        head_prefixes=("lm_head.",),
        layers=lambda m: m.base_model.encoder.layer,
        final_layer=_bert_final_layer,
        plain_attention=True,
        reserved_positions=lambda c: c.pad_token_id + 1,
        position_table=lambda m: m.base_model.embeddings.position_embeddings,
        encode_documents=_bert_encode_documents,
        scratch=_roberta_config if model_type == "roberta" else None,
        required_ids=("pad_id", "opener_id", "closer_id"),
    )


ARCHITECTURES: dict[str, Architecture] = {
    "BertForMaskedLM": Architecture(
        model_type="bert", head=lambda m: m.cls, head_prefixes=("cls.",), layers=lambda m: m.base_model.encoder.layer,
        final_layer=_bert_final_layer, plain_attention=True, position_table=lambda m: m.base_model.embeddings.position_embeddings,
        encode_documents=_bert_encode_documents, scratch=_bert_config,
    ),
    "RobertaForMaskedLM": _roberta_family("roberta"),
    "XLMRobertaForMaskedLM": _roberta_family("xlm-roberta"),
    "CamembertForMaskedLM": _roberta_family("camembert"),
    "DistilBertForMaskedLM": Architecture(
        model_type="distilbert", head=_distilbert_head, head_prefixes=("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
        layers=lambda m: m.base_model.transformer.layer, final_layer=_distilbert_final_layer, plain_attention=True,
        position_table=lambda m: m.base_model.embeddings.position_embeddings,
    ),
    # ModernBERT's layers alternate global and sliding-window attention with rotary positions;
    # a masked-only last layer would need its own rotary and window handling, so the whole
    # encoder runs and only the head is sparse.
    "ModernBertForMaskedLM": Architecture(
        model_type="modernbert", head=lambda m: (lambda h: m.decoder(m.head(h))), head_prefixes=("head.", "decoder."), layers=lambda m: m.model.layers,
        positions="rotary", encode_documents=_modernbert_encode_documents, scratch=_modernbert_config,
        required_ids=("pad_id", "opener_id", "closer_id"), flops=modernbert_flops,
    ),
    # DeBERTa's disentangled attention adds content-to-position and position-to-content
    # scores computed for every query inside transformers' attention module: its last layer
    # runs whole, and only the head is sparse.
    "DebertaV2ForMaskedLM": Architecture(
        model_type="deberta-v2", head=lambda m: m.cls, head_prefixes=("cls.",), layers=lambda m: m.deberta.encoder.layer,
        positions="relative", encode_documents=_deberta_v2_encode_documents, scratch=_deberta_v2_config, flops=deberta_v2_flops,
    ),
}  # fmt: skip
# The --arch names of what can be built from scratch -> the class built.
SCRATCH_CLASSES = {
    "bert": "BertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "modernbert": "ModernBertForMaskedLM",
    "deberta-v2": "DebertaV2ForMaskedLM",
}
# Head names of architectures outside the table, for the fresh-head report only.
GENERIC_HEAD_PARTS = ("cls.", "lm_head", "vocab_", "decoder", "head.")


def architecture_of(model: nn.Module) -> Architecture | None:
    """The entry of a masked-LM class (None outside the table)."""
    return ARCHITECTURES.get(type(model).__name__)


def architecture_for_type(model_type: str) -> Architecture | None:
    """The entry of a family by `config.model_type`, for its other heads (classification, tagging)."""
    return next((a for a in ARCHITECTURES.values() if a.model_type == model_type), None)
