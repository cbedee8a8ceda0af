"""Model FLOPs: the arithmetic a forward pass needs, from the model's shape, one formula per
architecture family (the `flops` of each entry in `architectures.ARCHITECTURES`).

Only matrix products count (2 FLOPs a multiply-add), as in PaLM's MFU (Chowdhery et al.,
2022) and NVIDIA's BERT figures: layer norms, activations, softmax and embedding lookups are
a rounding error beside them. A training step costs three forward passes (the backward pass
two); activation checkpointing recomputes a fourth, which is hardware work, not model work,
and is not counted. The counts are of *useful* work:

- attention over the real tokens only: each window's real length, or each document's with
  --no-attention-across-docs; ModernBERT's sliding-window layers over the keys in the window.
  A kernel that also computes the padding or the masked-off blocks does more than this;
  that waste is the `padding` share of the log line, not model FLOPs;
- the MLM head at the masked positions only, and where the last layer runs only there
  (BERT, RoBERTa, DistilBERT under SDPA), its queries, attention output and feed-forward too.

`tests/unit/models/test_flops.py` checks each formula against `torch.utils.flop_counter` on a tiny model of
each family, within 5%.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Shape:
    """What a micro-batch's FLOPs depend on, all counted on the host."""

    segments: np.ndarray
    """(K,) the lengths of what attends to itself: each window's real tokens, or each document."""
    picked: int
    """Masked positions (where the head, and a masked-only last layer, run)."""

    @property
    def tokens(self) -> int:
        return int(self.segments.sum())

    def pairs(self, half_window: int | None = None) -> int:
        """Query-key pairs attention computes: every pair within a segment, or only those at
        most `half_window` apart (a sliding window of 2 * half_window + 1 keys)."""
        lengths = self.segments.astype(np.int64)
        if half_window is None:
            return int((lengths * lengths).sum())
        w = half_window
        banded = np.where(lengths <= w + 1, lengths * lengths, lengths * (2 * w + 1) - w * (w + 1))
        return int(banded.sum())


def segments_of(attention_mask: np.ndarray, documents: np.ndarray | None = None) -> np.ndarray:
    """The attention segments of a (B, T) micro-batch: each row's real tokens, or with
    `documents` (`architectures.document_ids`, padding its own document T) each document's length."""
    if documents is None:
        lengths = attention_mask.sum(axis=1)
        return lengths[lengths > 0]
    length = documents.shape[1]
    real = documents[documents < length]
    rows = np.broadcast_to(np.arange(documents.shape[0])[:, None], documents.shape)[documents < length]
    _, counts = np.unique(rows.astype(np.int64) * (length + 1) + real, return_counts=True)
    return counts


def _dims(config) -> tuple[int, int, int, int]:
    """(layers, hidden, inner feed-forward width, vocabulary) under either naming (BERT's, DistilBERT's)."""
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    inner = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None) or 4 * hidden
    return layers, hidden, inner, config.vocab_size


def _head(hidden: int, vocab: int, rows: int) -> float:
    """The MLM head: a hidden x hidden transform, then the decoder to the vocabulary."""
    return 2.0 * rows * (hidden * hidden + hidden * vocab)


def bert_flops(config, shape: Shape, masked_last_layer: bool) -> float:
    """BERT, RoBERTa, DistilBERT (post-norm, GELU feed-forward): per token and layer, Q, K, V and
    the attention output (4 H^2) and the feed-forward (2 H I), x2 FLOPs a multiply-add; per
    query-key pair, the scores and the weighted values (2 x 2 H). With the masked-only last
    layer, that layer computes keys and values at every token, the rest at the masked ones."""
    layers, hidden, inner, vocab = _dims(config)
    tokens, picked, pairs = shape.tokens, shape.picked, shape.pairs()
    dense = layers - 1 if masked_last_layer else layers
    total = dense * (2.0 * tokens * (4 * hidden * hidden + 2 * hidden * inner) + 4.0 * pairs * hidden)
    if masked_last_layer:
        keys_per_query = pairs / max(tokens, 1)
        total += 2.0 * tokens * 2 * hidden * hidden  # keys and values
        total += 2.0 * picked * (2 * hidden * hidden + 2 * hidden * inner)  # queries, output, feed-forward
        total += 4.0 * picked * keys_per_query * hidden
    return total + _head(hidden, vocab, picked)


def modernbert_flops(config, shape: Shape, masked_last_layer: bool = False) -> float:
    """ModernBERT (pre-norm, GeGLU, no biases): per token and layer, the fused QKV and the
    output (4 H^2) and GeGLU's two-headed input and output (3 H I); attention over every
    pair of a segment in the global layers and over the pairs within `local_attention / 2`
    of each other in the sliding ones (`config.layer_types`)."""
    layers, hidden, inner, vocab = _dims(config)
    tokens = shape.tokens
    types = list(getattr(config, "layer_types", None) or ["full_attention"] * layers)
    half_window = config.local_attention // 2
    total = 0.0
    for kind in types[:layers]:
        pairs = shape.pairs(half_window if kind == "sliding_attention" else None)
        total += 2.0 * tokens * (4 * hidden * hidden + 3 * hidden * inner) + 4.0 * pairs * hidden
    return total + _head(hidden, vocab, shape.picked)


def deberta_v2_flops(config, shape: Shape, masked_last_layer: bool = False) -> float:
    """DeBERTa-v2/v3: BERT's layer plus disentangled attention. Each layer projects the 2k
    relative-position embeddings (k: `position_buckets`, else `max_relative_positions`) with
    the query and key weights (once per micro-batch), and scores every token's query against
    the 2k position keys (content-to-position) and every key against the 2k position queries
    (position-to-content), 2 x 2 H FLOPs per token and relative position."""
    layers, hidden, inner, vocab = _dims(config)
    tokens, pairs = shape.tokens, shape.pairs()
    span = config.position_buckets if getattr(config, "position_buckets", -1) > 0 else config.max_relative_positions
    if span < 1:
        span = config.max_position_embeddings
    relative = 2 * span
    kinds = len(getattr(config, "pos_att_type", None) or [])
    per_layer = 2.0 * tokens * (4 * hidden * hidden + 2 * hidden * inner) + 4.0 * pairs * hidden
    if getattr(config, "relative_attention", False):
        per_layer += kinds * (2.0 * relative * hidden * hidden + 2.0 * tokens * relative * hidden)
    return layers * per_layer + _head(hidden, vocab, shape.picked)


Formula = Callable[[object, Shape, bool], float]
TRAINING_PASSES = 3
"""A training step's FLOPs in forward passes: the backward pass costs two."""
