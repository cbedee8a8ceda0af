"""Tokenizer loading, fingerprints and the vocabulary record."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from unmask.config import UnmaskError
from unmask.data.tokenizer import Vocabulary, fingerprint, load_tokenizer, raw_tokenizer, word_start_table


def test_vocabulary_of_a_wordpiece_and_a_byte_level_bpe_tokenizer(tokenizer_dir, roberta_dir):
    bert = Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert (bert.opener_id, bert.closer_id, bert.pad_id, bert.mask_id) == tuple(
        tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    )
    assert set(bert.special_ids) == set(tokenizer.all_special_ids) and bert.size == len(tokenizer)
    roberta = Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(roberta_dir))
    assert (roberta.opener_id, roberta.closer_id, roberta.pad_id, roberta.mask_id) == (0, 2, 1, 4)


def test_vocabulary_survives_the_store_metadata(tokenizer_dir):
    vocab = Vocabulary.from_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
    again = Vocabulary.from_meta(vocab.to_meta())
    assert again == vocab and np.array_equal(again.starts_word, vocab.starts_word)


def test_word_starts_for_wordpiece_and_byte_level_bpe(tokenizer_dir, roberta_dir):
    bert = AutoTokenizer.from_pretrained(tokenizer_dir)
    table = word_start_table(bert)
    assert all(table[i] != t.startswith("##") for t, i in bert.get_vocab().items())
    roberta = AutoTokenizer.from_pretrained(roberta_dir)
    table = word_start_table(roberta)
    vocab = roberta.get_vocab()
    assert any(t.startswith("Ġ") for t in vocab)
    assert all(table[i] for t, i in vocab.items() if t.startswith("Ġ"))
    continuations = [i for t, i in vocab.items() if t[:1].isalpha() and not t.startswith("Ġ")]
    assert continuations and not table[continuations].any()


def test_a_tokenizer_without_a_mask_cannot_mask():
    vocab = Vocabulary(size=5, special_ids=(0,), mask_id=None, opener_id=1, closer_id=2, pad_id=0, starts_word=np.ones(5, bool))
    with pytest.raises(UnmaskError, match="no mask token"):
        vocab.require_mask("--model m")


def test_fingerprint_ignores_truncation_and_raw_tokenizer_never_truncates(tokenizer_dir):
    tokenizer = load_tokenizer(str(tokenizer_dir))
    before = fingerprint(tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(16)
    assert fingerprint(tokenizer) == before
    one = len(tokenizer.backend_tokenizer.encode("the cat sees the door ", add_special_tokens=False).ids)
    assert len(tokenizer.backend_tokenizer.encode("the cat sees the door " * 100, add_special_tokens=False).ids) == 16
    assert len(raw_tokenizer(tokenizer).encode("the cat sees the door " * 100, add_special_tokens=False).ids) == 100 * one


def test_a_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(UnmaskError, match="cannot load a tokenizer from folder"):
        load_tokenizer(str(tmp_path))
