"""Layouts: where a window lies, computed from its number, agrees with the windows listed one by one."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from unmask.data.layouts import COUNTS_CHUNK, AlignedLayout, aligned_window_counts, aligned_window_counts_chunked, search_right


def padded_windows(offsets: np.ndarray, body_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of windows that each stay inside one document, listed one by one:
    what `AlignedLayout` computes from the cumulative counts."""
    starts, lengths = [], []
    for begin, end in zip(np.asarray(offsets)[:-1].tolist(), np.asarray(offsets)[1:].tolist()):
        for start in range(begin, end - 1, body_len):
            starts.append(start)
            lengths.append(min(body_len, end - 1 - start))
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    body_len=st.integers(1, 12),
)
def test_aligned_windows_computed_from_their_number_are_the_listed_ones(lengths, body_len):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    layout = AlignedLayout(offsets, aligned_window_counts(offsets, body_len), body_len)
    starts, lengths_listed = padded_windows(offsets, body_len)
    assert len(layout) == len(starts)
    got = layout.spans(np.arange(len(layout)))
    assert got[0].tolist() == starts.tolist() and got[1].tolist() == lengths_listed.tolist()
    shuffled = np.random.default_rng(0).permutation(len(layout))
    assert layout.spans(shuffled)[0].tolist() == starts[shuffled].tolist(), "any order of indices, as a step asks"


def test_window_counts_in_chunks_are_the_counts_at_once(monkeypatch):
    offsets = np.concatenate([[0], np.cumsum(np.random.default_rng(1).integers(1, 50, 1001))])
    monkeypatch.setattr("unmask.data.layouts.COUNTS_CHUNK", 7)
    chunked = np.concatenate(list(aligned_window_counts_chunked(offsets, 5)))
    assert COUNTS_CHUNK > 7 and chunked.tolist() == aligned_window_counts(offsets, 5).tolist()
    assert np.concatenate(list(aligned_window_counts_chunked(np.zeros(1, np.int64), 5))).tolist() == [0], "an empty split"


@given(
    values=st.lists(st.integers(0, 50), min_size=1, max_size=200).map(sorted),
    keys=st.lists(st.integers(-5, 60), min_size=1, max_size=20),
)
def test_search_within_ranges_is_numpys_search_where_each_key_lands_in_its_range(values, keys):
    values, keys = np.asarray(values), np.asarray(keys)
    expected = np.searchsorted(values, keys, side="right")
    # Ranges that hold the answer, as the coarse table gives them: from a position whose value
    # is not above the key (or 0) to one past the answer.
    lo = np.maximum(expected - 3, 0)
    lo = np.where(values[np.minimum(lo, len(values) - 1)] <= keys, lo, 0)
    hi = np.minimum(expected + 2, len(values))
    assert search_right(values, keys, lo, hi).tolist() == expected.tolist()


@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=80), body_len=st.integers(1, 9), stride=st.integers(1, 9))
def test_a_layout_with_a_coarse_table_finds_the_documents_the_whole_search_finds(lengths, body_len, stride):
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    counts = aligned_window_counts(offsets, body_len)
    whole = AlignedLayout(offsets, counts, body_len)
    coarse = AlignedLayout(offsets, counts, body_len, counts[::stride].copy(), stride)
    every = np.arange(len(whole))
    assert coarse.spans(every)[0].tolist() == whole.spans(every)[0].tolist()
