import numpy as np
import pytest
import torch

from unmask.config import UnmaskError
from unmask.data.masking import (
    IGNORE_INDEX,
    Masker,
    generator_draws,
    hashed_draws,
    mask_tokens,
    maskable_positions,
    mix32,
    replacement_ids,
    seeded_generator,
)
from unmask.data.tokenizer import Vocabulary

VOCAB = 1000
SPECIALS = [0, 1, 2, 3, 4]  # pad, unk, cls, sep, mask
MASK_ID = 4


def framed_batch(rows: int, length: int, pad_from: int | None = None, seed: int = 0):
    """[CLS] body [SEP] rows of random non-special ids, optionally padded after `pad_from`."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, length), generator=generator)
    ids[:, 0], ids[:, -1] = 2, 3
    attention = torch.ones_like(ids)
    if pad_from is not None:
        ids[:, pad_from:] = 0
        attention[:, pad_from:] = 0
    return ids, attention


VOCABULARY = Vocabulary(
    size=VOCAB, special_ids=tuple(SPECIALS), mask_id=MASK_ID, opener_id=2, closer_id=3, pad_id=0, starts_word=np.ones(VOCAB, bool)
)


class masker:
    """A Masker whose call numbers the rows as windows 0..B-1 of one epoch."""

    def __init__(self, seed: int = 0, epoch: int = 0, **probabilities):
        self.inner, self.epoch = Masker(VOCABULARY, seed=seed, **probabilities), epoch

    def __call__(self, ids, attention):
        rows = len(ids)
        return self.inner(ids, attention, torch.arange(rows), torch.full((rows,), self.epoch))


def test_rate_and_80_10_10_split_on_over_100k_tokens():
    ids, attention = framed_batch(1000, 130)  # 128,000 maskable tokens
    drawn = masker()(ids, attention)
    picked = drawn.labels != IGNORE_INDEX
    maskable = int(drawn.maskable.sum())
    assert maskable == 128_000
    rate = int(picked.sum()) / maskable
    # Binomial std of the rate is about 0.001: five of them is a tolerance a bug cannot hide in.
    assert abs(rate - 0.15) < 0.005, rate
    n = int(picked.sum())
    share_mask = int(drawn.became_mask.sum()) / n
    share_random = int(drawn.became_random.sum()) / n
    share_kept = int((picked & ~drawn.became_mask & ~drawn.became_random).sum()) / n
    assert abs(share_mask - 0.8) < 0.02, share_mask
    assert abs(share_random - 0.1) < 0.015, share_random
    assert abs(share_kept - 0.1) < 0.015, share_kept


def test_custom_rates_are_honoured():
    ids, attention = framed_batch(500, 130)
    drawn = masker(mask_prob=0.4, mask_replace_prob=0.5, random_replace_prob=0.5)(ids, attention)
    picked = drawn.labels != IGNORE_INDEX
    assert abs(int(picked.sum()) / int(drawn.maskable.sum()) - 0.4) < 0.01
    assert int((picked & ~drawn.became_mask & ~drawn.became_random).sum()) == 0
    assert abs(int(drawn.became_mask.sum()) / int(picked.sum()) - 0.5) < 0.02


def test_specials_and_padding_never_picked():
    ids, attention = framed_batch(400, 64, pad_from=40)
    ids[:, 10] = 1  # an [UNK] inside the text is special too
    drawn = masker(mask_prob=0.9)(ids, attention)
    picked = drawn.labels != IGNORE_INDEX
    assert not picked[:, 0].any() and not picked[:, 10].any() and not picked[:, 40:].any()
    assert picked[:, 1:10].float().mean() > 0.8  # the rate is high, so absence above is not luck
    # Padding and specials come out unchanged.
    assert torch.equal(drawn.input_ids[:, 40:], ids[:, 40:])
    assert torch.equal(drawn.input_ids[:, 0], ids[:, 0])


def test_labels_are_minus_100_exactly_off_the_mask_and_original_on_it():
    ids, attention = framed_batch(50, 64)
    original = ids.clone()
    drawn = masker()(ids, attention)
    picked = drawn.labels != IGNORE_INDEX
    assert torch.equal(drawn.labels[picked], original[picked])
    assert torch.all(drawn.labels[~picked] == IGNORE_INDEX)
    assert torch.equal(ids, original), "the input tensor must not be modified in place"
    assert torch.equal(drawn.input_ids[~picked], original[~picked])
    assert torch.all(drawn.input_ids[drawn.became_mask] == MASK_ID)


def test_random_replacements_come_from_the_whole_vocabulary_without_specials():
    ids = torch.full((200, 130), 10)  # every token is id 10: the batch max is 10
    ids[:, 0], ids[:, -1] = 2, 3
    drawn = masker(mask_prob=0.99, mask_replace_prob=0.0, random_replace_prob=1.0)(ids, torch.ones_like(ids))
    replaced = drawn.input_ids[drawn.became_random]
    assert len(replaced) > 20_000
    assert not torch.isin(replaced, torch.tensor(SPECIALS)).any()
    assert replaced.max() > 900, "draws must span the vocabulary, not the batch's largest id"
    pool = replacement_ids(VOCAB, torch.tensor(SPECIALS))
    assert len(pool) == VOCAB - len(SPECIALS)


def test_same_seed_same_mask_and_seed_zero_is_a_real_seed():
    ids, attention = framed_batch(20, 64)
    first = masker(seed=0)(ids, attention)
    again = masker(seed=0)(ids, attention)
    other = masker(seed=1)(ids, attention)
    assert torch.equal(first.input_ids, again.input_ids) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.labels, other.labels)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5])
def test_mask_probability_outside_open_interval_is_refused(bad):
    with pytest.raises(UnmaskError, match="mask-prob"):
        masker(mask_prob=bad)
    ids, attention = framed_batch(2, 16)
    with pytest.raises(UnmaskError, match="mask-prob"):
        mask_tokens(
            ids,
            maskable_positions(ids, torch.tensor(SPECIALS), attention),
            generator_draws(ids.shape, seeded_generator(0), VOCAB - 5),
            mask_token_id=MASK_ID,
            random_pool=torch.arange(5, VOCAB),
            mask_prob=bad,
        )


def test_replacement_shares_must_fit_in_one():
    with pytest.raises(UnmaskError, match="at most 1"):
        masker(mask_replace_prob=0.8, random_replace_prob=0.3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_masking_runs_on_cuda_tensors():
    ids, attention = framed_batch(100, 128)
    rows = torch.arange(100)
    on_gpu = Masker(VOCABULARY, seed=0, device="cuda")(ids.cuda(), attention.cuda(), rows.cuda(), torch.zeros(100).long().cuda())
    on_cpu = Masker(VOCABULARY, seed=0)(ids, attention, rows, torch.zeros(100).long())
    assert on_gpu.input_ids.is_cuda
    assert torch.equal(on_gpu.labels.cpu(), on_cpu.labels) and torch.equal(on_gpu.input_ids.cpu(), on_cpu.input_ids), (
        "masks are device-independent"
    )


def test_a_mask_is_a_function_of_seed_epoch_window_and_position_only():
    ids, attention = framed_batch(8, 64)
    inner = Masker(VOCABULARY, seed=3)
    windows, epochs = torch.tensor([5, 9, 2, 7, 11, 40, 3, 1]), torch.tensor([0, 0, 1, 1, 0, 2, 0, 0])
    whole = inner(ids, attention, windows, epochs)
    # The same windows in another batch layout: reversed order, and one at a time.
    backwards = inner(ids.flip(0), attention, windows.flip(0), epochs.flip(0))
    assert torch.equal(backwards.labels.flip(0), whole.labels) and torch.equal(backwards.input_ids.flip(0), whole.input_ids)
    for row in range(8):
        alone = inner(ids[row : row + 1], attention[row : row + 1], windows[row : row + 1], epochs[row : row + 1])
        assert torch.equal(alone.labels[0], whole.labels[row])
    # Another epoch, window or seed draws anew.
    for other in (
        inner(ids, attention, windows, epochs + 1),
        inner(ids, attention, windows + 1, epochs),
        Masker(VOCABULARY, seed=4)(ids, attention, windows, epochs),
    ):
        assert not torch.equal(other.labels, whole.labels)


def test_hashed_draws_are_uniform_and_independent_across_streams_positions_and_windows():
    draws = hashed_draws(7, torch.zeros(2000, dtype=torch.long), torch.arange(2000), 128, 1000)
    for uniform in (draws.pick, draws.split):
        assert 0.0 <= float(uniform.min()) and float(uniform.max()) < 1.0
        assert abs(float(uniform.mean()) - 0.5) < 0.003 and abs(float(uniform.var()) - 1 / 12) < 0.002
        histogram = torch.histc(uniform.flatten(), bins=20, min=0, max=1)
        expected = uniform.numel() / 20
        assert float(((histogram - expected) ** 2 / expected).sum()) < 45, "chi-square over 19 degrees of freedom, p < 0.001"
    pairs = [
        (draws.pick.flatten(), draws.split.flatten()),
        (draws.pick[:, :-1].flatten(), draws.pick[:, 1:].flatten()),
        (draws.pick[:-1].flatten(), draws.pick[1:].flatten()),
    ]
    for a, b in pairs:
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01
    counts = torch.bincount(draws.choice.flatten(), minlength=1000).float()
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean() and draws.choice.max() < 1000


def test_the_32_bit_hash_never_overflows_and_matches_exact_arithmetic():
    def reference(x: int) -> int:  # lowbias32 with Python's unbounded integers
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 123456789, 0xDEADBEEF]
    assert [int(v) for v in mix32(torch.tensor(values))] == [reference(v) for v in values] == [mix32(v) for v in values]
    windows = torch.tensor([2**40 + 3, 3])
    far = hashed_draws(0, torch.zeros(2, dtype=torch.long), windows, 16, 10)
    assert not torch.equal(far.pick[0], far.pick[1]), "window ids beyond 2**32 are told apart"


def test_generator_draws_keep_the_order_evaluation_has_always_used():
    first = generator_draws((3, 9), seeded_generator(11), 50)
    generator = seeded_generator(11)
    assert torch.equal(first.pick, torch.rand((3, 9), generator=generator))
    assert torch.equal(first.split, torch.rand((3, 9), generator=generator))
    assert torch.equal(first.choice, torch.randint(50, (3, 9), generator=generator))


def worded_batch(rows: int, length: int, seed: int = 0, pad_from: int | None = None):
    """Framed rows with word starts (about 1.7 tokens a word) and an [UNK] inside the text."""
    ids, attention = framed_batch(rows, length, pad_from, seed)
    starts = torch.rand(rows, length, generator=torch.Generator().manual_seed(seed + 1)) < 0.6
    starts[:, :2] = True
    ids[:, 10], starts[:, 10:12] = 1, True  # a special token is a word of its own
    starts[:, -1] = True
    if pad_from is not None:
        starts[:, pad_from - 1 :] = True
    return ids, attention, starts


def strategy_draw(strategy: str, ids, attention, starts, seed: int = 0, **probabilities):
    inner = Masker(VOCABULARY, seed=seed, strategy=strategy, **probabilities)
    return inner(ids, attention, torch.arange(len(ids)), torch.zeros(len(ids), dtype=torch.long), word_starts=starts)


def first_of_word(starts):
    from unmask.data.masking import word_first_positions

    return word_first_positions(starts)


@pytest.mark.parametrize("strategy,rows,tolerance", [("whole-word", 1000, 0.007), ("span", 4000, 0.008)])
@pytest.mark.parametrize("mask_prob", [0.15, 0.3])
def test_word_strategies_mask_the_asked_share_of_tokens(strategy, rows, tolerance, mask_prob):
    ids, attention, starts = worded_batch(rows, 130)
    drawn = strategy_draw(strategy, ids, attention, starts, mask_prob=mask_prob)
    picked = drawn.labels != IGNORE_INDEX
    rate = int(picked.sum()) / int(drawn.maskable.sum())
    assert abs(rate - mask_prob) < tolerance, (strategy, rate)
    # The first words of a window are covered as often as later ones (no edge deficit).
    early = picked[:, 2:12].float().mean().item()
    assert abs(early - mask_prob) < 0.03, early


@pytest.mark.parametrize("strategy", ["whole-word", "span"])
def test_every_piece_of_a_word_shares_its_words_fate(strategy):
    ids, attention, starts = worded_batch(1000, 130)
    drawn = strategy_draw(strategy, ids, attention, starts)
    first = first_of_word(starts)
    picked = drawn.labels != IGNORE_INDEX
    for outcome in (picked, drawn.became_mask, drawn.became_random):
        assert torch.equal(outcome, outcome.gather(1, first)), "a word is picked, masked or replaced whole"
    assert (starts & ~starts.roll(-1, dims=1))[:, :-1].any(), "the batch has words of several pieces"


@pytest.mark.parametrize("strategy", ["whole-word", "span"])
def test_the_80_10_10_split_applies_per_word_or_span(strategy):
    ids, attention, starts = worded_batch(3000, 130)
    drawn = strategy_draw(strategy, ids, attention, starts)
    picked = drawn.labels != IGNORE_INDEX
    heads = picked & starts  # one vote per picked word
    words = int(heads.sum())
    shares = [int((heads & drawn.became_mask).sum()) / words, int((heads & drawn.became_random).sum()) / words]
    assert abs(shares[0] - 0.8) < 0.03 and abs(shares[1] - 0.1) < 0.025, shares
    if strategy == "span":
        # A span is masked, replaced or kept as one: neighbouring picked words mostly agree.
        both = picked[:, 1:] & picked[:, :-1] & starts[:, 1:]
        agree = (drawn.became_mask[:, 1:] == drawn.became_mask[:, :-1])[both].float().mean().item()
        assert agree > 0.9, agree


@pytest.mark.parametrize("strategy", ["token", "whole-word", "span"])
def test_no_strategy_ever_picks_specials_or_padding(strategy):
    ids, attention, starts = worded_batch(400, 64, pad_from=40)
    drawn = strategy_draw(strategy, ids, attention, starts, mask_prob=0.9)
    picked = drawn.labels != IGNORE_INDEX
    assert not picked[:, 0].any() and not picked[:, 10].any() and not picked[:, 40:].any()
    assert picked[:, 1:10].float().mean() > 0.6, "a high rate, so the absence above is not luck"
    assert torch.equal(drawn.input_ids[:, 40:], ids[:, 40:])


@pytest.mark.parametrize("strategy", ["whole-word", "span"])
def test_word_strategy_masks_are_a_function_of_seed_epoch_window_and_position(strategy):
    ids, attention, starts = worded_batch(8, 64)
    inner = Masker(VOCABULARY, seed=5, strategy=strategy)
    windows, epochs = torch.tensor([4, 8, 15, 16, 23, 42, 1, 2]), torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    whole = inner(ids, attention, windows, epochs, word_starts=starts)
    for row in range(8):
        alone = inner(
            ids[row : row + 1], attention[row : row + 1], windows[row : row + 1], epochs[row : row + 1], word_starts=starts[row : row + 1]
        )
        assert torch.equal(alone.labels[0], whole.labels[row]) and torch.equal(alone.input_ids[0], whole.input_ids[row])
    other = inner(ids, attention, windows, epochs + 1, word_starts=starts)
    assert not torch.equal(other.labels, whole.labels)
    with pytest.raises(ValueError, match="needs word starts"):
        inner(ids, attention, windows, epochs)


def test_span_lengths_are_geometric_truncated_at_ten_with_spanberts_mean():
    from unmask.data.masking import span_lengths, span_start_rate

    lengths = span_lengths(torch.rand(200_000, generator=torch.Generator().manual_seed(0)))
    assert int(lengths.min()) == 1 and int(lengths.max()) == 10
    assert abs(float(lengths.float().mean()) - 3.8) < 0.03
    assert abs(float((lengths == 1).float().mean()) - 0.2 / (1 - 0.8**10)) < 0.005
    assert 0.15 / 3.8 < span_start_rate(0.15) < 0.15 / 3.0, "overlaps need a little more than rate / mean length"
