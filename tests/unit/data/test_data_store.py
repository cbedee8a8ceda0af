"""The token store: exact ids, document split, atomic and safe replacement, old formats."""

import json
import math
import shutil
from fractions import Fraction

import numpy as np
import pytest
from transformers import AutoTokenizer

from unmask.config import PrepareConfig, UnmaskError
from unmask.data.prepare import is_validation_document, prepare
from unmask.data.store import TokenStore
from unmask.storage import files


def test_validation_split_rule_holds_out_ceil_n_f_documents_the_first_always():
    f = Fraction("0.01")
    picked = [i for i in range(1000) if is_validation_document(i, f)]
    assert picked[:3] == [0, 100, 200] and len(picked) == 10
    for n in (1, 7, 99, 101, 250):
        assert sum(is_validation_document(i, Fraction("0.3")) for i in range(n)) == math.ceil(n * 0.3)
    assert not any(is_validation_document(i, Fraction(0)) for i in range(50))


def test_store_holds_exact_token_ids_split_by_document(store_dir, corpus_dir, tokenizer_dir):
    store = TokenStore.open(store_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))]
    expected = [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id] for t in texts]
    train, val = store.split("train"), store.split("val")
    assert store.meta["dtype"] == "uint16"
    assert val.documents == 4 and train.documents == 36  # ceil(40 * 0.1) held out
    val_docs = [i for i in range(40) if i % 10 == 0]
    for split, indices in ((val, val_docs), (train, [i for i in range(40) if i not in val_docs])):
        for position, doc in enumerate(indices):
            start, end = split.offsets[position], split.offsets[position + 1]
            assert split.tokens[start:end].tolist() == expected[doc]
    assert store.vocabulary().size == len(tokenizer)
    assert AutoTokenizer.from_pretrained(store.tokenizer_path)("a dog")["input_ids"] == tokenizer("a dog")["input_ids"]


def test_prepare_refuses_to_overwrite_and_an_interrupted_prepare_leaves_no_store(tmp_path, corpus_dir, tokenizer_dir, monkeypatch):
    out = tmp_path / "store"
    config = PrepareConfig(sources=[str(corpus_dir)], out=str(out), tokenizer=str(tokenizer_dir))
    prepare(config, progress=False)
    before = (out / "train.tokens").read_bytes()
    with pytest.raises(UnmaskError, match="already exists"):
        prepare(config, progress=False)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("unmask.storage.files.publish_folder", crash)
    config.overwrite = True
    with pytest.raises(KeyboardInterrupt):
        prepare(config, progress=False)
    assert (out / "train.tokens").read_bytes() == before, "the old store must survive a failed overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "no half-built folder is left behind"
    assert files.building_path(out).name.startswith(".store.")


def test_prepare_needs_a_document_for_training(tmp_path, tokenizer_dir):
    one = tmp_path / "one.txt"
    one.write_text("a single document", encoding="utf-8")
    with pytest.raises(UnmaskError, match="none left for training"):
        prepare(PrepareConfig(sources=[str(one)], out=str(tmp_path / "s"), tokenizer=str(tokenizer_dir)), progress=False)
    meta = prepare(
        PrepareConfig(sources=[str(one)], out=str(tmp_path / "s"), tokenizer=str(tokenizer_dir), val_fraction=0.0), progress=False
    )
    assert meta["splits"]["val"]["documents"] == 0


def test_overwrite_never_replaces_what_is_not_a_store(tmp_path, corpus_dir, tokenizer_dir):
    """`prepare SRC --out SRC --overwrite` once deleted the user's text."""
    sources = tmp_path / "texts"
    shutil.copytree(corpus_dir, sources)
    before = sorted(p.name for p in sources.iterdir())
    for out in (sources, sources / "store", tmp_path):
        with pytest.raises(UnmaskError, match="overlaps the source|not a token store"):
            prepare(PrepareConfig(sources=[str(sources)], out=str(out), tokenizer=str(tokenizer_dir), overwrite=True), progress=False)
    assert sorted(p.name for p in sources.iterdir()) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.md").write_text("my notes")
    with pytest.raises(UnmaskError, match="exists and is not a token store"):
        prepare(PrepareConfig(sources=[str(sources)], out=str(notes), tokenizer=str(tokenizer_dir), overwrite=True), progress=False)
    assert (notes / "keep.md").read_text() == "my notes"
    single = tmp_path / "single.txt"
    single.write_text("x")
    with pytest.raises(UnmaskError, match="not a token store"):
        prepare(PrepareConfig(sources=[str(sources)], out=str(single), tokenizer=str(tokenizer_dir), overwrite=True), progress=False)
    assert single.read_text() == "x"


def test_a_store_of_another_format_is_refused_with_what_to_do(store_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(store_dir, old)
    meta = json.loads((old / "meta.json").read_text())
    meta["format_version"] = 1
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UnmaskError, match=r"store format 1 is not one this unmask reads \(\(2,\)\); prepare it again"):
        TokenStore.open(old)


def test_a_store_with_a_damaged_split_or_metadata_is_named(store_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    with open(copy / "train.tokens", "r+b") as f:
        f.truncate(10)
    with pytest.raises(UnmaskError, match="train split is damaged"):
        TokenStore.open(copy).split("train")
    (copy / "meta.json").write_text("{")
    with pytest.raises(UnmaskError, match="unreadable store metadata"):
        TokenStore.open(copy)
    (copy / "meta.json").write_text('{"format_version": 99}')
    with pytest.raises(UnmaskError, match="store format 99"):
        TokenStore.open(copy)


@pytest.mark.parametrize("fixture", ["tokenizer_dir", "roberta_dir"])
def test_the_store_records_the_tokenizers_own_word_starts(request, fixture, corpus_dir, tmp_path):
    folder = request.getfixturevalue(fixture)
    corpus = tmp_path / "corpus"
    shutil.copytree(corpus_dir, corpus)
    (corpus / "doc000a.txt").write_text("the unbelievably quick zebras jump; a lexicographer writes prettily.")
    prepare(PrepareConfig(sources=[str(corpus)], out=str(tmp_path / "s"), tokenizer=str(folder), val_fraction=0.1), progress=False)
    store = TokenStore.open(tmp_path / "s")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.txt"))]
    held_out = [is_validation_document(i, Fraction("0.1")) for i in range(len(texts))]
    continuations = 0
    for split in ("train", "val"):
        documents = [t for t, val in zip(texts, held_out) if val == (split == "val")]
        stored = store.split(split)
        for position, text in enumerate(documents):
            words = tokenizer(text, add_special_tokens=False).word_ids()
            expected = [i == 0 or words[i] != words[i - 1] for i in range(len(words))] + [True]
            start, end = int(stored.offsets[position]), int(stored.offsets[position + 1])
            assert stored.word_starts(start, end - start).tolist() == expected, (split, position)
            continuations += expected.count(False)
    assert continuations > 3, "some words are split into pieces, or the comparison proves little"
    assert len(store.split("train").words) == (store.meta["splits"]["train"]["tokens"] + 7) // 8


def test_word_start_bits_survive_flushes_that_end_mid_byte(monkeypatch, corpus_dir, tokenizer_dir, tmp_path):
    monkeypatch.setattr("unmask.data.prepare._TOKENS_PER_WRITE", 13)  # flush after almost every document
    prepare(
        PrepareConfig(sources=[str(corpus_dir)], out=str(tmp_path / "small"), tokenizer=str(tokenizer_dir), val_fraction=0.1),
        progress=False,
    )
    monkeypatch.setattr("unmask.data.prepare._TOKENS_PER_WRITE", 1 << 20)
    prepare(
        PrepareConfig(sources=[str(corpus_dir)], out=str(tmp_path / "large"), tokenizer=str(tokenizer_dir), val_fraction=0.1),
        progress=False,
    )
    for split in ("train", "val"):
        a, b = TokenStore.open(tmp_path / "small").split(split), TokenStore.open(tmp_path / "large").split(split)
        assert np.array_equal(np.asarray(a.words), np.asarray(b.words)) and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
