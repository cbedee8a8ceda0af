import json
import math
from fractions import Fraction

import numpy as np
import pytest
from transformers import AutoTokenizer

from unmask.config import PrepareConfig, UnmaskError
from unmask.data import store as store_module
from unmask.data.sources import SAMPLE_ALIAS, ReadReport, expand_sources, read_documents
from unmask.data.store import TokenStore, is_validation_document, prepare
from unmask.data.windows import DataPosition, WindowSampler, Windows, epoch_order, packed_windows, padded_windows


def docs(files, **kwargs):
    report = ReadReport()
    return [text for _, text in read_documents(files, report, **kwargs)], report


def test_txt_document_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n\n\nnext block\r\nmore\n", encoding="utf-8")
    assert docs([path], doc_per="file")[0] == ["first line\nsecond line\n\n\nnext block\r\nmore\n"]
    assert docs([path], doc_per="blank-line")[0] == ["first line\nsecond line", "next block\nmore"]
    texts, report = docs([path], doc_per="line")
    assert texts == ["first line", "second line", "next block", "more"]
    assert report.empty_documents == 3


def test_jsonl_reads_the_configured_field_and_names_bad_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "hello"}\n\n{"body": "x", "text": "world \\u2028 sep"}\n', encoding="utf-8")
    assert docs([path])[0] == ["hello", "world \u2028 sep"]
    other = tmp_path / "b.jsonl"
    other.write_text('{"body": "x"}\n', encoding="utf-8")
    assert docs([other], text_field="body")[0] == ["x"]
    with pytest.raises(UnmaskError, match=r"b\.jsonl:1: record has no 'text' field"):
        docs([other])
    broken = tmp_path / "c.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(UnmaskError, match=r"c\.jsonl:2: invalid JSON"):
        docs([broken])


def test_bad_files_name_file_and_line_or_are_skipped_whole(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine text", encoding="utf-8")
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\x89PNG\x00\x00\x01")
    with pytest.raises(UnmaskError, match=r"latin\.jsonl:2: not valid UTF-8"):
        docs([latin])
    with pytest.raises(UnmaskError, match=r"blob\.txt: looks like a binary file"):
        docs([binary])
    texts, report = docs([latin, good, binary], skip_bad_files=True)
    assert texts == ["fine text"], "a skipped file contributes nothing, not even its good first line"
    assert len(report.bad_files) == 2


def test_source_expansion_errors_and_skips(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "a.txt").write_text("alpha", encoding="utf-8")
    (tmp_path / "notes.bin").write_bytes(b"\x00")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.txt").write_text("hidden", encoding="utf-8")
    files = expand_sources([str(tmp_path)])
    assert [f.name for f in files] == ["a.txt", "empty.txt"]
    texts, report = docs(files)
    assert texts == ["alpha"] and report.empty_files == [str(tmp_path / "empty.txt")]
    with pytest.raises(UnmaskError, match="glob matched no files"):
        expand_sources([str(tmp_path / "*.jsonl")])
    with pytest.raises(UnmaskError, match="no such file or folder"):
        expand_sources([str(tmp_path / "missing.txt")])
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.bin").write_bytes(b"1")
    with pytest.raises(UnmaskError, match="folder holds no usable files"):
        expand_sources([str(tmp_path / "nothing")])
    assert len(expand_sources([str(tmp_path / "*.txt")])) == 2


def test_bundled_sample_corpus_is_about_a_megabyte_of_text():
    files = expand_sources([SAMPLE_ALIAS])
    assert len(files) >= 40
    assert 0.8e6 < sum(f.stat().st_size for f in files) < 1.5e6


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
    meta = json.loads((store_dir / "meta.json").read_text())
    assert meta["tokenizer"]["vocab_size"] == len(tokenizer)
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

    monkeypatch.setattr(store_module, "swap_into_place", crash)
    config.overwrite = True
    with pytest.raises(KeyboardInterrupt):
        prepare(config, progress=False)
    assert (out / "train.tokens").read_bytes() == before, "the old store must survive a failed overwrite"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "no half-built folder is left behind"


def test_prepare_needs_a_document_for_training(tmp_path, tokenizer_dir):
    one = tmp_path / "one.txt"
    one.write_text("a single document", encoding="utf-8")
    with pytest.raises(UnmaskError, match="none left for training"):
        prepare(PrepareConfig(sources=[str(one)], out=str(tmp_path / "s"), tokenizer=str(tokenizer_dir)), progress=False)
    meta = prepare(PrepareConfig(sources=[str(one)], out=str(tmp_path / "s"), tokenizer=str(tokenizer_dir), val_fraction=0.0), progress=False)
    assert meta["splits"]["val"]["documents"] == 0


def test_packed_windows_frame_the_stream_without_padding():
    starts, lengths = packed_windows(10, 4, keep_partial=False)
    assert starts.tolist() == [0, 4] and lengths.tolist() == [4, 4]
    starts, lengths = packed_windows(10, 4, keep_partial=True)
    assert starts.tolist() == [0, 4, 8] and lengths.tolist() == [4, 4, 2]


def test_windows_batches_are_framed_and_padded_windows_stay_in_their_document():
    from unmask.data.store import Split

    tokens = np.array([10, 11, 12, 3, 20, 21, 22, 23, 24, 3], dtype=np.uint16)  # two docs, separator id 3
    split = Split(tokens, np.array([0, 4, 10]))
    packed = Windows.build(split, seq_len=6, opener_id=2, closer_id=3, pad_id=0)
    ids, mask = packed.batch(np.array([0, 1]))
    assert ids.tolist() == [[2, 10, 11, 12, 3, 3], [2, 20, 21, 22, 23, 3]]
    assert mask.min() == 1
    starts, lengths = padded_windows(split.offsets, body_len=4)
    assert list(zip(starts.tolist(), lengths.tolist())) == [(0, 3), (4, 4), (8, 1)]
    padded = Windows.build(split, seq_len=6, opener_id=2, closer_id=3, pad_id=0, packing="padded")
    ids, mask = padded.batch(np.array([0, 2]))
    assert ids.tolist() == [[2, 10, 11, 12, 3, 0], [2, 24, 3, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]]


def test_sampler_order_is_seeded_crosses_epochs_and_resumes_without_replay():
    straight = WindowSampler(10, seed=5)
    batches = [straight.take(4).tolist() for _ in range(6)]  # 24 windows: 2.4 epochs
    flat = sum(batches, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert flat[:10] == epoch_order(10, 5, 0).tolist() and flat[10:20] == epoch_order(10, 5, 1).tolist()
    assert flat[:10] != flat[10:20], "each epoch has its own order"
    resumed = WindowSampler(10, seed=5, position=DataPosition(epoch=1, position=2))  # after 3 batches
    assert sum((resumed.take(4).tolist() for _ in range(3)), []) == flat[12:]
    assert WindowSampler(10, seed=6).take(10).tolist() != flat[:10]
