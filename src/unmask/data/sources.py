"""Read documents from where users keep text, as a stream: memory stays flat whatever the size.

Kinds of source, mixed freely in one call:
- text files (.txt .text .md .rst) and JSON Lines (.jsonl .ndjson, `--text-field`), plain or
  compressed (.gz .bz2 .xz .zst, decompressed as a stream);
- CSV and TSV with a header row (`--text-field` names the column), plain or compressed;
- Parquet files (read by row group) and Arrow files (`.arrow`, as `datasets` writes them);
- a folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (`--hf-split`);
- `hf:NAME`, a Hugging Face dataset loaded with `streaming=True` (`--hf-config`, `--hf-split`);
- folders (searched recursively, hidden files skipped) and globs of any of these.

Every problem names the source (and line or row where there is one). Empty files and empty
documents are skipped and counted; binary, non-UTF-8 or corrupt files stop the run unless the
user asks to skip them, because a half-read corpus is worse than an error.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from unmask.data import formats
from unmask.data.formats import BadFile
from unmask.errors import UnmaskError, option
from unmask.storage.files import no_such_path
from unmask.storage.rundir import RunDir
from unmask.storage.storedir import StoreDir

SAMPLE_ALIAS = "sample:pydocs"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_corpus" / "pydocs"
HUB_PREFIX = "hf:"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
COLUMNAR_SUFFIXES = (".parquet", ".arrow")
COMPRESSIONS = {".gz": "gz", ".bz2": "bz2", ".xz": "xz", ".zst": "zst", ".zstd": "zst"}
STREAM_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + tuple(TABLE_SUFFIXES)
_GLOB_CHARS = set("*?[")

DocPer = Literal["file", "blank-line", "line"]
Kind = Literal["text", "jsonl", "csv", "tsv", "parquet", "arrow", "saved-dataset", "hub-dataset"]


@dataclass(frozen=True)
class Source:
    """One thing documents are read from."""

    kind: Kind
    location: str
    """A path, or a hub dataset's name."""
    compression: str | None = None

    @property
    def label(self) -> str:
        return f"{HUB_PREFIX}{self.location}" if self.kind == "hub-dataset" else self.location

    @property
    def is_file(self) -> bool:
        return self.kind not in ("saved-dataset", "hub-dataset")


@dataclass
class ReadReport:
    """What reading skipped, so the user sees it instead of losing it silently."""

    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    empty_documents: int = 0


@dataclass(frozen=True)
class ReadOptions:
    doc_per: DocPer = "file"
    text_field: str = "text"
    skip_bad_files: bool = False
    hf_config: str | None = None
    hf_split: str = "train"

    @classmethod
    def of(cls, settings) -> ReadOptions:
        """The reading options of a command's settings (`config.SourceOptions`)."""
        return cls(settings.doc_per, settings.text_field, settings.skip_bad_files, settings.hf_config, settings.hf_split)


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def classify(path: Path) -> Source | None:
    """The source a file is, by its name; None for a file unmask does not read."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    inner = suffixes[-2] if compression and len(suffixes) > 1 else (suffixes[-1] if suffixes and not compression else "")
    if inner in TEXT_SUFFIXES:
        return Source("text", str(path), compression)
    if inner in JSONL_SUFFIXES:
        return Source("jsonl", str(path), compression)
    if inner in TABLE_SUFFIXES:
        return Source("csv" if inner == ".csv" else "tsv", str(path), compression)
    if inner in COLUMNAR_SUFFIXES and not compression:
        return Source(inner[1:], str(path))  # type: ignore[arg-type]
    return None


def _made_by_unmask(path: Path) -> bool:
    """A token store or a run folder: their tokenizer files (vocab.txt) are not text to learn from."""
    return StoreDir(path).looks_like_store() or RunDir(path).is_run()


def _folder_sources(folder: Path) -> list[Source]:
    found: list[Source] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _made_by_unmask(Path(root) / d))
        here = Path(root)
        for name in list(dirs):
            if is_saved_dataset(here / name):
                found.append(Source("saved-dataset", str(here / name)))
                dirs.remove(name)
        found.extend(s for name in sorted(files) if not name.startswith(".") and (s := classify(here / name)) is not None)
    return found


def expand_sources(sources: list[str]) -> list[Source]:
    """What to read, in a stable order; an argument that yields nothing is an error."""
    found: list[Source] = []
    for source in sources:
        if source == SAMPLE_ALIAS:
            found.extend(Source("text", str(p)) for p in sorted(SAMPLE_DIR.glob("*.txt")))
            continue
        if source.startswith(HUB_PREFIX):
            name = source[len(HUB_PREFIX) :]
            if not name:
                raise UnmaskError(f"{source}: give a dataset name after hf:, e.g. hf:wikitext")
            found.append(Source("hub-dataset", name))
            continue
        path = Path(source)
        if path.is_dir():
            if is_saved_dataset(path):
                found.append(Source("saved-dataset", str(path)))
                continue
            inside = _folder_sources(path)
            if not inside:
                kinds = ", ".join(STREAM_SUFFIXES + COLUMNAR_SUFFIXES)
                raise UnmaskError(f"{source}: folder holds no usable files (looked for {kinds}, compressed or not, and saved datasets)")
            found.extend(inside)
        elif path.is_file():
            found.append(classify(path) or Source("text", str(path)))  # an unknown suffix is read as text
        elif _GLOB_CHARS & set(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not matches:
                raise UnmaskError(f"{source}: glob matched no files")
            found.extend(classify(p) or Source("text", str(p)) for p in matches)
        elif path.exists():
            raise UnmaskError(f"{source}: not a regular file or folder")
        else:
            raise UnmaskError(no_such_path(source, "file or folder"))
    unique = list(dict.fromkeys(found))
    for item in unique:
        if item.kind != "hub-dataset" and not os.access(item.location, os.R_OK):
            raise UnmaskError(f"{item.location}: permission denied (cannot read)")
    return unique


# The first bytes of each compressed format: a file named .gz that is not gzip data is named
# as such, instead of failing somewhere in the decompressor.
MAGIC = {"gz": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00", "zst": b"\x28\xb5\x2f\xfd"}


def check_compressed(source: Source) -> None:
    """Refuse a file whose name says compressed and whose bytes say otherwise."""
    magic = MAGIC.get(source.compression or "")
    if magic is None:
        return
    try:
        with open(source.location, "rb") as f:
            head = f.read(len(magic))
    except OSError as e:
        raise UnmaskError(f"{source.location}: cannot read: {e.strerror or e}") from None
    if head and head != magic:
        raise BadFile(
            f"{source.location}: named .{source.compression} but not {source.compression}-compressed "
            f"(it does not start with the format's signature); rename it without .{source.compression} if it is plain text"
        )


def open_binary(source: Source) -> IO[bytes]:
    """The file's bytes, decompressed as they are read."""
    path = source.location
    check_compressed(source)
    try:
        if source.compression == "gz":
            return gzip.open(path, "rb")
        if source.compression == "bz2":
            return bz2.open(path, "rb")
        if source.compression == "xz":
            return lzma.open(path, "rb")
        if source.compression == "zst":
            try:
                import zstandard
            except ImportError:
                raise UnmaskError(f"{path}: reading .zst needs zstandard: pip install 'unmask[zstd]'") from None
            return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
        return open(path, "rb")
    except OSError as e:
        raise UnmaskError(f"{path}: cannot read: {e.strerror or e}") from None


def _documents(source: Source, options: ReadOptions) -> Iterator[str]:
    if source.kind == "text":
        return formats.text_documents(source, open_binary, options.doc_per)
    if source.kind == "jsonl":
        return formats.jsonl_documents(source, open_binary, options.text_field)
    if source.kind in ("csv", "tsv"):
        return formats.table_documents(source, open_binary, options.text_field, TABLE_SUFFIXES[f".{source.kind}"])
    if source.kind == "parquet":
        return formats.parquet_documents(source.location, options.text_field)
    if source.kind == "arrow":
        return formats.arrow_documents(source.location, options.text_field)
    if source.kind == "saved-dataset":
        return formats.saved_dataset_documents(source.location, options.text_field, options.hf_split)
    return formats.hub_documents(source.location, options.text_field, options.hf_config, options.hf_split)


def read_documents(sources: list[Source], report: ReadReport, options: ReadOptions = ReadOptions()) -> Iterator[tuple[Source, str]]:
    """Yield (source, document text) for every non-empty document, filling in `report`.

    With `skip_bad_files`, each text-like file is first read through once to check it, so
    that a bad byte on line N never leaves lines 1..N-1 of a skipped file in the store.
    """
    for source in sources:
        report.files += 1
        if source.is_file and Path(source.location).stat().st_size == 0:
            report.empty_files.append(source.location)
            continue
        try:
            if options.skip_bad_files and source.kind in ("text", "jsonl", "csv", "tsv"):
                formats.check_text_stream(source, open_binary)
            for text in _documents(source, options):
                if text.strip():
                    yield source, text
                else:
                    report.empty_documents += 1
        except BadFile as e:
            if not options.skip_bad_files:
                raise UnmaskError(f"{e} (pass {option('skip_bad_files')} to skip such files)") from None
            report.bad_files.append(str(e))
