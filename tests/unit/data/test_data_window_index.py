"""The window index: written once by prepare, memory-mapped by training, the windows it gives
are the ones counted in memory, for one store and a store of shards; and an index that is
missing, damaged or another store's is refused, naming the file, before any window is read."""

import json
import shutil

import numpy as np
import pytest
from conftest import lines_file, prepare_lines

from unmask.config import PrepareConfig
from unmask.data.layouts import AlignedLayout
from unmask.data.prepare import prepare
from unmask.data.store import TokenStore
from unmask.data.windows import Windows
from unmask.errors import UnmaskError
from unmask.storage.storedir import StoreDir


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    return lines_file(tmp_path_factory.mktemp("indexed"), 600, sentences_per_doc=3, seed=5)


def every_window(windows: Windows) -> tuple[list, list]:
    ids, mask, _ = windows.batch(np.arange(len(windows)))
    return ids.tolist(), mask.tolist()


def test_prepare_writes_the_index_training_maps_and_it_gives_the_counted_windows(lines, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("unmask.data.window_index.COARSE_STRIDE", 7)  # a coarse table of many entries, even for 540 documents
    meta = prepare_lines(lines, tmp_path / "store", tokenizer_dir, padded_lengths=[16, 128])
    assert sorted(meta["window_index"], key=int) == ["16", "128"] and len(meta["store_id"]) == 32
    split = TokenStore.open(tmp_path / "store").split("train")
    mapped = split.aligned_layout(16)
    assert not mapped.counts.flags.owndata and not mapped.counts.flags.writeable, "mapped from the file, not counted at start-up"
    assert mapped.stride == 7 and mapped.coarse.tolist() == np.asarray(mapped.counts)[::7].tolist()
    counted = _counts(split.offsets, 14)
    assert np.asarray(mapped.counts).tolist() == counted.tolist()
    vocab = TokenStore.open(tmp_path / "store").vocabulary()
    from_index = Windows.build(split, 16, vocab, packing="padded")
    in_memory = Windows(split, 16, vocab, AlignedLayout(split.offsets, counted, 14))
    assert len(from_index) == meta["window_index"]["16"]["train"] > split.documents, "long documents continue on the next window"
    assert every_window(from_index) == every_window(in_memory)


def _counts(offsets, body_len):
    """Each document's windows counted one by one (the separator left out), cumulated."""
    per = [len(range(int(a), int(b) - 1, body_len)) for a, b in zip(offsets[:-1], offsets[1:])]
    return np.concatenate([[0], np.cumsum(per)])


def test_a_store_of_shards_gives_the_one_shot_stores_aligned_windows(lines, tokenizer_dir, corpus_dir, tmp_path):
    prepare_lines(lines, tmp_path / "whole", tokenizer_dir, padded_lengths=[16])
    for index in (0, 1):
        prepare_lines(lines, tmp_path / "sharded", tokenizer_dir, shard=f"{index}/2", padded_lengths=[16])
    whole, sharded = TokenStore.open(tmp_path / "whole"), TokenStore.open(tmp_path / "sharded")
    vocab = whole.vocabulary()
    for split in ("train", "val"):
        ours = Windows.build(sharded.split(split), 16, vocab, packing="padded")
        assert len(ours.layout.layouts) > 2, "blocks of both shards interleave"
        assert every_window(ours) == every_window(Windows.build(whole.split(split), 16, vocab, packing="padded")), split
    # An appended shard prepared without that length: the store is small, so it is counted in memory.
    prepare_lines(corpus_dir, tmp_path / "sharded", tokenizer_dir, append=True, padded_lengths=[128])
    grown = Windows.build(TokenStore.open(tmp_path / "sharded").split("train"), 16, vocab, packing="padded")
    assert len(grown) > len(Windows.build(whole.split("train"), 16, vocab, packing="padded"))


def test_prepare_index_adds_a_length_to_every_shard_and_a_large_split_needs_it(lines, tokenizer_dir, tmp_path, monkeypatch, capsys):
    for index in (0, 1):
        prepare_lines(lines, tmp_path / "sharded", tokenizer_dir, shard=f"{index}/2", padded_lengths=[128])
    vocab = TokenStore.open(tmp_path / "sharded").vocabulary()
    monkeypatch.setattr("unmask.data.store.LISTED_DOCUMENTS", 10)  # as a split of billions of documents
    with pytest.raises(
        UnmaskError,
        match=r"shard-000-00000-of-00002/train.windows-64: no window index for --seq-len 64.*prepare --index \S+ --padded-lengths 64",
    ):
        Windows.build(TokenStore.open(tmp_path / "sharded").split("train"), 64, vocab, packing="padded")
    from unmask.cli.main import main

    assert main(["prepare", "--index", str(tmp_path / "sharded"), "--padded-lengths", "64"]) == 0
    assert "window indexes for --seq-len 64, 128" in capsys.readouterr().out
    for _, _, _, shard in StoreDir(tmp_path / "sharded").shards():
        assert json.loads((shard / "meta.json").read_text())["window_index"].keys() == {"64", "128"}
    windows = Windows.build(TokenStore.open(tmp_path / "sharded").split("train"), 64, vocab, packing="padded")
    assert not any(layout.counts.flags.owndata for layout in windows.layout.layouts), "every shard's index mapped"


@pytest.mark.parametrize("damage", ["missing", "another store", "truncated", "other counts"])
def test_an_index_missing_damaged_or_from_another_store_is_refused_naming_it(lines, tokenizer_dir, tmp_path, damage):
    prepare_lines(lines, tmp_path / "store", tokenizer_dir, padded_lengths=[16])
    prepare_lines(lines, tmp_path / "other", tokenizer_dir, padded_lengths=[16])
    index = StoreDir(tmp_path / "store").window_index("train", 16)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir() if p.is_file()}
    if damage == "missing":
        index.unlink()
    elif damage == "another store":
        shutil.copyfile(StoreDir(tmp_path / "other").window_index("train", 16), index)
    elif damage == "truncated":
        index.write_bytes(index.read_bytes()[:-8])
    else:
        data = bytearray(index.read_bytes())
        data[-8:] = np.array([10**9], dtype="<i8").tobytes()
        index.write_bytes(bytes(data))
    store = TokenStore.open(tmp_path / "store")
    expected = {"missing": "missing, though", "another store": "another store", "truncated": "not this store's", "other counts": "damaged"}
    with pytest.raises(UnmaskError, match=rf"{index}: .*{expected[damage]}"):
        Windows.build(store.split("train"), 16, store.vocabulary(), packing="padded")
    after = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir() if p.is_file()}
    assert {k: v for k, v in after.items() if k != index.name} == {k: v for k, v in before.items() if k != index.name}, (
        "nothing else touched"
    )
    # The remedy the message gives repairs it: the same bytes as the index prepare wrote.
    prepare(PrepareConfig(index=str(tmp_path / "store"), padded_lengths=[16]), progress=False)
    assert index.read_bytes() == before[index.name]
    store = TokenStore.open(tmp_path / "store")
    assert len(Windows.build(store.split("train"), 16, store.vocabulary(), packing="padded")) == store.meta["window_index"]["16"]["train"]


def test_a_run_on_a_store_of_shards_trains_and_scores_as_on_the_one_shot_store(lines, tokenizer_dir, tiny_model_dir, tmp_path):
    import unmask

    prepare_lines(lines, tmp_path / "whole", tokenizer_dir, padded_lengths=[32])
    for index in (0, 1):
        prepare_lines(lines, tmp_path / "sharded", tokenizer_dir, shard=f"{index}/2", padded_lengths=[32])
    settings = dict(seq_len=32, batch_size=4, max_steps=2, eval_every=2, log_every=1, precision="fp32", progress="none", packing="padded")
    runs = {
        name: unmask.train(model=str(tiny_model_dir), data=str(tmp_path / name), out=str(tmp_path / f"run-{name}"), **settings)
        for name in ("whole", "sharded")
    }
    losses = {name: [m["loss"] for m in run.metrics if "loss" in m] for name, run in runs.items()}
    assert losses["whole"] == losses["sharded"] and len(losses["whole"]) == 2, "the same windows, in the same order"
    assert runs["whole"].summary["eval_loss"] == runs["sharded"].summary["eval_loss"]
