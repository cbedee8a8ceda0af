"""The FLOP formulas of `models.flops` against torch's own count, and the attention segments they read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForMaskedLM, DistilBertConfig

from unmask.data.tokenizer import Vocabulary
from unmask.models.architectures import document_ids, document_mask, picks_of
from unmask.models.flops import TRAINING_PASSES, Shape, segments_of
from unmask.models.masked_lm import MaskedLM, build_config

VOCAB = Vocabulary(size=1000, special_ids=frozenset({0, 1, 2, 3}), mask_id=1, opener_id=2, closer_id=3, pad_id=0, starts_word=None)
WINDOWS, LENGTH = 4, 64


def _model(family: str, attention: str) -> MaskedLM:
    torch.manual_seed(0)
    if family == "distilbert":
        config = DistilBertConfig(vocab_size=VOCAB.size, dim=128, hidden_dim=512, n_layers=2, n_heads=2, pad_token_id=0)
    else:
        config = build_config(family, "tiny", VOCAB, LENGTH)
    return MaskedLM(AutoModelForMaskedLM.from_config(config, attn_implementation=attention))


def _counted(lm: MaskedLM, backward: bool) -> tuple[int, Shape]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, VOCAB.size, (WINDOWS, LENGTH), generator=generator)
    picked = torch.rand(WINDOWS, LENGTH, generator=generator) < 0.15
    picks = picks_of(picked)
    lm.train()
    with FlopCounterMode(display=False) as counter:
        loss, _ = lm(ids, None, ids.reshape(-1)[picks.flat], picks)
        if backward:
            loss.backward()
    return counter.get_total_flops(), Shape(np.full(WINDOWS, LENGTH), int(picked.sum()))


# SDPA is what training runs (BERT's family then takes the masked-only last layer); eager is
# the dense path. ModernBERT is counted under eager: on the CPU, torch's counter does not see
# inside SDPA's fused kernel, and at 64 tokens every key is within its sliding window, so the
# eager path (which computes every pair under a mask) does exactly the useful work.
CASES = [
    ("bert", "sdpa"),
    ("bert", "eager"),
    ("roberta", "sdpa"),
    ("distilbert", "sdpa"),
    ("modernbert", "eager"),
    ("deberta-v2", "eager"),
]


@pytest.mark.parametrize("family, attention", CASES)
def test_each_familys_formula_is_within_5_percent_of_torchs_count(family, attention):
    lm = _model(family, attention)
    counted, shape = _counted(lm, backward=False)
    estimated = lm.forward_flops(shape)
    assert estimated == pytest.approx(counted, rel=0.05), f"{family} ({attention}): formula {estimated:.4g}, torch counted {counted:.4g}"


def test_the_masked_only_last_layer_is_counted_as_cheaper_and_a_step_is_three_passes():
    sparse, dense = _model("bert", "sdpa"), _model("bert", "eager")
    _, shape = _counted(sparse, backward=False)
    assert sparse.forward_flops(shape) < 0.8 * dense.forward_flops(shape)
    forward, _ = _counted(sparse, backward=False)
    step, _ = _counted(sparse, backward=True)
    assert step == pytest.approx((TRAINING_PASSES) * forward, rel=0.01)


def test_sliding_window_pairs_are_the_pairs_within_the_window():
    for length in (1, 5, 64, 65, 66, 200):
        for half in (1, 4, 64):
            index = np.arange(length)
            expected = int((np.abs(index[:, None] - index[None, :]) <= half).sum())
            assert Shape(np.array([length]), 0).pairs(half) == expected, (length, half)
    assert Shape(np.array([3, 10]), 0).pairs() == 9 + 100


def test_segments_are_real_lengths_or_documents_and_their_pairs_are_the_attention_masks():
    # [CLS] a a [SEP] b b b [SEP] c [SEP] [PAD] [PAD]  with [CLS]=2, [SEP]=3, [PAD]=0; a second row unpadded
    ids = torch.tensor([[2, 7, 8, 3, 9, 9, 9, 3, 7, 3, 0, 0], [2, 7, 7, 7, 7, 7, 3, 8, 8, 8, 8, 3]])
    attention = (ids != 0).to(torch.int64)
    assert sorted(segments_of(attention.numpy()).tolist()) == [10, 12]
    documents = document_ids(ids, attention, separator_id=3)
    segments = segments_of(attention.numpy(), documents.numpy())
    assert sorted(segments.tolist()) == [2, 4, 4, 5, 7]
    real = attention.bool()
    allowed = document_mask(documents)[:, 0] & real[:, :, None] & real[:, None, :]
    assert Shape(segments, 0).pairs() == int(allowed.sum())
    assert Shape(segments, 0).tokens == int(real.sum())
