"""Every kind of source gives the same token store as plain text files; bad input is named."""

import bz2
import csv
import gzip
import json
import lzma
import shutil

import numpy as np
import pytest
from conftest import make_documents

from unmask.config import PrepareConfig, UnmaskError
from unmask.data.prepare import prepare
from unmask.data.store import TokenStore

DOCS = make_documents(12, sentences_per_doc=4, seed=7)


def store_of(sources, out, tokenizer_dir, **options) -> TokenStore:
    settings = {"val_fraction": 0.2, **options}
    prepare(PrepareConfig(sources=[str(s) for s in sources], out=str(out), tokenizer=str(tokenizer_dir), **settings), progress=False)
    return TokenStore.open(out)


def same_store(a: TokenStore, b: TokenStore) -> None:
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(a.split(split).tokens), np.asarray(b.split(split).tokens)), split
        assert np.array_equal(np.asarray(a.split(split).offsets), np.asarray(b.split(split).offsets)), split


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("formats")
    texts = root / "texts"
    texts.mkdir()
    for i, doc in enumerate(DOCS):
        (texts / f"doc{i:02d}.txt").write_text(doc, encoding="utf-8")
    return root, store_of([texts], root / "reference", tokenizer_dir)


def write_jsonl(path, opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, doc in enumerate(DOCS):
            f.write(json.dumps({"id": i, "text": doc}) + "\n")


def zstd_open(path, mode, encoding):
    import io

    import zstandard

    return io.TextIOWrapper(zstandard.ZstdCompressor().stream_writer(open(path, "wb")), encoding=encoding)


@pytest.mark.parametrize(
    "name,opener",
    [("plain.jsonl", open), ("g.jsonl.gz", gzip.open), ("b.jsonl.bz2", bz2.open), ("x.jsonl.xz", lzma.open), ("z.jsonl.zst", zstd_open)],
)
def test_json_lines_plain_and_compressed_give_the_same_store(reference, tokenizer_dir, tmp_path, name, opener):
    _, expected = reference
    write_jsonl(tmp_path / name, opener)
    same_store(store_of([tmp_path / name], tmp_path / "store", tokenizer_dir), expected)


@pytest.mark.parametrize("delimiter,suffix", [(",", "csv"), ("\t", "tsv")])
def test_csv_and_tsv_with_a_header_give_the_same_store(reference, tokenizer_dir, tmp_path, delimiter, suffix):
    _, expected = reference
    with open(tmp_path / f"docs.{suffix}", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["id", "body", "lang"])
        writer.writerows([i, doc + '\nwith "quotes", a comma\tand a tab', "en"] for i, doc in enumerate(DOCS))
    store = store_of([tmp_path / f"docs.{suffix}"], tmp_path / "store", tokenizer_dir, text_field="body")
    assert store.meta["splits"]["train"]["documents"] + store.meta["splits"]["val"]["documents"] == len(DOCS)
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, doc in enumerate(DOCS):
        (plain / f"{i:02d}.txt").write_text(doc + '\nwith "quotes", a comma\tand a tab', encoding="utf-8")
    same_store(store, store_of([plain], tmp_path / "plain-store", tokenizer_dir))


def test_parquet_arrow_and_saved_datasets_give_the_same_store(reference, tokenizer_dir, tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, expected = reference
    table = pa.table({"id": list(range(len(DOCS))), "text": DOCS})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=5)  # three row groups, read one at a time
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(table.slice(0, 7), shards / "part-0.parquet")
    pq.write_table(table.slice(7), shards / "part-1.parquet")
    dataset = datasets.Dataset.from_dict({"id": list(range(len(DOCS))), "text": DOCS})
    dataset.save_to_disk(tmp_path / "saved")
    datasets.DatasetDict({"train": dataset, "test": dataset.select(range(2))}).save_to_disk(tmp_path / "saved-dict")
    arrow_file = next((tmp_path / "saved").glob("*.arrow"))
    for source in ("docs.parquet", "shards", "saved", "saved-dict", arrow_file.relative_to(tmp_path)):
        same_store(store_of([tmp_path / source], tmp_path / f"store-{source}".replace("/", "-"), tokenizer_dir), expected)


def test_a_hub_dataset_streams_through_load_dataset(reference, tokenizer_dir, tmp_path):
    """No network here: a local folder goes through the same `load_dataset(..., streaming=True)` call as a hub name."""
    _, expected = reference
    folder = tmp_path / "hub-like"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl")
    same_store(store_of([f"hf:{folder}"], tmp_path / "store", tokenizer_dir), expected)
    with pytest.raises(UnmaskError, match=r"hf:.*hub-like: cannot load \(config None, split 'validation'\)"):
        store_of([f"hf:{folder}"], tmp_path / "bad", tokenizer_dir, hf_split="validation")
    assert not (tmp_path / "bad").exists()


def test_sources_of_every_kind_mix_in_one_call(reference, tokenizer_dir, tmp_path):
    root, _ = reference
    write_jsonl(tmp_path / "a.jsonl.gz", gzip.open)
    store = store_of([root / "texts", tmp_path / "a.jsonl.gz"], tmp_path / "store", tokenizer_dir)
    assert sum(store.meta["splits"][s]["documents"] for s in ("train", "val")) == 2 * len(DOCS)


def test_max_docs_and_max_tokens_cap_what_is_read(reference, tokenizer_dir, tmp_path):
    root, expected = reference
    capped = store_of([root / "texts"], tmp_path / "docs", tokenizer_dir, max_docs=5)
    assert sum(capped.meta["splits"][s]["documents"] for s in ("train", "val")) == 5
    total = sum(expected.meta["splits"][s]["tokens"] for s in ("train", "val"))
    by_tokens = store_of([root / "texts"], tmp_path / "tokens", tokenizer_dir, max_tokens=total // 3)
    stored = sum(by_tokens.meta["splits"][s]["tokens"] for s in ("train", "val"))
    documents = sum(by_tokens.meta["splits"][s]["documents"] for s in ("train", "val"))
    assert total // 3 <= stored < total // 3 + 200 and documents < len(DOCS), "whole documents, stopping once the cap is reached"


def corrupt_gzip(path):
    write_jsonl(path, gzip.open)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage_zstd(path):
    path.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(256)) * 4)


@pytest.mark.parametrize(
    "make,name,options,message",
    [
        (
            lambda p: __import__("pyarrow.parquet").parquet.write_table(__import__("pyarrow").table({"body": DOCS}), p),
            "docs.parquet",
            {},
            r"docs\.parquet: no column 'text' \(columns: body\); set it with --text-field",
        ),
        (corrupt_gzip, "docs.jsonl.gz", {}, r"docs\.jsonl\.gz: corrupt or truncated gz file"),
        (garbage_zstd, "docs.jsonl.zst", {}, r"docs\.jsonl\.zst: corrupt or truncated zst file"),
        (lambda p: p.write_text("id,body\n1,hello\n"), "docs.csv", {}, r"docs\.csv: no column 'text' \(columns: id, body\)"),
        (lambda p: p.write_bytes(b"PAR1 not really parquet PAR1"), "docs.parquet", {}, r"docs\.parquet: not a readable parquet file"),
        (
            lambda p: (
                __import__("datasets").DatasetDict({"train": __import__("datasets").Dataset.from_dict({"text": DOCS})}).save_to_disk(p)
            ),
            "saved",
            {"hf_split": "test"},
            r"saved: no split 'test' \(splits: train\); choose one with --hf-split",
        ),
        (
            lambda p: p.write_text("text\nhello\n"),
            "docs.csv.gz",
            {},
            r"docs\.csv\.gz: named \.gz but not gz-compressed .*; rename it without \.gz if it is plain text",
        ),
    ],
    ids=[
        "parquet-without-field",
        "truncated-gzip",
        "garbage-zstd",
        "csv-without-column",
        "not-parquet",
        "missing-split",
        "plain-csv-named-gz",
    ],
)
def test_bad_input_is_one_clear_message_and_nothing_half_written(tokenizer_dir, tmp_path, make, name, options, message):
    make(tmp_path / name)
    with pytest.raises(UnmaskError, match=message):
        store_of([tmp_path / name], tmp_path / "store", tokenizer_dir, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "no store and no half-built folder"


def test_corrupt_files_can_be_skipped_whole(reference, tokenizer_dir, tmp_path):
    root, expected = reference
    shutil.copytree(root / "texts", tmp_path / "texts")
    corrupt_gzip(tmp_path / "texts" / "broken.jsonl.gz")
    store = store_of([tmp_path / "texts"], tmp_path / "store", tokenizer_dir, skip_bad_files=True)
    same_store(store, expected)
    assert len(store.meta["skipped"]["bad_files"]) == 1 and "broken.jsonl.gz" in store.meta["skipped"]["bad_files"][0]


def test_a_missing_optional_library_gets_a_one_line_install_hint(tokenizer_dir, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets when it is not installed
    with pytest.raises(UnmaskError, match=r"reading hf:wikitext needs datasets: pip install 'unmask\[datasets\]'"):
        store_of(["hf:wikitext"], tmp_path / "store", tokenizer_dir)


@pytest.mark.slow
def test_a_ten_megabyte_line_and_a_file_with_a_nul_byte(tokenizer_dir, tmp_path):
    line = ("the cat sees the door " * 460_000)[:10_000_000]
    (tmp_path / "long.txt").write_text(line + "\n", encoding="utf-8")
    store = store_of([tmp_path / "long.txt"], tmp_path / "store", tokenizer_dir, val_fraction=0.0)
    assert store.meta["splits"]["train"]["tokens"] > 2_000_000
    (tmp_path / "nul.txt").write_bytes(b"fine line\nanother\x00line\n")
    with pytest.raises(UnmaskError, match=r"nul\.txt: looks like a binary file \(NUL byte on line 2\)"):
        store_of([tmp_path / "nul.txt"], tmp_path / "nul-store", tokenizer_dir, val_fraction=0.0)


def test_offline_a_hub_name_fails_with_the_reason_not_a_traceback(tokenizer_dir, tmp_path):
    with pytest.raises(UnmaskError, match=r"hf:no-such-dataset-xyz: cannot load .*(Offline|offline|Couldn't reach)"):
        store_of(["hf:no-such-dataset-xyz"], tmp_path / "store", tokenizer_dir)
