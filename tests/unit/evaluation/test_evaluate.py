"""Held-out evaluation, anchored on plain transformers computations."""

import math

import numpy as np
import pytest
import torch
from conftest import quiet, tiny_bert
from transformers import AutoModelForMaskedLM, AutoTokenizer

from unmask.config import UnmaskError
from unmask.data.store import TokenStore
from unmask.data.tokenizer import Vocabulary, word_start_table
from unmask.data.windows import Windows
from unmask.evaluation.heldout import eval_masker, evaluate_model, held_out_windows, mask_windows, word_piece_mask
from unmask.models.masked_lm import load_mlm


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def windows(store_dir, tokenizer):
    return held_out_windows([str(store_dir)], tokenizer, seq_len=32)


def evaluate(model_dir, windows, batch_size=4, **kwargs):
    lm = load_mlm(str(model_dir), echo=quiet)
    return evaluate_model(lm, windows, batch_size=batch_size, device=torch.device("cpu"), **kwargs)[0]


def test_eval_loss_and_accuracy_equal_plain_transformers_on_the_same_masked_batch(tiny_model_dir, windows, tokenizer):
    indices = np.arange(len(windows))
    original, attention = (torch.from_numpy(a) for a in windows.batch(indices)[:2])
    masked = mask_windows(eval_masker(Vocabulary.from_tokenizer(tokenizer)), original, attention, indices)
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        output = model(input_ids=masked.input_ids, attention_mask=attention, labels=masked.labels)
    picked = masked.labels != -100
    reference_accuracy = (output.logits[picked].argmax(-1) == masked.labels[picked]).float().mean().item()
    ours = evaluate(tiny_model_dir, windows, batch_size=len(windows))
    assert ours.masked_tokens == int(picked.sum())
    assert ours.loss == pytest.approx(output.loss.item(), rel=1e-5)
    assert ours.accuracy == pytest.approx(reference_accuracy)
    assert ours.perplexity == pytest.approx(math.exp(output.loss.item()), rel=1e-5)


def test_eval_is_a_mean_over_tokens_whatever_the_batching(tiny_model_dir, windows, tokenizer):
    """Per-window seeds make the positions independent of batch size; a mean of batch means would not survive this."""
    small, large = (evaluate(tiny_model_dir, windows, batch_size=b) for b in (3, 7))
    assert small.masked_tokens == large.masked_tokens
    assert small.loss == pytest.approx(large.loss, rel=1e-6)
    assert small.accuracy == large.accuracy and small.top5_accuracy == large.top5_accuracy


def test_top5_and_word_split_metrics_are_consistent(tiny_model_dir, windows, tokenizer):
    metrics = evaluate(tiny_model_dir, windows)
    assert metrics.top5_accuracy >= metrics.accuracy
    assert metrics.whole_word_tokens + metrics.word_piece_tokens == metrics.masked_tokens
    assert metrics.word_piece_tokens > 0 and metrics.whole_word_tokens > 0


def test_word_pieces_are_told_from_whole_words(tokenizer):
    table = word_start_table(tokenizer)
    vocab = tokenizer.get_vocab()
    assert all(not table[i] for t, i in vocab.items() if t.startswith("##"))
    assert all(table[i] for t, i in vocab.items() if not t.startswith("##"))
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    starts = np.ones(20, dtype=bool)
    starts[11] = False  # token 11 continues the word begun by token 10
    pieces = word_piece_mask(ids, starts, torch.isin(ids, torch.tensor([2, 3])))
    assert pieces.tolist() == [[False, True, True, False, False]]


def test_eval_on_text_files_and_refusal_of_a_store_from_another_tokenizer(tiny_model_dir, corpus_dir, tokenizer, roberta_dir, store_dir):
    from_files = held_out_windows([str(corpus_dir)], tokenizer, 32)
    assert from_files.split.documents == 40
    metrics = evaluate(tiny_model_dir, from_files)
    assert metrics.masked_tokens > 100 and math.isfinite(metrics.loss)
    with pytest.raises(UnmaskError, match="pass the text files instead"):
        held_out_windows([str(store_dir)], AutoTokenizer.from_pretrained(roberta_dir), 32)
    with pytest.raises(UnmaskError, match="--split: 'test' is not a split"):
        held_out_windows([str(store_dir)], tokenizer, 32, split="test")


def test_training_windows_of_a_store_and_its_own_windows_score_alike(tiny_model_dir, store_dir, tokenizer, windows):
    """The store's recorded vocabulary and the tokenizer's give the same windows and the same numbers."""
    store = TokenStore.open(store_dir)
    from_store = Windows.build(store.split("val"), 32, store.vocabulary(), keep_partial=True)
    assert np.array_equal(from_store.batch(np.arange(len(from_store)))[0], windows.batch(np.arange(len(windows)))[0])
    assert evaluate(tiny_model_dir, from_store) == evaluate(tiny_model_dir, windows)


def test_two_models_are_scored_on_the_same_positions(tiny_model_dir, windows, tokenizer, tmp_path):
    other_dir = tmp_path / "other"
    tiny_bert(len(tokenizer), seed=1).save_pretrained(other_dir)
    tokenizer.save_pretrained(other_dir)
    together = evaluate_model(
        [load_mlm(str(d), echo=quiet) for d in (tiny_model_dir, other_dir)], windows, batch_size=5, device=torch.device("cpu")
    )
    alone = [evaluate(d, windows) for d in (tiny_model_dir, other_dir)]
    for a, b in zip(together, alone):
        assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.accuracy == b.accuracy


def test_a_head_past_its_logits_budget_scores_in_chunks_with_the_same_metrics(tiny_model_dir, windows, monkeypatch):
    import unmask.models.masked_lm as masked_lm

    whole = evaluate(tiny_model_dir, windows, batch_size=8)
    calls = []
    real = masked_lm.scored_in_chunks

    def counting(*args, **kwargs):
        calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(masked_lm, "scored_in_chunks", counting)
    monkeypatch.setattr(masked_lm, "HEAD_LOGITS_ELEMENTS", 3 * tiny_bert_vocab(tiny_model_dir))  # 3 positions' logits at a time
    chunked = evaluate(tiny_model_dir, windows, batch_size=8)
    assert calls and set(calls) == {3}, "the evaluation went through the chunked head"
    assert chunked.masked_tokens == whole.masked_tokens
    assert chunked.loss == pytest.approx(whole.loss, rel=1e-6)
    assert (chunked.accuracy, chunked.top5_accuracy, chunked.word_piece_accuracy) == (
        whole.accuracy,
        whole.top5_accuracy,
        whole.word_piece_accuracy,
    )


def tiny_bert_vocab(model_dir) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir).vocab_size
