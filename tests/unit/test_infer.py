"""Fill-mask, sentence scoring, embeddings and masking inspection, anchored on plain transformers."""

import math

import numpy as np
import pytest
import torch
from conftest import quiet
from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

from unmask.config import UnmaskError
from unmask.infer import Embedder, Filler, Scorer, inspect_masking, normalise_masks, window_around_masks


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def filler(tiny_model_dir):
    return Filler(str(tiny_model_dir), device="cpu", echo=quiet)


def test_fill_returns_top_k_candidates_per_mask_matching_the_model(filler):
    [result] = filler.fill(["the cat [MASK] the [MASK] today."], top_k=3)
    assert len(result.masks) == 2
    tokenizer, model = filler.tokenizer, filler.lm.model
    encoded = tokenizer("the cat [MASK] the [MASK] today.", return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**encoded).logits.softmax(-1)[0]
    for mask in result.masks:
        assert encoded["input_ids"][0, mask.position] == tokenizer.mask_token_id
        expected = probabilities[mask.position].topk(3)
        assert [c.token_id for c in mask.candidates] == expected.indices.tolist()
        assert [c.score for c in mask.candidates] == pytest.approx(expected.values.tolist(), rel=1e-4)
        assert mask.candidates[0].score >= mask.candidates[1].score >= mask.candidates[2].score


def test_mask_spellings_map_to_the_model_mask_token(filler):
    assert normalise_masks("a <mask> and a [MASK]", "[MASK]") == "a [MASK] and a [MASK]"
    assert normalise_masks("a [MASK]", "<mask>") == "a <mask>"
    with_angle, with_square = filler.fill(["the cat <mask> the door.", "the cat [MASK] the door."], top_k=2)
    assert [c.token_id for c in with_angle.masks[0].candidates] == [c.token_id for c in with_square.masks[0].candidates]


def test_text_without_a_mask_is_a_clear_error(filler):
    with pytest.raises(UnmaskError, match=r"notes\.txt:3: no mask"):
        filler.fill(["the cat sees the door."], labels=["notes.txt:3"])


def test_long_text_keeps_its_masks_inside_the_window():
    ids = [2] + [10] * 300 + [4] + [11] * 50 + [4] + [10] * 300 + [3]
    window = window_around_masks(ids, mask_id=4, max_len=128, label="text 1")
    assert len(window) == 128 and window[0] == 2 and window[-1] == 3
    assert window.count(4) == 2
    assert window_around_masks([2, 4, 3], 4, 128, "t") == [2, 4, 3]
    early = window_around_masks([2, 4] + [10] * 400 + [3], 4, 128, "t")
    assert early[1] == 4 and len(early) == 128
    with pytest.raises(UnmaskError, match="text 1: its masks lie 202 tokens apart"):
        window_around_masks([2] + [4] + [10] * 200 + [4] + [3], 4, 128, "text 1")


def test_fill_long_text_through_the_model(filler):
    text = "the cat sees the door today. " * 60 + "a dog [MASK] a book." + " the teacher reads a letter." * 60
    [result] = filler.fill([text], top_k=1)
    assert len(result.masks) == 1


def test_inspect_is_deterministic_by_seed_and_never_picks_specials(tokenizer_dir):
    text = "the cat sees the door today and a dog reads a book every morning in the park."
    first = inspect_masking(text, str(tokenizer_dir), seed=7, mask_prob=0.5)
    assert first == inspect_masking(text, str(tokenizer_dir), seed=7, mask_prob=0.5)
    assert first != inspect_masking(text, str(tokenizer_dir), seed=8, mask_prob=0.5)
    assert first[0].special and first[-1].special and not first[0].picked and not first[-1].picked
    for row in first:
        assert (row.label != -100) == row.picked
        if row.picked:
            assert row.label == row.token_id and row.became
        else:
            assert row.input_id == row.token_id and row.became == ""
        if row.became == "[MASK]":
            assert row.input_id != row.token_id


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
