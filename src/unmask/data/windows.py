"""Fixed-length training windows cut from a store split, and the seeded order they are read in.

A window is `[CLS] body [SEP]` with `body` taken from the id stream (which already holds a
[SEP] after every document, so packed windows separate documents like RoBERTa's
FULL-SENTENCES). The order of windows is a seeded permutation per epoch, so the data state
is two integers (epoch, position) and resuming never replays batches.

Nothing here grows with the corpus: where window i lies is computed from i (`data.layouts`:
arithmetic for packed windows, the store's memory-mapped window index for windows that keep
to documents), and an epoch's order is a keyed bijection of window indices (`order_at`)
evaluated for the positions a step takes, never a permutation held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from unmask.data.layouts import AlignedLayout, PackedLayout, PiecedLayout
from unmask.data.store import JoinedSplit, Split
from unmask.data.tokenizer import Vocabulary


class WindowBatch(NamedTuple):
    input_ids: np.ndarray
    """int64 (B, seq_len)."""
    attention_mask: np.ndarray
    """int64 (B, seq_len): 1 on tokens, 0 on padding."""
    word_starts: np.ndarray | None
    """bool (B, seq_len): does the token begin a word? The framing tokens and padding are words
    of their own. None where the store has no word starts."""


@dataclass
class Windows:
    """Windows of one split, assembled into (input_ids, attention_mask) batches."""

    split: Split | JoinedSplit
    seq_len: int
    vocab: Vocabulary
    layout: PackedLayout | AlignedLayout | PiecedLayout

    @classmethod
    def build(
        cls,
        split: Split | JoinedSplit,
        seq_len: int,
        vocab: Vocabulary,
        packing: Literal["packed", "padded"] = "packed",
        keep_partial: bool = False,
    ) -> Windows:
        body_len = seq_len - 2
        if packing == "packed":
            return cls(split, seq_len, vocab, PackedLayout(len(split.tokens), body_len, keep_partial))
        return cls(split, seq_len, vocab, split.aligned_layout(seq_len))

    def __len__(self) -> int:
        return len(self.layout)

    @property
    def has_word_starts(self) -> bool:
        return self.split.words is not None

    def batch(self, indices: np.ndarray) -> WindowBatch:
        """The windows `indices`, framed and padded to seq_len."""
        count = len(indices)
        input_ids = np.full((count, self.seq_len), self.vocab.pad_id, dtype=np.int64)
        attention_mask = np.zeros((count, self.seq_len), dtype=np.int64)
        starts = np.ones((count, self.seq_len), dtype=bool) if self.has_word_starts else None
        input_ids[:, 0] = self.vocab.opener_id
        spans = self.layout.spans(np.asarray(indices, dtype=np.int64))
        for row, (start, length) in enumerate(zip(spans[0].tolist(), spans[1].tolist())):
            input_ids[row, 1 : 1 + length] = self.split.tokens[start : start + length]
            input_ids[row, 1 + length] = self.vocab.closer_id
            attention_mask[row, : length + 2] = 1
            if starts is not None:
                starts[row, 1 : 1 + length] = self.split.word_starts(start, length)
                # A window may open in the middle of a word: its first piece starts the window's word.
                starts[row, 1] = True
        return WindowBatch(input_ids, attention_mask, starts)


@dataclass
class DataPosition:
    """Where the next batch starts: the epoch and the position in that epoch's permutation."""

    epoch: int = 0
    position: int = 0


ORDER_ROUNDS = 6
"""Rounds of the Feistel network behind `order_at`."""
WINDOW_ORDER = f"feistel-{ORDER_ROUNDS}"
"""The name of the order `order_at` draws, recorded in every checkpoint: a run resumed under
another order (one checkpointed before this one existed drew NumPy permutations) is told that
the rest of its epoch is drawn anew."""
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (the products wrap modulo 2**64, as intended)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _round_keys(seed: int, epoch: int) -> list[np.uint64]:
    state = np.array([(seed * 0x9E3779B97F4A7C15 + epoch) & _MASK64], dtype=np.uint64)
    keys = []
    for number in range(ORDER_ROUNDS):
        state = _mix64(state ^ np.uint64(0xD1B54A32D192ED03 + number))
        keys.append(state[0])
    return keys


def order_at(window_count: int, seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """The windows at `positions` of epoch `epoch`'s order: a keyed bijection of [0, window_count),
    evaluated where asked, so that no process ever holds an epoch's order.

    A Feistel network of `ORDER_ROUNDS` rounds (keyed by seed and epoch) permutes the smallest
    domain of an even number of bits that holds every window (under 4x the count); a value that
    lands outside the windows is sent through again until it lands inside (cycle walking), which
    keeps it a bijection of the windows. What it gives up against a uniform permutation: it is
    one of the 2**64-odd permutations the keys reach, not one drawn from all n! of them, which no
    shuffle of a training order can tell apart.
    """
    positions = np.asarray(positions, dtype=np.uint64)
    if window_count <= 1:
        return np.zeros(len(positions), dtype=np.int64)
    half = ((window_count - 1).bit_length() + 1) // 2
    mask, shift = np.uint64((1 << half) - 1), np.uint64(half)
    keys = _round_keys(seed, epoch)

    def permute(values: np.ndarray) -> np.ndarray:
        left, right = values >> shift, values & mask
        for key in keys:
            left, right = right, left ^ (_mix64(right ^ key) & mask)
        return (left << shift) | right

    order = permute(positions)
    outside = order >= np.uint64(window_count)
    while outside.any():
        order[outside] = permute(order[outside])
        outside = order >= np.uint64(window_count)
    return order.astype(np.int64)


class WindowSampler:
    """Hands out window indices in seeded order, epoch after epoch, from any saved position."""

    def __init__(self, window_count: int, seed: int, position: DataPosition | None = None):
        if window_count == 0:
            raise ValueError("no windows to sample from")
        self.window_count = window_count
        self.seed = seed
        self.position = position or DataPosition()

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` window indices and the epoch each belongs to; an epoch boundary
        inside a batch is crossed."""
        taken, epochs = [], []
        while count > 0:
            here = min(count, self.window_count - self.position.position)
            positions = np.arange(self.position.position, self.position.position + here)
            piece = order_at(self.window_count, self.seed, self.position.epoch, positions)
            taken.append(piece)
            epochs.append(np.full(len(piece), self.position.epoch, dtype=np.int64))
            count -= len(piece)
            self.position.position += len(piece)
            if self.position.position >= self.window_count:
                self.position = DataPosition(self.position.epoch + 1, 0)
        return np.concatenate(taken), np.concatenate(epochs)


def rank_share(rank: int, batch_size: int, micro_batches: int) -> list[slice]:
    """Where this rank's micro-batches lie in one global step of `batch x micro_batches x world` windows.

    Rank r takes the r-th block of `batch x micro_batches` windows: the shares are disjoint
    and together they are the step, so any split of the same global batch trains on the
    same windows.
    """
    start = rank * batch_size * micro_batches
    return [slice(start + m * batch_size, start + (m + 1) * batch_size) for m in range(micro_batches)]


def evaluation_batches(window_count: int, batch_size: int, max_batches: int | None = None) -> int:
    """How many batches of `batch_size` windows in store order evaluation reads (at most `max_batches`)."""
    count = -(-window_count // batch_size)
    return count if max_batches is None else min(count, max_batches)


def evaluation_batch(window_count: int, batch_size: int, number: int) -> np.ndarray:
    """The windows of evaluation batch `number`, in store order: computed, never listed, so a
    held-out split of billions of windows costs nothing to walk."""
    return np.arange(number * batch_size, min((number + 1) * batch_size, window_count))
