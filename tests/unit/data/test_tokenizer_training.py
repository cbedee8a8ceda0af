"""Vocabularies of one's own: trained, loaded back, prepared with, trained from scratch, filled."""

import json

import pytest
from conftest import quiet
from transformers import AutoTokenizer, pipeline

from unmask.config import PrepareConfig, TokenizerConfig, TrainConfig, UnmaskError
from unmask.data.prepare import prepare
from unmask.data.store import TokenStore
from unmask.data.tokenizer import Vocabulary
from unmask.data.tokenizer_training import train_tokenizer
from unmask.pretrain.train import train

FRAMING = {
    "wordpiece": ("[CLS]", "[SEP]", "[MASK]", "[PAD]"),
    "bpe": ("<s>", "</s>", "<mask>", "<pad>"),
    "unigram": ("<s>", "</s>", "<mask>", "<pad>"),
}


@pytest.fixture(scope="module", params=["wordpiece", "bpe", "unigram"])
def trained(request, tmp_path_factory, corpus_dir):
    out = tmp_path_factory.mktemp(request.param) / "tokenizer"
    summary = train_tokenizer(
        TokenizerConfig(sources=[str(corpus_dir)], out=str(out), kind=request.param, vocab_size=300, lowercase=True), progress=False
    )
    return request.param, out, summary


def test_each_kind_loads_with_auto_tokenizer_and_frames_like_its_family(trained):
    kind, out, summary = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    opener, closer, mask, pad = FRAMING[kind]
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token, tokenizer.pad_token) == (opener, closer, mask, pad)
    assert 50 < len(tokenizer) <= 300 and summary["vocab_size"] == len(tokenizer) and summary["documents"] == 40
    ids = tokenizer("The cat sees the door.")["input_ids"]
    assert tokenizer.convert_ids_to_tokens([ids[0], ids[-1]]) == [opener, closer]
    assert tokenizer.decode(ids, skip_special_tokens=True).strip().lower() == "the cat sees the door."
    masked = tokenizer(f"the cat {mask} the door.")["input_ids"]
    assert masked.count(tokenizer.mask_token_id) == 1
    before_mask = tokenizer.convert_ids_to_tokens(masked[masked.index(tokenizer.mask_token_id) - 1])
    assert before_mask not in ("Ġ", "▁"), "the mask swallows the space before it, as RoBERTa's does"
    vocab = Vocabulary.from_tokenizer(tokenizer)
    assert vocab.mask_id == tokenizer.mask_token_id and vocab.pad_id == tokenizer.pad_token_id
    assert not vocab.starts_word.all(), "word pieces are told from word starts"


def test_a_trained_vocabulary_prepares_trains_from_scratch_and_fills(trained, corpus_dir, tmp_path):
    kind, out, _ = trained
    store = tmp_path / "store"
    prepare(PrepareConfig(sources=[str(corpus_dir)], out=str(store), tokenizer=str(out), val_fraction=0.1), progress=False)
    vocab = TokenStore.open(store).vocabulary()
    run = tmp_path / "run"
    summary = train(
        TrainConfig(
            data=str(store), out=str(run), from_scratch="tiny", tokenizer=str(out), seq_len=32, batch_size=4, max_steps=3, eval_every=0
        ),
        progress=False,
        echo=quiet,
    )
    assert summary["steps"] == 3
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["vocab_size"] == vocab.size and config["pad_token_id"] == vocab.pad_id
    fill = pipeline("fill-mask", model=str(run / "model"))
    predictions = fill(f"the cat {fill.tokenizer.mask_token} the door.")
    assert len(predictions) == 5 and all(0 <= p["score"] <= 1 for p in predictions)


def test_out_is_never_replaced_unless_it_is_a_tokenizer(corpus_dir, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(UnmaskError, match="out=.*notes"):
            train_tokenizer(TokenizerConfig(sources=[str(corpus_dir)], out=str(notes), vocab_size=200, overwrite=overwrite), progress=False)
    assert (notes / "keep.txt").read_text() == "mine"
    out = tmp_path / "tok"
    train_tokenizer(TokenizerConfig(sources=[str(corpus_dir)], out=str(out), vocab_size=200), progress=False)
    train_tokenizer(TokenizerConfig(sources=[str(corpus_dir)], out=str(out), vocab_size=250, overwrite=True), progress=False)
    assert len(AutoTokenizer.from_pretrained(out)) <= 250
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "tok"]


def test_the_tokenizer_command_prints_what_it_learned(corpus_dir, tmp_path, capsys):
    from unmask.cli.main import main

    assert main(["tokenizer", str(corpus_dir), "--out", str(tmp_path / "tok"), "--kind", "bpe", "--vocab-size", "280"]) == 0
    assert "bpe, " in capsys.readouterr().out
    assert main(["tokenizer", str(corpus_dir), "--out", str(tmp_path / "x"), "--vocab-size", "5"]) == 1
    assert "--vocab-size: must be at least 100" in capsys.readouterr().err
