"""Data at scale: parallel tokenizing gives the same store, shards made apart are the one-shot
store once merged, an appended source is a new shard, and every mismatch is named."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import lines_file, prepare_lines

from unmask.config import PrepareConfig
from unmask.data.prepare import prepare
from unmask.data.store import TokenStore
from unmask.errors import UnmaskError
from unmask.storage.storedir import StoreDir


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    return lines_file(tmp_path_factory.mktemp("many"), 600)


def same_split(a, b) -> None:
    assert len(a.tokens) == len(b.tokens) and np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert np.array_equal(np.asarray(a.offsets), np.asarray(b.offsets)) and a.documents == b.documents
    assert np.array_equal(a.word_starts(0, len(a.tokens)), b.word_starts(0, len(b.tokens)))
    middle = len(a.tokens) // 3
    assert np.array_equal(a.tokens[middle : middle + 517], b.tokens[middle : middle + 517])


def test_two_workers_make_the_store_one_makes_byte_for_byte(lines, tokenizer_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("unmask.data.encoding.INLINE_BATCHES", 0)  # the workers take every batch, even of a small corpus
    prepare_lines(lines, tmp_path / "one", tokenizer_dir, workers=1)
    prepare_lines(lines, tmp_path / "two", tokenizer_dir, workers=2)
    for name in ("train.tokens", "train.offsets", "train.words", "val.tokens", "val.offsets", "val.words"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def test_shards_made_apart_read_back_as_the_one_shot_store(lines, tokenizer_dir, tmp_path):
    prepare_lines(lines, tmp_path / "whole", tokenizer_dir)
    for index in (1, 0):  # in any order, as separate machines would
        meta = prepare_lines(lines, tmp_path / "sharded", tokenizer_dir, shard=f"{index}/2")
        assert meta["shard"]["documents_read"] == 600
    whole, sharded = TokenStore.open(tmp_path / "whole"), TokenStore.open(tmp_path / "sharded")
    assert sharded.meta["splits"] == whole.meta["splits"] and len(sharded.shards) == 2
    for split in ("train", "val"):
        same_split(whole.split(split), sharded.split(split))
    merged = prepare(PrepareConfig(merge=str(tmp_path / "sharded")), progress=False)
    assert merged["merged"] and StoreDir(tmp_path / "sharded").manifest.is_file()


def test_an_appended_source_is_a_new_shard_and_the_old_files_stay_untouched(lines, tokenizer_dir, corpus_dir, tmp_path):
    prepare_lines(lines, tmp_path / "store", tokenizer_dir)
    before = (tmp_path / "store" / "train.tokens").read_bytes()
    prepare_lines(corpus_dir, tmp_path / "store", tokenizer_dir, append=True)
    assert (tmp_path / "store" / "train.tokens").read_bytes() == before
    assert [p.name for _, _, _, p in StoreDir(tmp_path / "store").shards()] == ["shard-001-00000-of-00001"]
    with pytest.raises(UnmaskError, match=r"--val-fraction 0.2: \S*/store\S* was prepared with 0.1"):
        prepare_lines(corpus_dir, tmp_path / "store", tokenizer_dir, append=True, val_fraction=0.2)
    assert [p.name for _, _, _, p in StoreDir(tmp_path / "store").shards()] == ["shard-001-00000-of-00001"], "nothing added"
    # One prepare of both sources, in that order, numbers and holds out the documents the same way.
    prepare(
        PrepareConfig(
            sources=[str(lines), str(corpus_dir)],
            out=str(tmp_path / "once"),
            tokenizer=str(tokenizer_dir),
            doc_per="line",
            val_fraction=0.1,
            workers=1,
        ),
        progress=False,
    )
    appended, once = TokenStore.open(tmp_path / "store"), TokenStore.open(tmp_path / "once")
    assert appended.meta["splits"] == once.meta["splits"]
    for split in ("train", "val"):
        same_split(once.split(split), appended.split(split))


def test_a_missing_half_written_or_mismatched_shard_is_named(lines, tokenizer_dir, roberta_dir, tmp_path):
    prepare_lines(lines, tmp_path / "s", tokenizer_dir, shard="0/2")
    with pytest.raises(UnmaskError, match=r"shard 1/2 of group 0 is missing; run `unmask prepare \.\.\. --out .* --shard 1/2`"):
        TokenStore.open(tmp_path / "s")
    (tmp_path / "s" / ".shard-000-00001-of-00002.building-host-1").mkdir()
    with pytest.raises(UnmaskError, match=r"shard 1/2 of group 0 is being written or interrupted"):
        prepare(PrepareConfig(merge=str(tmp_path / "s")), progress=False)
    with pytest.raises(
        UnmaskError, match=r"--tokenizer .*: .*shard-000-00000-of-00002 was prepared with '.*', which maps text to other ids"
    ):
        prepare_lines(lines, tmp_path / "s", roberta_dir, shard="1/2")
    with pytest.raises(UnmaskError, match=r"--val-fraction 0.2: .*was prepared with 0.1"):
        prepare_lines(lines, tmp_path / "s", tokenizer_dir, shard="1/2", val_fraction=0.2)
    with pytest.raises(UnmaskError, match=r"--shard: '3/2': I/N needs 0 <= I < N"):
        PrepareConfig(sources=["x"], out="o", shard="3/2")
    with pytest.raises(UnmaskError, match=r"--max-tokens: a shard cannot know"):
        PrepareConfig(sources=["x"], out="o", shard="0/2", max_tokens=10)
    with pytest.raises(UnmaskError, match=r"--shard 0/3: .* already holds shards of another count"):
        prepare_lines(lines, tmp_path / "s", tokenizer_dir, shard="0/3")


def test_a_worker_whose_parent_died_before_it_started_exits_at_once():
    # The race a loaded machine hits: the parent killed while the spawned worker is still
    # importing, before it asks for the parent-death signal. The worker checks its parent.
    code = "import os, sys; from unmask.data.encoding import _die_with_parent; _die_with_parent({}); print('alive')"
    orphan = subprocess.run([sys.executable, "-c", code.format(1)], capture_output=True, text=True, timeout=120)
    assert orphan.returncode == 1 and "alive" not in orphan.stdout, orphan
    child = subprocess.run([sys.executable, "-c", code.format(os.getpid())], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and "alive" in child.stdout, child.stderr


@pytest.mark.slow
def test_a_killed_parallel_prepare_leaves_no_store_and_no_worker(lines, tokenizer_dir, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(lines.read_text() * 40)
    out = tmp_path / "store"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unmask",
            "prepare",
            str(big),
            "--out",
            str(out),
            "--tokenizer",
            str(tokenizer_dir),
            "--doc-per",
            "line",
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".store.building-*")):
        time.sleep(0.05)
    children: list[str] = []
    while time.time() < deadline and not children:  # under a loaded machine the workers take a while to start
        time.sleep(0.1)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split() or children
    os.kill(process.pid, signal.SIGKILL)  # wherever the workers are: importing, starting, tokenizing
    process.wait()

    def alive() -> list[str]:
        running = []
        for pid in children:
            try:
                if "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
                    running.append(pid)
            except OSError:
                pass
        return running

    deadline = time.time() + 120  # a worker still importing exits when its imports are done: seconds on a loaded machine
    while alive() and time.time() < deadline:
        time.sleep(0.1)
    assert children and not alive(), f"orphan workers {alive()} of {children}"
    assert not out.exists(), "no store that looks complete"


def documents_of(split) -> list[tuple[int, ...]]:
    tokens, offsets = np.asarray(split.tokens), np.asarray(split.offsets)
    return [tuple(tokens[a:b].tolist()) for a, b in zip(offsets[:-1], offsets[1:])]


def test_shards_dealt_by_files_read_only_their_files_and_hold_every_document_once(corpus_dir, tokenizer_dir, tmp_path):
    options = dict(doc_per="file", val_fraction=0.2)
    prepare_lines(corpus_dir, tmp_path / "whole", tokenizer_dir, **options)
    metas = [prepare_lines(corpus_dir, tmp_path / "dealt", tokenizer_dir, shard=f"{i}/3", shard_by="files", **options) for i in (2, 0, 1)]
    assert sorted(m["files"] for m in metas) == [13, 13, 14], "40 files, each read by one shard only"
    whole, dealt = TokenStore.open(tmp_path / "whole"), TokenStore.open(tmp_path / "dealt")
    ours = sorted(documents_of(dealt.split("train")) + documents_of(dealt.split("val")))
    assert (
        ours == sorted(documents_of(whole.split("train")) + documents_of(whole.split("val")))
        and dealt.meta["splits"]["train"]["documents"] + dealt.meta["splits"]["val"]["documents"] == 40
    )
    # Shard after shard: the joined split reads shard 0's documents first, each shard holding out every 5th of its own.
    first = TokenStore.open_one(tmp_path / "dealt" / "shard-000-00000-of-00003")
    assert documents_of(dealt.split("train"))[: first.split("train").documents] == documents_of(first.split("train"))
    assert first.meta["splits"]["val"]["documents"] == 3, "documents 0, 5 and 10 of its 14"
    # An appended group numbers its documents after all 40, not after one shard's.
    prepare_lines(corpus_dir, tmp_path / "dealt", tokenizer_dir, append=True, **options)
    assert TokenStore.open(tmp_path / "dealt").shards[-1][0]["doc_base"] == 40


def test_shards_dealt_two_ways_in_one_group_or_more_shards_than_files_are_refused(corpus_dir, tokenizer_dir, tmp_path):
    prepare_lines(corpus_dir, tmp_path / "mixed", tokenizer_dir, shard="0/2", doc_per="file")
    prepare_lines(corpus_dir, tmp_path / "mixed", tokenizer_dir, shard="1/2", shard_by="files", doc_per="file")
    with pytest.raises(UnmaskError, match=r"shard 1/2 of group 0 was dealt out by files, its group's shard 0 by documents"):
        TokenStore.open(tmp_path / "mixed")
    with pytest.raises(UnmaskError, match=r"--shard 40/41 --shard-by files: the sources hold 40 file\(s\), none left for shard 40"):
        prepare_lines(corpus_dir, tmp_path / "many", tokenizer_dir, shard="40/41", shard_by="files", doc_per="file")
    assert not (tmp_path / "many").exists() or not any((tmp_path / "many").iterdir()), "nothing written"
    with pytest.raises(UnmaskError, match=r"--shard-by: deals out shards: give --shard I/N too"):
        PrepareConfig(sources=[str(corpus_dir)], out=str(tmp_path / "x"), shard_by="files")
