"""Labelled records for fine-tuning and probes, from every source `prepare` reads but plain text.

`read_records(spec, columns, options)` yields (where, record) for one source argument: a
.jsonl, .csv or .tsv file (plain or compressed), a .parquet or .arrow file, a folder or a
glob of those, a saved dataset folder, or `hf:NAME` (`--hf-config`, `--hf-split`). `columns`
names the fields a task needs, each with the flag that sets it, so a missing one is named.

`sample:pydocs-sections:train` and `:eval` are a task made from the bundled sample corpus,
offline: prose paragraphs labelled by the part of the Python documentation they come from
(faq, howto, tutorial). Its eval split is exactly the paragraphs that `unmask prepare
sample:pydocs --doc-per blank-line --val-fraction 0.1` holds out, so a model pretrained on
that store has never seen the text it is scored on. (Held out by paragraph, not by file: the
sample has too few files for each section to be more than one topic in a file-level split.)
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

from unmask.data import formats
from unmask.data.sources import SAMPLE_ALIAS, TABLE_SUFFIXES, ReadOptions, ReadReport, Source, expand_sources, open_binary, read_documents
from unmask.errors import UnmaskError
from unmask.storage.storedir import is_validation_document

SAMPLE_TASK = "sample:pydocs-sections"
SAMPLE_TASK_VAL_FRACTION = Fraction("0.1")
SAMPLE_TASK_SECTIONS = ("faq", "howto", "tutorial")
_MIN_WORDS = 25
DEFAULT_OPTIONS = ReadOptions()


def _paragraphs(text: str) -> Iterator[str]:
    """Prose paragraphs of a reStructuredText file: blank-line blocks of at least 25 words,
    not indented (code, directive bodies), not a directive, a prompt or a heading."""
    for block in text.split("\n\n"):
        lines = [line for line in block.split("\n") if line.strip()]
        if not lines or any(line[:1].isspace() for line in lines):
            continue
        if lines[0].lstrip().startswith(("..", ">>>", "::", "|")) or any(set(line.strip()) <= set("=-~^*#+") for line in lines):
            continue
        paragraph = " ".join(line.strip() for line in lines)
        if len(paragraph.split()) >= _MIN_WORDS:
            yield paragraph


def sample_task_records(split: str) -> Iterator[tuple[str, dict]]:
    """The offline task: {"text": paragraph, "label": section} of the paragraphs the sample's
    store holds out (`eval`) or keeps (`train`), taken from the files in turn, so that the
    first N records (--max-train-examples) hold every section."""
    if split not in ("train", "eval"):
        raise UnmaskError(f"{SAMPLE_TASK}:{split}: the splits are {SAMPLE_TASK}:train and {SAMPLE_TASK}:eval")
    by_file: dict[str, list[tuple[str, dict]]] = {}
    blocks = read_documents(expand_sources([SAMPLE_ALIAS]), ReadReport(), ReadOptions(doc_per="blank-line"))
    for index, (source, text) in enumerate(blocks):  # the indices `prepare` gives these documents
        name = Path(source.location).name
        section = name.split("_", 1)[0]
        if (split == "eval") != is_validation_document(index, SAMPLE_TASK_VAL_FRACTION) or section not in SAMPLE_TASK_SECTIONS:
            continue
        for paragraph in _paragraphs(text):
            found = by_file.setdefault(name, [])
            found.append((f"{name} paragraph {len(found) + 1}", {"text": paragraph, "label": section}))
    files = list(by_file.values())
    for number in range(max(len(f) for f in files)):
        yield from (records[number] for records in files if number < len(records))


def _source_records(source: Source, columns: dict[str, str], options: ReadOptions) -> Iterator[tuple[str, dict]]:
    if source.kind == "jsonl":
        return formats.jsonl_records(source, open_binary)
    if source.kind in ("csv", "tsv"):
        return formats.table_records(source, open_binary, TABLE_SUFFIXES[f".{source.kind}"], columns)
    if source.kind == "parquet":
        return formats.parquet_records(source.location, columns)
    if source.kind == "arrow":
        return formats.arrow_records(source.location, columns)
    if source.kind == "saved-dataset":
        return formats.saved_dataset_records(source.location, columns, options.hf_split)
    if source.kind == "hub-dataset":
        return formats.hub_records(source.location, options.hf_config, options.hf_split)
    raise UnmaskError(
        f"{source.label}: plain text has no labels; give .jsonl, .csv, .tsv, .parquet or .arrow files, a saved dataset or hf:NAME"
    )


def record_sources(spec: str) -> list[Source]:
    """The sources one data argument names (a file, folder, glob, saved dataset or hf:NAME)."""
    if spec.startswith(f"{SAMPLE_TASK}:"):
        return [Source("text", spec)]
    return expand_sources([spec])


def read_records(spec: str, columns: dict[str, str], options: ReadOptions = DEFAULT_OPTIONS) -> Iterator[tuple[str, dict]]:
    """(where, record) of every record `spec` names, each holding at least `columns` (a
    missing one is an error naming the flag that sets it)."""
    if spec.startswith(f"{SAMPLE_TASK}:"):
        yield from sample_task_records(spec.split(":")[-1])
        return
    for source in record_sources(spec):
        if source.is_file and Path(source.location).stat().st_size == 0:
            continue
        for where, record in _source_records(source, columns, options):
            if not isinstance(record, dict):
                raise UnmaskError(f"{where}: expected a record (a JSON object), got {type(record).__name__}")
            for column, flag in columns.items():
                if column not in record:
                    raise UnmaskError(
                        f"{where}: record has no '{column}' field (it has {', '.join(sorted(map(str, record))[:8])}); set it with {flag}"
                    )
            yield where, record


def class_names(spec: str, column: str, options: ReadOptions) -> list[str] | None:
    """Names a dataset declares for an integer label column (GLUE's ClassLabel), if any."""
    sources = [] if spec.startswith(f"{SAMPLE_TASK}:") else record_sources(spec)
    if len(sources) != 1:
        return None
    return formats.label_names(sources[0].kind, sources[0].location, column, options.hf_config, options.hf_split)
