"""Fixed-length training windows cut from a store split, and the seeded order they are read in.

A window is `[CLS] body [SEP]` with `body` taken from the id stream (which already holds a
[SEP] after every document, so packed windows separate documents like RoBERTa's
FULL-SENTENCES). The order of windows is a seeded permutation per epoch, so the data state
is two integers (epoch, position) and resuming never replays batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from unmask.data.store import Split
from unmask.data.tokenizer import Vocabulary


def packed_windows(total_tokens: int, body_len: int, keep_partial: bool) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of windows laid back to back over the stream.

    Training drops the ragged tail (as run_mlm.py's group_texts does); evaluation keeps it,
    padded, so no held-out token goes unscored.
    """
    full = total_tokens // body_len
    starts = np.arange(full, dtype=np.int64) * body_len
    lengths = np.full(full, body_len, dtype=np.int64)
    tail = total_tokens - full * body_len
    if keep_partial and tail > 0:
        starts = np.append(starts, full * body_len)
        lengths = np.append(lengths, tail)
    return starts, lengths


def padded_windows(offsets: np.ndarray, body_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of windows that each stay inside one document.

    The separator stored after each document is left out: the window's own closing
    token plays its part. A long document continues on the next window.
    """
    starts, lengths = [], []
    for begin, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        content_end = end - 1
        for start in range(begin, content_end, body_len):
            starts.append(start)
            lengths.append(min(body_len, content_end - start))
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


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

    split: Split
    seq_len: int
    vocab: Vocabulary
    starts: np.ndarray
    lengths: np.ndarray

    @classmethod
    def build(
        cls,
        split: Split,
        seq_len: int,
        vocab: Vocabulary,
        packing: Literal["packed", "padded"] = "packed",
        keep_partial: bool = False,
    ) -> Windows:
        body_len = seq_len - 2
        if packing == "packed":
            starts, lengths = packed_windows(len(split.tokens), body_len, keep_partial)
        else:
            starts, lengths = padded_windows(np.asarray(split.offsets), body_len)
        return cls(split, seq_len, vocab, starts, lengths)

    def __len__(self) -> int:
        return len(self.starts)

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
        for row, index in enumerate(indices.tolist()):
            start, length = int(self.starts[index]), int(self.lengths[index])
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


def epoch_order(window_count: int, seed: int, epoch: int) -> np.ndarray:
    """The seeded permutation of windows for one epoch; the same for the same (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(window_count)


class WindowSampler:
    """Hands out window indices in seeded order, epoch after epoch, from any saved position."""

    def __init__(self, window_count: int, seed: int, position: DataPosition | None = None):
        if window_count == 0:
            raise ValueError("no windows to sample from")
        self.window_count = window_count
        self.seed = seed
        self.position = position or DataPosition()
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def _order_for(self, epoch: int) -> np.ndarray:
        if epoch != self._order_epoch:
            self._order = epoch_order(self.window_count, self.seed, epoch)
            self._order_epoch = epoch
        return self._order

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` window indices and the epoch each belongs to; an epoch boundary
        inside a batch is crossed."""
        taken, epochs = [], []
        while count > 0:
            order = self._order_for(self.position.epoch)
            piece = order[self.position.position : self.position.position + count]
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


def sequential_batches(window_count: int, batch_size: int, max_batches: int | None = None):
    """Index batches in store order, for evaluation."""
    for number, start in enumerate(range(0, window_count, batch_size)):
        if max_batches is not None and number >= max_batches:
            return
        yield np.arange(start, min(start + batch_size, window_count))
