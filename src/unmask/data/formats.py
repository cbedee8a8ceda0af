"""One reader per format, each a generator of document texts that streams its input.

Text-like files are read line by line as bytes and decoded line by line, so a 10 MB line
works, memory stays flat, and an error names the line. Columnar files are read a batch of
rows at a time. Optional libraries (pyarrow, datasets, zstandard) are imported only when a
source needs them, with a one-line install hint when they are missing.
"""

from __future__ import annotations

import csv
import json
import lzma
import sys
from collections.abc import Callable, Iterator
from typing import IO

from unmask.errors import UnmaskError, optional_import

_DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, ValueError)
try:
    import zstandard

    _DECOMPRESSION_ERRORS += (zstandard.ZstdError,)
except ImportError:  # the zstd reader says how to install it when a .zst file shows up
    pass

OpenBinary = Callable[..., IO[bytes]]

# The opening bytes of binary formats people drop into text folders by accident.
_BINARY_SIGNATURES = {
    b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image", b"%PDF": "a PDF",
    b"PK\x03\x04": "a zip archive (also .docx, .xlsx, .jar)", b"\x1f\x8b": "gzip data (name it .gz to have it read)",
    b"\x7fELF": "a program", b"SQLite format 3": "an SQLite database", b"PAR1": "Parquet (name it .parquet to have it read)",
}  # fmt: skip


class BadFile(UnmaskError):
    """A file that cannot be read as text (binary, not UTF-8, corrupt or truncated)."""


def lines(source, open_binary: OpenBinary) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its line ending) of a text-like file."""
    label = source.location
    with open_binary(source) as stream:
        number = 0
        try:
            for number, raw in enumerate(stream, 1):
                if number == 1:
                    kind = next((what for magic, what in _BINARY_SIGNATURES.items() if raw.startswith(magic)), None)
                    if kind:
                        raise BadFile(f"{label}: looks like a binary file ({kind}), not text")
                if b"\x00" in raw:
                    raise BadFile(f"{label}: looks like a binary file (NUL byte on line {number}), not text")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise BadFile(f"{label}:{number}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
                yield number, line.removeprefix("\ufeff") if number == 1 else line
        except _DECOMPRESSION_ERRORS as e:
            what = f"{source.compression} " if source.compression else ""
            raise BadFile(f"{label}: corrupt or truncated {what}file after line {number} ({e})") from None


def check_text_stream(source, open_binary: OpenBinary) -> None:
    """Read a text-like file through once; BadFile if any of it is not readable text."""
    for _ in lines(source, open_binary):
        pass


def text_documents(source, open_binary: OpenBinary, doc_per: str) -> Iterator[str]:
    if doc_per == "file":
        yield "".join(line for _, line in lines(source, open_binary))
        return
    block: list[str] = []
    for _, line in lines(source, open_binary):
        # Only "\n" ends a line: form feeds and U+2028 occur inside text.
        line = line.rstrip("\n").rstrip("\r")
        if doc_per == "line":
            yield line
        elif line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _field(record, text_field: str, where: str):
    if not isinstance(record, dict) or text_field not in record:
        fields = f" (it has {', '.join(sorted(map(str, record))[:8])})" if isinstance(record, dict) else ""
        raise UnmaskError(f"{where}: record has no '{text_field}' field{fields}; set it with --text-field")
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UnmaskError(f"{where}: field '{text_field}' is {type(value).__name__}, not a string")
    return value


def jsonl_documents(source, open_binary: OpenBinary, text_field: str) -> Iterator[str]:
    for number, line in lines(source, open_binary):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnmaskError(f"{source.location}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield _field(record, text_field, f"{source.location}:{number}")


def table_documents(source, open_binary: OpenBinary, text_field: str, delimiter: str) -> Iterator[str]:
    """A CSV or TSV file with a header row; `text_field` names the column."""
    import io

    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # a document can be longer than csv's 128 kB default
    label = source.location
    with open_binary(source) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            if text_field not in header:
                raise UnmaskError(f"{label}: no column '{text_field}' (columns: {', '.join(header[:12])}); set it with --text-field")
            column = header.index(text_field)
            for row in reader:
                if not row:
                    continue
                if len(row) <= column:
                    raise UnmaskError(f"{label}:{reader.line_num}: row has {len(row)} fields, the header has {len(header)}")
                yield row[column]
        except UnicodeDecodeError as e:
            raise BadFile(f"{label}:{reader.line_num + 1}: not valid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
        except csv.Error as e:
            raise BadFile(f"{label}:{reader.line_num}: not a readable {'CSV' if delimiter == ',' else 'TSV'} row ({e})") from None
        except _DECOMPRESSION_ERRORS as e:
            where = f"near line {reader.line_num}" if reader.line_num else "before the first line"
            raise BadFile(f"{label}: corrupt or truncated file {where} ({e})") from None


def _string_column(schema, text_field: str, label: str) -> None:
    pa = optional_import("pyarrow", f"reading {label}", "parquet")
    if text_field not in schema.names:
        raise UnmaskError(f"{label}: no column '{text_field}' (columns: {', '.join(schema.names[:12])}); set it with --text-field")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UnmaskError(f"{label}: column '{text_field}' holds {kind}, not text")


def _column_values(batches, text_field: str) -> Iterator[str]:
    for batch in batches:
        for value in batch.column(text_field).to_pylist():
            yield value or ""


def parquet_documents(path: str, text_field: str) -> Iterator[str]:
    pq = optional_import("pyarrow.parquet", f"reading {path}", "parquet")
    pa = optional_import("pyarrow", f"reading {path}", "parquet")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: not a readable parquet file ({e})") from None
    _string_column(file.schema_arrow, text_field, path)
    try:
        yield from _column_values(file.iter_batches(columns=[text_field], batch_size=1024), text_field)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: corrupt parquet data ({e})") from None


def arrow_documents(path: str, text_field: str) -> Iterator[str]:
    """An Arrow IPC file, stream format (what `datasets` writes) or file format."""
    pa = optional_import("pyarrow", f"reading {path}", "parquet")
    try:
        source = pa.memory_map(path)
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            reader = (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: not a readable Arrow file ({e})") from None
    batches, schema = reader if isinstance(reader, tuple) else (reader, reader.schema)
    _string_column(schema, text_field, path)
    try:
        yield from _column_values(batches, text_field)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: corrupt Arrow data ({e})") from None


def saved_dataset_documents(path: str, text_field: str, split: str) -> Iterator[str]:
    datasets = optional_import("datasets", f"reading the saved dataset {path}", "datasets")
    try:
        loaded = datasets.load_from_disk(path)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise UnmaskError(f"{path}: cannot load the saved dataset: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UnmaskError(f"{path}: no split '{split}' (splits: {', '.join(loaded)}); choose one with --hf-split")
        loaded = loaded[split]
    if text_field not in loaded.column_names:
        raise UnmaskError(f"{path}: no column '{text_field}' (columns: {', '.join(loaded.column_names[:12])}); set it with --text-field")
    for batch in loaded.select_columns([text_field]).with_format("arrow").iter(batch_size=1024):
        yield from _column_values([batch], text_field)


def hub_documents(name: str, text_field: str, config: str | None, split: str) -> Iterator[str]:
    """A Hugging Face dataset, streamed: nothing is downloaded up front."""
    datasets = optional_import("datasets", f"reading hf:{name}", "datasets")
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # datasets raises many kinds (missing dataset, bad split or config, offline)
        message = " ".join(str(e).split())[:400]
        raise UnmaskError(f"hf:{name}: cannot load (config {config!r}, split {split!r}): {type(e).__name__}: {message}") from None
    for number, record in enumerate(stream, 1):
        yield _field(record, text_field, f"hf:{name} row {number}")
