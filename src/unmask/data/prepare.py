"""`unmask prepare`: text sources to a token store (layout in `data.layout`, reader in `data.store`).

Word starts come from the tokenizer's own word_ids, so they are right for WordPiece,
byte-level BPE and SentencePiece. Preparation streams: texts are tokenized in batches and appended to the files, so memory
stays flat whatever the corpus size. The store is built in a folder of this process's own,
fsynced, and renamed into place at the end, so an interrupted prepare never leaves a store
that looks complete, and `--overwrite` only ever replaces something that is a token store.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

from unmask.config import PrepareConfig
from unmask.data.layout import FORMAT_VERSION, SPLITS, StoreDir, is_validation_document
from unmask.data.sources import ReadOptions, ReadReport, Source, expand_sources, read_documents
from unmask.errors import UnmaskError
from unmask.files import RunLock, atomic_write_text, building, recover_folder, remove_stale_building
from unmask.tokenizer import Vocabulary, fingerprint, load_tokenizer, raw_tokenizer, word_starts

_TEXTS_PER_BATCH = 256
_TOKENS_PER_WRITE = 1 << 20


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


class _SplitWriter:
    """Appends documents to one split's token, offset and word-start files."""

    def __init__(self, folder: StoreDir, split: str, dtype: np.dtype, separator: int):
        self.tokens = open(folder.tokens(split), "wb")
        self.offsets = open(folder.offsets(split), "wb")
        self.words = open(folder.words(split), "wb")
        self.dtype = dtype
        self.separator = separator
        self.pending: list[np.ndarray] = []
        self.pending_starts: list[np.ndarray] = []
        self.carry = np.zeros(0, dtype=bool)  # word-start bits not yet a whole byte
        self.pending_tokens = 0
        self.total_tokens = 0
        self.documents = 0
        self.offsets.write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, ids: list[int], starts: np.ndarray) -> None:
        self.pending.append(np.asarray(ids + [self.separator], dtype=self.dtype))
        self.pending_starts.append(np.append(starts, True))  # the separator is a word of its own
        self.pending_tokens += len(ids) + 1
        self.documents += 1
        if self.pending_tokens >= _TOKENS_PER_WRITE:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        lengths = np.fromiter((len(a) for a in self.pending), dtype=np.int64, count=len(self.pending))
        # file.write, not ndarray.tofile: tofile reports a full disk without an errno.
        self.offsets.write((self.total_tokens + np.cumsum(lengths)).tobytes())
        self.tokens.write(np.concatenate(self.pending).tobytes())
        bits = np.concatenate([self.carry, *self.pending_starts])
        whole = len(bits) // 8 * 8
        self.words.write(np.packbits(bits[:whole]).tobytes())
        self.carry = bits[whole:]
        self.total_tokens += int(lengths.sum())
        self.pending, self.pending_starts, self.pending_tokens = [], [], 0

    def close(self) -> None:
        self.flush()
        self.words.write(np.packbits(self.carry).tobytes())
        for f in (self.tokens, self.offsets, self.words):
            f.close()

    def abandon(self) -> None:
        """Close the files after a failure (their folder is removed); a no-op after close()."""
        for f in (self.tokens, self.offsets, self.words):
            try:
                f.close()
            except OSError:  # the full disk that failed the run fails the last flush too
                pass


def _check_out(out: Path, sources: list[str], overwrite: bool) -> None:
    """Refuse any --out whose replacement could lose something that is not a token store."""
    recover_folder(out)
    if out.exists():
        if not overwrite:
            raise UnmaskError(f"--out {out}: already exists (pass --overwrite to replace it)")
        if not StoreDir(out).is_store():
            raise UnmaskError(
                f"--out {out}: exists and is not a token store; --overwrite only ever replaces a store (choose another --out)"
            )
    resolved = out.resolve()
    for source in sources:
        path = Path(source).resolve()
        if path.exists() and (path == resolved or resolved in path.parents or (path.is_dir() and path in resolved.parents)):
            raise UnmaskError(f"--out {out}: overlaps the source '{source}'; put the store outside the text it is made from")


class _Progress:
    """Documents, tokens and tokens/s as the store fills (a bar in a terminal, nothing when off)."""

    def __init__(self, enabled: bool, total_docs: int | None):
        from tqdm import tqdm

        self.bar = tqdm(total=total_docs, unit="doc", desc="prepare", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self.started, self.tokens = time.perf_counter(), 0

    def add(self, documents: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(documents)
        rate = self.tokens / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens:,} tokens, {rate:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


def _documents_within(config: PrepareConfig, sources: list[Source], report: ReadReport) -> Iterator[str]:
    """Document texts, stopping at --max-docs (--max-tokens is enforced where tokens are counted)."""
    for count, (_, text) in enumerate(read_documents(sources, report, ReadOptions.of(config)), 1):
        yield text
        if config.max_docs is not None and count >= config.max_docs:
            return


def prepare(config: PrepareConfig, progress: bool = True) -> dict:
    """Tokenize the sources into a new store at config.out; returns its metadata.

    One prepare at a time per --out (a second refuses at once), so two never mix."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a token store")
    out.parent.mkdir(parents=True, exist_ok=True)
    with RunLock(out.parent / f".{out.name}.lock", "unmask prepare", guards=out, remove_when_done=True):
        remove_stale_building(out.parent)
        return _prepare(config, out, progress)


def _prepare(config: PrepareConfig, out: Path, progress: bool) -> dict:
    _check_out(out, [s for s in config.sources if not s.startswith("hf:")], config.overwrite)
    sources = expand_sources(config.sources)
    tokenizer = load_tokenizer(config.tokenizer, config.trust_remote_code)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    dtype = token_dtype(vocab.size)

    with building(out, "the token store", tag="building") as folder:
        return _fill(config, StoreDir(folder), sources, tokenizer, vocab, dtype, progress)


def _fill(config: PrepareConfig, folder: StoreDir, sources, tokenizer, vocab: Vocabulary, dtype, progress: bool) -> dict:
    """Tokenize into the hidden `folder`, which `building` then publishes."""
    # Not `encode_batch_fast`: it is faster but drops the word ids the word starts come from.
    encode_batch = raw_tokenizer(tokenizer).encode_batch
    val_fraction = Fraction(str(config.val_fraction))
    writers = {split: _SplitWriter(folder, split, dtype, vocab.closer_id) for split in SPLITS}
    report = ReadReport()
    started = time.perf_counter()
    shown = _Progress(progress, config.max_docs)
    document_index = stored_tokens = 0
    documents = _documents_within(config, sources, report)
    try:
        while config.max_tokens is None or stored_tokens < config.max_tokens:
            batch = list(itertools.islice(documents, _TEXTS_PER_BATCH))
            if not batch:
                break
            before = stored_tokens
            for encoding in encode_batch(batch, add_special_tokens=False):
                split = "val" if is_validation_document(document_index, val_fraction) else "train"
                writers[split].add(encoding.ids, word_starts(encoding.word_ids))
                document_index += 1
                stored_tokens += len(encoding.ids) + 1
                if config.max_tokens is not None and stored_tokens >= config.max_tokens:
                    break
            shown.add(len(batch), stored_tokens - before)
        for writer in writers.values():
            writer.close()
    finally:  # before the error is printed, so the bar does not run into it
        documents.close()  # stops a streamed hub dataset
        shown.close()
        for writer in writers.values():
            writer.abandon()
    seconds = time.perf_counter() - started

    if document_index == 0:
        raise UnmaskError(f"{', '.join(config.sources)}: no non-empty documents found")
    if writers["train"].documents == 0:
        raise UnmaskError(
            f"only {document_index} document(s): none left for training after the held-out split "
            "(add text, use --doc-per blank-line or line, or --val-fraction 0)"
        )
    tokenizer.save_pretrained(folder.tokenizer)
    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer": {"name": config.tokenizer, "fingerprint": fingerprint(tokenizer)},
        "vocabulary": vocab.to_meta(),
        "dtype": dtype.name,
        "word_starts": True,
        "splits": {s: {"documents": w.documents, "tokens": w.total_tokens} for s, w in writers.items()},
        "sources": config.sources,
        "doc_per": config.doc_per,
        "text_field": config.text_field,
        "val_fraction": config.val_fraction,
        "files": report.files,
        "skipped": {
            "empty_files": report.empty_files,
            "bad_files": report.bad_files,
            "empty_documents": report.empty_documents,
        },
        "seconds": round(seconds, 3),
    }
    atomic_write_text(folder.meta, json.dumps(meta, indent=2))
    return meta
