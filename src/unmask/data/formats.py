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
from unmask.storage.names import go_offline_if_unreachable, hub_offline

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


def text_value(record, text_field: str, where: str, flag: str = "--text-field") -> str:
    """A record's text: missing field an error naming what it has, None an empty text."""
    if not isinstance(record, dict) or text_field not in record:
        fields = f" (it has {', '.join(sorted(map(str, record))[:8])})" if isinstance(record, dict) else ""
        raise UnmaskError(f"{where}: record has no '{text_field}' field{fields}; set it with {flag}")
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UnmaskError(f"{where}: field '{text_field}' is {type(value).__name__}, not a string")
    return value


# ---------------------------------------------------------------- records: (where, mapping)
# Each reader yields every record of a source with a label saying where it is (file:line,
# row N), for messages. `columns` maps the columns a caller needs to the flag that names
# them, so a missing one is an error that says which flag to change.


def jsonl_records(source, open_binary: OpenBinary) -> Iterator[tuple[str, dict]]:
    for number, line in lines(source, open_binary):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnmaskError(f"{source.location}:{number}: invalid JSON ({e.msg} at column {e.colno})") from None
        yield f"{source.location}:{number}", record


def table_records(source, open_binary: OpenBinary, delimiter: str, columns: dict[str, str]) -> Iterator[tuple[str, dict]]:
    """A CSV or TSV file with a header row; each row as {column: value} of the `columns` needed."""
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
            for column, flag in columns.items():
                if column not in header:
                    raise UnmaskError(f"{label}: no column '{column}' (columns: {', '.join(header[:12])}); set it with {flag}")
            where = {column: header.index(column) for column in columns}
            widest = max(where.values())
            for row in reader:
                if not row:
                    continue
                if len(row) <= widest:
                    raise UnmaskError(f"{label}:{reader.line_num}: row has {len(row)} fields, the header has {len(header)}")
                yield f"{label}:{reader.line_num}", {column: row[index] for column, index in where.items()}
        except UnicodeDecodeError as e:
            raise BadFile(f"{label}:{reader.line_num + 1}: not valid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
        except csv.Error as e:
            raise BadFile(f"{label}:{reader.line_num}: not a readable {'CSV' if delimiter == ',' else 'TSV'} row ({e})") from None
        except _DECOMPRESSION_ERRORS as e:
            place = f"near line {reader.line_num}" if reader.line_num else "before the first line"
            raise BadFile(f"{label}: corrupt or truncated file {place} ({e})") from None


def _check_columns(names: list[str], columns: dict[str, str], label: str) -> None:
    for column, flag in columns.items():
        if column not in names:
            raise UnmaskError(f"{label}: no column '{column}' (columns: {', '.join(names[:12])}); set it with {flag}")


def _string_column(schema, text_field: str, label: str) -> None:
    pa = optional_import("pyarrow", f"reading {label}", "parquet")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise UnmaskError(f"{label}: column '{text_field}' holds {kind}, not text")


def _batch_rows(batches, columns: list[str], label: str) -> Iterator[tuple[str, dict]]:
    number = 0
    for batch in batches:
        values = {column: batch.column(column).to_pylist() for column in columns}
        for index in range(batch.num_rows):
            number += 1
            yield f"{label} row {number}", {column: values[column][index] for column in columns}


def parquet_records(path: str, columns: dict[str, str], text_column: str | None = None) -> Iterator[tuple[str, dict]]:
    """Parquet rows, a row group at a time, reading only `columns` (`text_column` must hold text)."""
    pq = optional_import("pyarrow.parquet", f"reading {path}", "parquet")
    pa = optional_import("pyarrow", f"reading {path}", "parquet")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: not a readable parquet file ({e})") from None
    _check_columns(file.schema_arrow.names, columns, path)
    if text_column is not None:
        _string_column(file.schema_arrow, text_column, path)
    try:
        yield from _batch_rows(file.iter_batches(columns=list(columns), batch_size=1024), list(columns), path)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: corrupt parquet data ({e})") from None


def arrow_records(path: str, columns: dict[str, str], text_column: str | None = None) -> Iterator[tuple[str, dict]]:
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
    _check_columns(schema.names, columns, path)
    if text_column is not None:
        _string_column(schema, text_column, path)
    try:
        yield from _batch_rows(batches, list(columns), path)
    except (pa.ArrowException, OSError) as e:
        raise BadFile(f"{path}: corrupt Arrow data ({e})") from None


def saved_dataset_records(path: str, columns: dict[str, str], split: str) -> Iterator[tuple[str, dict]]:
    datasets = optional_import("datasets", f"reading the saved dataset {path}", "datasets")
    try:
        loaded = datasets.load_from_disk(path)
    except (OSError, ValueError, FileNotFoundError) as e:
        raise UnmaskError(f"{path}: cannot load the saved dataset: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise UnmaskError(f"{path}: no split '{split}' (splits: {', '.join(loaded)}); choose one with --hf-split")
        loaded = loaded[split]
    _check_columns(loaded.column_names, columns, path)
    yield from _batch_rows(loaded.select_columns(list(columns)).with_format("arrow").iter(batch_size=1024), list(columns), path)


def hub_records(name: str, config: str | None, split: str) -> Iterator[tuple[str, dict]]:
    """A Hugging Face dataset, streamed: nothing is downloaded up front."""
    datasets = optional_import("datasets", f"reading hf:{name}", "datasets")
    go_offline_if_unreachable(name)  # else a minute of "Retrying in Ns" before the same error
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:  # datasets raises many kinds (missing dataset, bad split or config, offline)
        message = " ".join(str(e).split())[:400]
        offline = " (the hub did not answer, so only a copy in the local cache could load)" if hub_offline() else ""
        raise UnmaskError(f"hf:{name}: cannot load (config {config!r}, split {split!r}){offline}: {type(e).__name__}: {message}") from None
    for number, record in enumerate(stream, 1):
        yield f"hf:{name} row {number}", record


def label_names(source_kind: str, location: str, column: str, config: str | None, split: str) -> list[str] | None:
    """The class names a dataset declares for an integer label column (`ClassLabel`), if any."""
    if source_kind not in ("saved-dataset", "hub-dataset"):
        return None
    datasets = optional_import("datasets", f"reading {location}", "datasets")
    try:
        if source_kind == "saved-dataset":
            loaded = datasets.load_from_disk(location)
            features = (loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded).features
        else:
            go_offline_if_unreachable(location)
            features = datasets.load_dataset_builder(location, config).info.features
    except Exception:  # the names are a nicety; the records themselves are read (and checked) anyway
        return None
    feature = (features or {}).get(column)
    inner = getattr(feature, "feature", feature)  # a Sequence of ClassLabel for token tags
    return list(inner.names) if hasattr(inner, "names") else None


# ---------------------------------------------------------------- documents: the text of each record


def jsonl_documents(source, open_binary: OpenBinary, text_field: str) -> Iterator[str]:
    for where, record in jsonl_records(source, open_binary):
        yield text_value(record, text_field, where)


def table_documents(source, open_binary: OpenBinary, text_field: str, delimiter: str) -> Iterator[str]:
    """A CSV or TSV file with a header row; `text_field` names the column."""
    for _, record in table_records(source, open_binary, delimiter, {text_field: "--text-field"}):
        yield record[text_field]


def parquet_documents(path: str, text_field: str) -> Iterator[str]:
    for _, record in parquet_records(path, {text_field: "--text-field"}, text_column=text_field):
        yield record[text_field] or ""


def arrow_documents(path: str, text_field: str) -> Iterator[str]:
    for _, record in arrow_records(path, {text_field: "--text-field"}, text_column=text_field):
        yield record[text_field] or ""


def saved_dataset_documents(path: str, text_field: str, split: str) -> Iterator[str]:
    for _, record in saved_dataset_records(path, {text_field: "--text-field"}, split):
        yield record[text_field] or ""


def hub_documents(name: str, text_field: str, config: str | None, split: str) -> Iterator[str]:
    for where, record in hub_records(name, config, split):
        yield text_value(record, text_field, where)
