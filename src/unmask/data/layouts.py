"""Where each training window lies in a split's token stream, computed from the window's
number: nothing here is listed window by window, so memory does not grow with the corpus.

- `PackedLayout`: windows back to back over the stream (arithmetic).
- `AlignedLayout`: windows that keep to documents (`--packing padded`), found from the
  cumulative count of windows before each document (`aligned_window_counts`), which `prepare`
  writes once per window length and training memory-maps (`data.window_index`), with every
  `COARSE_STRIDE`-th count in memory so that a lookup reads one page of it.
- `PiecedLayout`: a store of shards, whose split is pieces of its shards' splits read as one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNTS_CHUNK = 1 << 22
"""Documents whose window counts are computed at once (bounds memory while an index is written)."""
COARSE_STRIDE = 512
"""Every this many documents, the window count is also kept in a small table (an index file
ends with it, and training holds it): a lookup then reads one page of the counts, not the
log2(documents) pages a binary search over the whole file would fault in."""


def aligned_window_counts(offsets: np.ndarray, body_len: int) -> np.ndarray:
    """int64 of len(offsets): how many document-aligned windows of `body_len` come before each
    document, and the total last.

    A document of n tokens (its separator included) gives ceil((n - 1) / body_len) windows: the
    separator is left out, the window's own closing token playing its part, and a long
    document continues on the next window.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    contents = np.diff(offsets) - 1
    per_document = (np.maximum(contents, 0) + body_len - 1) // body_len
    return np.concatenate([[0], np.cumsum(per_document)]).astype(np.int64)


def aligned_window_counts_chunked(offsets: np.ndarray, body_len: int):
    """`aligned_window_counts` in pieces of at most `COUNTS_CHUNK` documents, for writing an
    index of any size with bounded memory; the first piece starts with the leading 0."""
    base = 0
    for first in range(0, max(len(offsets) - 1, 0), COUNTS_CHUNK):
        chunk = aligned_window_counts(np.asarray(offsets[first : first + COUNTS_CHUNK + 1]), body_len) + base
        yield chunk if first == 0 else chunk[1:]
        base = int(chunk[-1])
    if len(offsets) <= 1:
        yield np.zeros(1, dtype=np.int64)


def search_right(values: np.ndarray, keys: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each key, the first position in [lo, hi) of the sorted `values` whose value is above
    the key (hi where none is): `np.searchsorted(values, keys, "right")` where each key is
    known to land in its own range, reading only `values` inside those ranges (NumPy's search
    reads the whole array: a memory-mapped index of billions of entries would be paged in)."""
    lo, hi = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        middle = (lo + hi) // 2
        above = np.asarray(values[np.where(open_, middle, 0)]) > keys
        hi = np.where(open_ & above, middle, hi)
        lo = np.where(open_ & ~above, middle + 1, lo)


@dataclass(frozen=True)
class PackedLayout:
    """Windows laid back to back over a stream of `total_tokens`, by arithmetic: window i
    starts at i * body_len. Training drops the ragged tail (as run_mlm.py's group_texts does);
    evaluation keeps it (`keep_partial`), padded, so no held-out token goes unscored."""

    total_tokens: int
    body_len: int
    keep_partial: bool

    def __len__(self) -> int:
        full, tail = divmod(self.total_tokens, self.body_len)
        return full + (1 if self.keep_partial and tail else 0)

    def spans(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) of windows `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        starts = indices * self.body_len
        return starts, np.minimum(self.body_len, self.total_tokens - starts)


@dataclass(frozen=True)
class AlignedLayout:
    """Windows that each stay inside one document: window i lies in the document d with
    counts[d] <= i < counts[d + 1], at (i - counts[d]) * body_len from its start. `offsets` and
    `counts` may be memory-maps: a batch reads a few pages of each."""

    offsets: np.ndarray
    counts: np.ndarray
    body_len: int
    coarse: np.ndarray | None = None
    """counts[::stride], in memory, where `counts` is a memory-mapped index."""
    stride: int = COARSE_STRIDE

    def __len__(self) -> int:
        return int(self.counts[-1])

    def documents(self, indices: np.ndarray) -> np.ndarray:
        """The document each window lies in."""
        if self.coarse is None:
            return np.searchsorted(self.counts, indices, side="right") - 1
        block = np.searchsorted(self.coarse, indices, side="right") - 1
        lo = block * self.stride
        return search_right(self.counts, indices, lo, np.minimum(lo + self.stride, len(self.counts))) - 1

    def spans(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        documents = self.documents(indices)
        starts = np.asarray(self.offsets[documents], dtype=np.int64) + (indices - self.counts[documents]) * self.body_len
        content_ends = np.asarray(self.offsets[documents + 1], dtype=np.int64) - 1
        return starts, np.minimum(self.body_len, content_ends - starts)


@dataclass(frozen=True)
class PiecedLayout:
    """Document-aligned windows of a split made of pieces of other splits: piece p holds the
    windows `first_window[p]` to `first_window[p] + sizes[p]` of its own layout, and its tokens
    begin at `token_base[p]` of the joined stream, where its own stream's `token_origin[p]` lands."""

    layouts: list[AlignedLayout]
    first_window: np.ndarray
    window_base: np.ndarray
    """Cumulative windows before each piece, and the total last."""
    token_base: np.ndarray
    token_origin: np.ndarray

    def __len__(self) -> int:
        return int(self.window_base[-1])

    def spans(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        pieces = np.searchsorted(self.window_base, indices, side="right") - 1
        starts, lengths = np.zeros(len(indices), np.int64), np.zeros(len(indices), np.int64)
        for piece in np.unique(pieces).tolist():
            where = pieces == piece
            local = indices[where] - self.window_base[piece] + self.first_window[piece]
            own_starts, lengths[where] = self.layouts[piece].spans(local)
            starts[where] = own_starts - self.token_origin[piece] + self.token_base[piece]
        return starts, lengths
