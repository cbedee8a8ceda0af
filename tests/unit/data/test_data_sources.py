"""Readers of text sources: formats, document modes, bad input named by file and line."""

from pathlib import Path

import pytest

from unmask.config import UnmaskError
from unmask.data.sources import SAMPLE_ALIAS, ReadOptions, ReadReport, Source, classify, expand_sources, read_documents


def docs(files, **kwargs):
    report = ReadReport()
    sources = [classify(Path(f)) or Source("text", str(f)) for f in files]
    return [text for _, text in read_documents(sources, report, ReadOptions(**kwargs))], report


def test_txt_document_modes(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsecond line\n\n\nnext block\r\nmore\n", encoding="utf-8")
    assert docs([path], doc_per="file")[0] == ["first line\nsecond line\n\n\nnext block\r\nmore\n"]
    assert docs([path], doc_per="blank-line")[0] == ["first line\nsecond line", "next block\nmore"]
    texts, report = docs([path], doc_per="line")
    assert texts == ["first line", "second line", "next block", "more"]
    assert report.empty_documents == 2, "the two blank lines; the newline that ends the file starts no document"


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
    assert [Path(f.location).name for f in files] == ["a.txt", "empty.txt"]
    texts, report = docs([f.location for f in files])
    assert texts == ["alpha"] and report.empty_files == [str(tmp_path / "empty.txt")]
    with pytest.raises(UnmaskError, match="glob matched no files"):
        expand_sources([str(tmp_path / "*.jsonl")])
    with pytest.raises(UnmaskError, match="no such file or folder"):
        expand_sources([str(tmp_path / "missing.txt")])
    (tmp_path / "corpus").mkdir()
    with pytest.raises(UnmaskError, match=r"corpsu': no such file or folder; did you mean .*corpus\?"):
        expand_sources([str(tmp_path / "corpsu")])
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "x.bin").write_bytes(b"1")
    with pytest.raises(UnmaskError, match="folder holds no usable files"):
        expand_sources([str(tmp_path / "nothing")])
    assert len(expand_sources([str(tmp_path / "*.txt")])) == 2


def test_bundled_sample_corpus_is_about_a_megabyte_of_text():
    files = expand_sources([SAMPLE_ALIAS])
    assert len(files) >= 40
    assert 0.8e6 < sum(Path(f.location).stat().st_size for f in files) < 1.5e6


def test_a_folder_source_skips_token_stores_and_runs_inside_it(tmp_path, store_dir):
    import shutil

    shutil.copytree(store_dir, tmp_path / "old-store")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data: x\n")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "run" / "model").mkdir()
    (tmp_path / "run" / "model" / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    (tmp_path / "text.txt").write_text("the text to learn from")
    assert [Path(s.location).name for s in expand_sources([str(tmp_path)])] == ["text.txt"]


def test_an_hf_dataset_with_the_hub_unreachable_fails_at_once_without_retries(monkeypatch, capfd):
    """Offline, `datasets` retried for half a minute ("Retrying in Ns") before the same error;
    now the reachability check (as for models) switches it to the local cache first."""
    pytest.importorskip("datasets")
    import datasets.config
    from huggingface_hub import constants

    from unmask.data import formats
    from unmask.storage import names

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(names, "hub_reachable", lambda timeout=2.0: False)
    with pytest.raises(
        UnmaskError, match=r"hf:someone/no-such-dataset: cannot load .*the hub did not answer, so only a copy in the local cache"
    ):
        next(formats.hub_records("someone/no-such-dataset", None, "train"))
    assert datasets.config.HF_HUB_OFFLINE is True, "datasets' own copy of the setting is switched too"
    assert "Retrying" not in capfd.readouterr().err
