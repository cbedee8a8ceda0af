"""Read documents from text sources: .txt, .jsonl, folders and globs of them.

Every problem names the file (and line where there is one). Empty files and empty
documents are skipped and counted; binary or non-UTF-8 files stop the run unless the user
asks to skip them, because a half-read corpus is worse than an error.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from unmask.config import UnmaskError

SAMPLE_ALIAS = "sample:pydocs"
SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_corpus" / "pydocs"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_GLOB_CHARS = set("*?[")
_BINARY_PROBE_BYTES = 8192

DocPer = Literal["file", "blank-line", "line"]


class BadFile(UnmaskError):
    """A file that cannot be read as text (binary, not UTF-8, unreadable)."""


@dataclass
class ReadReport:
    """What reading skipped, so the user sees it instead of losing it silently."""

    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)
    empty_documents: int = 0


def expand_sources(sources: list[str]) -> list[Path]:
    """Files to read, in a stable order; an argument that yields nothing is an error."""
    files: list[Path] = []
    for source in sources:
        if source == SAMPLE_ALIAS:
            files.extend(sorted(SAMPLE_DIR.glob("*.txt")))
            continue
        path = Path(source)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                suffixes = ", ".join(TEXT_SUFFIXES + JSONL_SUFFIXES)
                raise UnmaskError(f"{source}: folder holds no usable files (looked for {suffixes})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif _GLOB_CHARS & set(source):
            found = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not found:
                raise UnmaskError(f"{source}: glob matched no files")
            files.extend(found)
        elif path.exists():
            raise UnmaskError(f"{source}: not a regular file or folder")
        else:
            raise UnmaskError(f"{source}: no such file or folder")
    unique = list(dict.fromkeys(files))
    for path in unique:
        if not os.access(path, os.R_OK):
            raise UnmaskError(f"{path}: permission denied (cannot read)")
    return unique


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = 1 + data[: e.start].count(b"\n")
        raise BadFile(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnmaskError(f"{path}: cannot read: {e.strerror}") from None
    if b"\x00" in data[:_BINARY_PROBE_BYTES]:
        raise BadFile(f"{path}: looks like a binary file (NUL bytes), not text")
    return data


def _lines(text: str) -> list[str]:
    # Not str.splitlines: it also splits on form feeds and U+2028, which occur inside text.
    return [line.rstrip("\r") for line in text.split("\n")]


def _split_blocks(text: str) -> Iterator[str]:
    block: list[str] = []
    for line in _lines(text):
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _text_documents(path: Path, doc_per: DocPer) -> Iterator[str]:
    text = _decode(_read_bytes(path), path)
    if doc_per == "file":
        yield text
    elif doc_per == "blank-line":
        yield from _split_blocks(text)
    else:
        yield from _lines(text)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    # Decode the whole file before yielding, so a bad byte on line N never leaves lines
    # 1..N-1 in the store of a file the user asked to skip.
    text = _decode(_read_bytes(path), path)
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnmaskError(f"{path}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(record, dict) or text_field not in record:
            raise UnmaskError(f"{path}:{number}: record has no '{text_field}' field (set it with --text-field)")
        value = record[text_field]
        if not isinstance(value, str):
            raise UnmaskError(f"{path}:{number}: field '{text_field}' is {type(value).__name__}, not a string")
        yield value


def read_documents(
    files: list[Path], report: ReadReport, doc_per: DocPer = "file", text_field: str = "text", skip_bad_files: bool = False
) -> Iterator[tuple[Path, str]]:
    """Yield (file, document text) for every non-empty document, filling in `report`."""
    for path in files:
        report.files += 1
        if path.stat().st_size == 0:
            report.empty_files.append(str(path))
            continue
        is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
        documents = _jsonl_documents(path, text_field) if is_jsonl else _text_documents(path, doc_per)
        try:
            for text in documents:
                if text.strip():
                    yield path, text
                else:
                    report.empty_documents += 1
        except BadFile as e:
            if not skip_bad_files:
                raise UnmaskError(f"{e} (pass --skip-bad-files to skip such files)") from None
            report.bad_files.append(str(e))
