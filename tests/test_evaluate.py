"""Evaluation, scoring and embeddings, anchored on plain transformers computations."""

import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from conftest import quiet, tiny_bert
from unmask.config import UnmaskError
from unmask.data.store import TokenStore
from unmask.evaluate import (
    eval_masker,
    eval_windows,
    evaluate_models,
    held_out_split,
    mask_windows,
    vocabulary,
    word_piece_mask,
    word_start_table,
)
from unmask.infer import Embedder, Filler, Scorer
from unmask.model import MaskedLM, load_mlm


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def windows(store_dir, tokenizer):
    return eval_windows(TokenStore.open(store_dir).split("val"), tokenizer, seq_len=32)


def evaluate(model_dir, windows, tokenizer, batch_size=4, **kwargs):
    lm = load_mlm(str(model_dir), echo=quiet)
    return evaluate_models([lm], windows, **vocabulary(tokenizer), batch_size=batch_size, device=torch.device("cpu"), **kwargs)[0]


def test_eval_loss_and_accuracy_equal_plain_transformers_on_the_same_masked_batch(tiny_model_dir, windows, tokenizer):
    indices = np.arange(len(windows))
    original, attention = (torch.from_numpy(a) for a in windows.batch(indices))
    masked = mask_windows(eval_masker(**vocabulary(tokenizer)), original, attention, indices)
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        output = model(input_ids=masked.input_ids, attention_mask=attention, labels=masked.labels)
    picked = masked.labels != -100
    reference_accuracy = (output.logits[picked].argmax(-1) == masked.labels[picked]).float().mean().item()
    ours = evaluate(tiny_model_dir, windows, tokenizer, batch_size=len(windows))
    assert ours.masked_tokens == int(picked.sum())
    assert ours.loss == pytest.approx(output.loss.item(), rel=1e-5)
    assert ours.accuracy == pytest.approx(reference_accuracy)
    assert ours.perplexity == pytest.approx(math.exp(output.loss.item()), rel=1e-5)


def test_eval_is_a_mean_over_tokens_whatever_the_batching(tiny_model_dir, windows, tokenizer):
    """Per-window seeds make the positions independent of batch size; a mean of batch means would not survive this."""
    small, large = (evaluate(tiny_model_dir, windows, tokenizer, batch_size=b) for b in (3, 7))
    assert small.masked_tokens == large.masked_tokens
    assert small.loss == pytest.approx(large.loss, rel=1e-6)
    assert small.accuracy == large.accuracy and small.top5_accuracy == large.top5_accuracy


def test_top5_and_word_split_metrics_are_consistent(tiny_model_dir, windows, tokenizer):
    metrics = evaluate(tiny_model_dir, windows, tokenizer, starts_word=word_start_table(tokenizer))
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
    split = held_out_split([str(corpus_dir)], tokenizer)
    assert split.documents == 40
    metrics = evaluate(tiny_model_dir, eval_windows(split, tokenizer, 32), tokenizer)
    assert metrics.masked_tokens > 100 and math.isfinite(metrics.loss)
    with pytest.raises(UnmaskError, match="pass the text files instead"):
        held_out_split([str(store_dir)], AutoTokenizer.from_pretrained(roberta_dir))


def test_two_models_are_scored_on_the_same_positions(tiny_model_dir, windows, tokenizer, tmp_path):
    other_dir = tmp_path / "other"
    tiny_bert(len(tokenizer), seed=1).save_pretrained(other_dir)
    tokenizer.save_pretrained(other_dir)
    together = evaluate_models(
        [load_mlm(str(d), echo=quiet) for d in (tiny_model_dir, other_dir)], windows, **vocabulary(tokenizer), batch_size=5,
        device=torch.device("cpu"),
    )  # fmt: skip
    alone = [evaluate(d, windows, tokenizer) for d in (tiny_model_dir, other_dir)]
    for a, b in zip(together, alone):
        assert a.loss == pytest.approx(b.loss, rel=1e-6) and a.accuracy == b.accuracy


def test_fill_top_k_equals_the_transformers_pipeline(tiny_model_dir):
    text = "the cat [MASK] the door today."
    reference = pipeline("fill-mask", model=str(tiny_model_dir), top_k=5)(text)
    [ours] = Filler(str(tiny_model_dir), device="cpu", echo=quiet).fill([text], top_k=5)
    assert [c.token_id for c in ours.masks[0].candidates] == [r["token"] for r in reference]
    assert [c.score for c in ours.masks[0].candidates] == pytest.approx([r["score"] for r in reference], rel=1e-5)
    assert [c.token for c in ours.masks[0].candidates] == [r["token_str"] for r in reference]


def direct_pll(model, tokenizer, text: str, word_l2r: bool) -> float:
    """One token at a time, one forward pass each: the definition, with no batching."""
    encoding = tokenizer(text, return_special_tokens_mask=True)
    ids = torch.tensor(encoding["input_ids"])
    words = encoding.word_ids()
    total = 0.0
    for position, special in enumerate(encoding["special_tokens_mask"]):
        if special:
            continue
        hidden = ids.clone()
        hidden[position] = tokenizer.mask_token_id
        if word_l2r:
            later = position + 1
            while later < len(ids) and words[later] is not None and words[later] == words[position]:
                hidden[later] = tokenizer.mask_token_id
                later += 1
        with torch.no_grad():
            logits = model(input_ids=hidden[None]).logits[0, position]
        total += logits.log_softmax(-1)[ids[position]].item()
    return total


def test_pll_equals_a_direct_one_token_at_a_time_loop(tiny_model_dir, tokenizer):
    model = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval()
    texts = ["the cat sees the door today.", "a small bird quickly follows the unbelievably old man"]
    scorer = Scorer(str(tiny_model_dir), device="cpu", echo=quiet)
    for text, result in zip(texts, scorer.score(texts, batch_size=3)):
        assert result.pll == pytest.approx(direct_pll(model, tokenizer, text, word_l2r=False), rel=1e-4)
        assert result.pll_word_l2r == pytest.approx(direct_pll(model, tokenizer, text, word_l2r=True), rel=1e-4)
        assert result.pseudo_perplexity == pytest.approx(math.exp(-result.pll / len(result.tokens)))
    split_words = any(t.startswith("##") for t in scorer.score([texts[1]])[0].tokens)
    assert split_words, "the second text must contain a word split into pieces, or the word-aware test proves nothing"
    # An untrained model barely reads context, so the two variants differ only slightly; that
    # each matches its own direct loop above is the real check.
    scored = scorer.score([texts[1]])[0]
    assert scored.log_probs_word_l2r != scored.log_probs


def test_sentence_embeddings_mean_pool_over_the_attention_mask_and_keep_input_order(tiny_model_dir, tokenizer):
    texts = ["a dog", "the old man reads a letter every morning in the park", "the cat", "our team builds a new function again"]
    embedder = Embedder(str(tiny_model_dir), device="cpu", echo=quiet)
    vectors = embedder.embed(texts, pooling="mean", batch_size=2, progress=False)
    encoder = AutoModelForMaskedLM.from_pretrained(tiny_model_dir).eval().base_model
    for text, vector in zip(texts, vectors):
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            alone = encoder(**encoded)[0][0].mean(0)  # no padding when alone: a plain mean
        np.testing.assert_allclose(vector, alone.numpy(), rtol=1e-4, atol=1e-5)
    cls = embedder.embed(texts, pooling="cls", progress=False)
    assert not np.allclose(cls, vectors)
    unit = embedder.embed(texts, normalize=True, progress=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    tokens, ids, hidden = embedder.token_embeddings("the cat sees")
    assert tokens[0] == "[CLS]" and hidden.shape == (len(ids), 32)


def test_compare_writes_a_report_and_the_same_model_twice_changes_nothing(tiny_model_dir, store_dir, tmp_path):
    from unmask.report import compare

    report = compare(str(tiny_model_dir), str(tiny_model_dir), [str(store_dir)], tmp_path / "same", seq_len=32, echo=quiet, device="cpu")
    assert report["base_metrics"] == report["trained_metrics"] and report["disagreements"] == []
    for name in ("report.md", "report.json", "chart.png"):
        assert (tmp_path / "same" / name).stat().st_size > 0
    assert (tmp_path / "same" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "same" / "report.json").read_text())["windows"] > 0
