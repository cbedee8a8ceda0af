"""Windows: packing, padding, framing, and the seeded order that resumes without replay."""

import numpy as np
import pytest

from unmask.data.layouts import AlignedLayout, PackedLayout
from unmask.data.store import Split
from unmask.data.tokenizer import Vocabulary
from unmask.data.windows import DataPosition, Windows, WindowSampler, evaluation_batch, evaluation_batches, order_at, rank_share

VOCAB = Vocabulary(size=30, special_ids=(0, 1, 2, 3, 4), mask_id=4, opener_id=2, closer_id=3, pad_id=0, starts_word=np.ones(30, bool))


def epoch_order(window_count: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's whole order (training evaluates only the positions a step takes)."""
    return order_at(window_count, seed, epoch, np.arange(window_count))


def packed_windows(total_tokens: int, body_len: int, keep_partial: bool) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of packed windows listed one by one: what `PackedLayout` computes."""
    full = total_tokens // body_len
    starts, lengths = list(range(0, full * body_len, body_len)), [body_len] * full
    if keep_partial and total_tokens > full * body_len:
        starts, lengths = starts + [full * body_len], lengths + [total_tokens - full * body_len]
    return np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)


def every_span(layout) -> tuple[np.ndarray, np.ndarray]:
    return layout.spans(np.arange(len(layout)))


def test_packed_windows_frame_the_stream_without_padding():
    starts, lengths = every_span(PackedLayout(10, 4, keep_partial=False))
    assert starts.tolist() == [0, 4] and lengths.tolist() == [4, 4]
    starts, lengths = every_span(PackedLayout(10, 4, keep_partial=True))
    assert starts.tolist() == [0, 4, 8] and lengths.tolist() == [4, 4, 2]


def test_windows_batches_are_framed_and_padded_windows_stay_in_their_document():
    tokens = np.array([10, 11, 12, 3, 20, 21, 22, 23, 24, 3], dtype=np.uint16)  # two docs, separator id 3
    split = Split(tokens, np.array([0, 4, 10]))
    packed = Windows.build(split, seq_len=6, vocab=VOCAB)
    ids, mask, starts = packed.batch(np.array([0, 1]))
    assert starts is None, "a split without word starts gives none"
    assert ids.tolist() == [[2, 10, 11, 12, 3, 3], [2, 20, 21, 22, 23, 3]]
    assert mask.min() == 1
    padded = Windows.build(split, seq_len=6, vocab=VOCAB, packing="padded")
    starts, lengths = padded.layout.spans(np.arange(len(padded)))
    assert list(zip(starts.tolist(), lengths.tolist())) == [(0, 3), (4, 4), (8, 1)]
    ids, mask, _ = padded.batch(np.array([0, 2]))
    assert ids.tolist() == [[2, 10, 11, 12, 3, 0], [2, 24, 3, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]


def test_sampler_order_is_seeded_crosses_epochs_and_resumes_without_replay():
    straight = WindowSampler(10, seed=5)
    taken = [straight.take(4) for _ in range(6)]  # 24 windows: 2.4 epochs
    batches = [indices.tolist() for indices, _ in taken]
    assert sum((epochs.tolist() for _, epochs in taken), []) == [0] * 10 + [1] * 10 + [2] * 4, "each window knows its epoch"
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] == epoch_order(10, 5, 0).tolist() and flat[10:20] == epoch_order(10, 5, 1).tolist()
    assert flat[:10] != flat[10:20], "each epoch has its own order"
    resumed = WindowSampler(10, seed=5, position=DataPosition(epoch=1, position=2))  # after 3 batches
    assert sum((resumed.take(4)[0].tolist() for _ in range(3)), []) == flat[12:]
    assert WindowSampler(10, seed=6).take(10)[0].tolist() != flat[:10]


@pytest.mark.parametrize("count", [1, 2, 3, 10, 17, 64, 65, 1000, 4099])
def test_an_epochs_order_is_a_permutation_of_the_windows_for_any_count(count):
    for seed, epoch in ((0, 0), (3, 1), (2**40, 7)):
        assert sorted(epoch_order(count, seed, epoch).tolist()) == list(range(count))


def test_the_order_is_evaluated_where_asked_without_holding_an_epoch():
    count = 10**12 // 126  # the packed windows of a trillion-token store
    positions = np.arange(5_000_000, 5_004_096)
    taken = order_at(count, 0, 0, positions)
    assert taken.min() >= 0 and taken.max() < count and len(set(taken.tolist())) == len(positions)
    assert np.array_equal(taken[100:200], order_at(count, 0, 0, positions[100:200])), "any slice alone gives the same windows"
    assert not np.array_equal(taken, order_at(count, 0, 1, positions)) and not np.array_equal(taken, order_at(count, 1, 0, positions))


def test_the_order_looks_uniform_where_a_small_set_shows_it():
    # Where window 0 lands over 3,000 seeds, 5 windows: each place about 600 times (a uniform
    # permutation's binomial spread is 22; 6 standard deviations allowed).
    landed = np.bincount([int(np.flatnonzero(epoch_order(5, seed, 0) == 0)[0]) for seed in range(3000)], minlength=5)
    assert np.all(np.abs(landed - 600) < 6 * np.sqrt(3000 * 0.2 * 0.8)), landed


def test_packed_windows_are_arithmetic_and_agree_with_the_listed_ones():
    for total, body, partial in ((10, 4, False), (10, 4, True), (12, 4, True), (3, 4, True), (3, 4, False)):
        layout = PackedLayout(total, body, partial)
        starts, lengths = packed_windows(total, body, partial)
        assert len(layout) == len(starts)
        got = every_span(layout)
        assert got[0].tolist() == starts.tolist() and got[1].tolist() == lengths.tolist()
    huge = PackedLayout(10**12, 126, False)
    assert len(huge) == 10**12 // 126 and huge.spans(np.array([len(huge) - 1]))[0][0] == (len(huge) - 1) * 126


def test_rank_shares_are_disjoint_and_cover_the_global_batch():
    global_batch = np.arange(24)  # batch 3, 2 micro-batches, 4 processes
    shares = [[global_batch[part].tolist() for part in rank_share(rank, 3, 2)] for rank in range(4)]
    assert sorted(sum(sum(shares, []), [])) == list(range(24))
    assert shares[1] == [[6, 7, 8], [9, 10, 11]]
    one_process = [global_batch[part].tolist() for part in rank_share(0, 3, 8)]
    assert sum(one_process, []) == sum(sum(shares, []), []), "1 x 8 micro-batches and 4 x 2 see the same windows in the same order"


def test_word_starts_travel_with_the_window_and_a_window_opens_on_a_word():
    tokens = np.array([10, 11, 12, 3, 20, 21, 22, 23, 24, 3], dtype=np.uint16)
    starts = np.array([1, 0, 1, 1, 1, 0, 0, 1, 0, 1], dtype=bool)  # "10 11" is one word, "20 21 22" another
    split = Split(tokens, np.array([0, 4, 10]), np.packbits(starts))
    assert split.word_starts(0, 10).tolist() == starts.tolist() and split.word_starts(5, 4).tolist() == starts[5:9].tolist()
    ids, _, words = Windows.build(split, seq_len=6, vocab=VOCAB).batch(np.array([0, 1]))
    assert words.tolist() == [[True, True, False, True, True, True], [True, True, False, False, True, True]]
    # The second window opens on token 21, in the middle of the word "20 21 22": it starts the window's word.
    assert ids[1, 1] == 20 and words[1, 2] is np.False_
    shifted = Windows(split, 6, VOCAB, AlignedLayout(np.array([5, 10]), np.array([0, 1]), body_len=4))  # tokens 5..8
    assert shifted.batch(np.array([0]))[2][0].tolist() == [True, True, False, True, False, True]


@pytest.mark.parametrize("count, size, cap", [(10, 4, None), (12, 4, None), (10, 4, 2), (3, 8, None), (0, 4, None), (10**12, 256, 3)])
def test_evaluation_batches_cover_the_windows_in_store_order_once(count, size, cap):
    number = evaluation_batches(count, size, cap)
    batches = [evaluation_batch(count, size, k) for k in range(number)]
    covered = min(count, size * cap) if cap else count
    assert sum(len(b) for b in batches) == covered and all(0 < len(b) <= size for b in batches)
    if covered < 10**6:
        assert np.concatenate(batches or [np.zeros(0, int)]).tolist() == list(range(covered))
