"""The token store: tokenized documents on disk, memory-mapped for training.

Layout of a store folder:
    meta.json                       tokenizer fingerprint, vocabulary record, dtype, counts, sources
    tokenizer/                      the tokenizer that made it (save_pretrained format)
    {train,val}.tokens              raw uint16 (uint32 for vocabularies over 65,536) ids,
                                    every document followed by one separator ([SEP])
    {train,val}.offsets             raw int64: start of each document in .tokens, plus the end
    {train,val}.words               bits, one per token (packed, most significant first): does
                                    the token start a word? From the tokenizer's own word_ids,
                                    so right for WordPiece, byte-level BPE and SentencePiece.
                                    (Stores made before word starts lack it; they train with
                                    token masking.)

Preparation streams: texts are tokenized in batches and appended to the files, so memory
stays flat whatever the corpus size. The store is built in a folder of this process's own,
fsynced, and renamed into place at the end, so an interrupted prepare never leaves a store
that looks complete, and `--overwrite` only ever replaces something that is a token store.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from unmask.config import PrepareConfig, UnmaskError
from unmask.data.sources import ReadReport, Source, expand_sources, read_documents
from unmask.files import RunLock, atomic_write_text, building_path, disk_full_guard, publish_folder, recover_folder, remove_stale_building, remove_tree
from unmask.tokenizer import Vocabulary, fingerprint, load_tokenizer, raw_tokenizer

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1 kept its ids loose under "tokenizer"; it still opens
SPLITS = ("train", "val")
_TEXTS_PER_BATCH = 256
_TOKENS_PER_WRITE = 1 << 20


def is_validation_document(index: int, val_fraction: Fraction) -> bool:
    """Every 1/f-th document goes to validation, the first one always.

    Deterministic and streaming (no document count needed up front): after n documents
    exactly ceil(n * f) are held out. A split by document means no text leaks into eval.
    """
    return math.ceil((index + 1) * val_fraction) > math.ceil(index * val_fraction)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def word_starts(word_ids: list) -> np.ndarray:
    """For each token of one encoding: does it begin a word? A token with no word (an added
    special token written in the text) is a word of its own."""
    words = np.array(word_ids, dtype=np.float64)  # None -> nan, which differs from everything
    starts = np.ones(len(words), dtype=bool)
    starts[1:] = words[1:] != words[:-1]
    return starts


class _SplitWriter:
    """Appends documents to one split's token, offset and word-start files."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype, separator: int):
        self.tokens = open(folder / f"{split}.tokens", "wb")
        self.offsets = open(folder / f"{split}.offsets", "wb")
        self.words = open(folder / f"{split}.words", "wb")
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


def is_token_store(path: Path) -> bool:
    """Whether `path` is a folder that `unmask prepare` made (and so may be replaced)."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("format_version") in READABLE_VERSIONS and (Path(path) / "train.tokens").is_file()


def _check_out(out: Path, sources: list[str], overwrite: bool) -> None:
    """Refuse any --out whose replacement could lose something that is not a token store."""
    recover_folder(out)
    if out.exists():
        if not overwrite:
            raise UnmaskError(f"--out {out}: already exists (pass --overwrite to replace it)")
        if not is_token_store(out):
            raise UnmaskError(f"--out {out}: exists and is not a token store; --overwrite only ever replaces a store (choose another --out)")
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
    for count, (_, text) in enumerate(read_documents(sources, report, config.read_options()), 1):
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

    building = building_path(out)
    remove_tree(building)
    building.mkdir()
    try:
        with disk_full_guard(building, "the token store"):
            return _fill(config, out, building, sources, tokenizer, vocab, dtype, progress)
    except BaseException:
        remove_tree(building)
        raise


def _fill(config: PrepareConfig, out: Path, building: Path, sources, tokenizer, vocab: Vocabulary, dtype, progress: bool) -> dict:
    """Tokenize into `building`, then publish it as `out`."""
    # Not `encode_batch_fast`: it is faster but drops the word ids the word starts come from.
    encode_batch = raw_tokenizer(tokenizer).encode_batch
    val_fraction = Fraction(str(config.val_fraction))
    writers = {split: _SplitWriter(building, split, dtype, vocab.closer_id) for split in SPLITS}
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
    tokenizer.save_pretrained(building / "tokenizer")
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
    atomic_write_text(building / "meta.json", json.dumps(meta, indent=2))
    publish_folder(building, out)
    return meta


@dataclass
class Split:
    """One split of a store, memory-mapped: ids stream, document boundaries, word starts."""

    tokens: np.ndarray
    offsets: np.ndarray
    words: np.ndarray | None = None
    """Packed word-start bits, one per token; None for a store made before they were recorded."""

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    def word_starts(self, start: int, length: int) -> np.ndarray:
        """Word-start flags of tokens [start, start + length)."""
        if self.words is None:
            raise ValueError("this split has no word starts")
        first, last = start // 8, (start + length + 7) // 8
        return np.unpackbits(self.words[first:last])[start - first * 8 : start - first * 8 + length].astype(bool)


class TokenStore:
    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path) -> "TokenStore":
        path = Path(path)
        recover_folder(path)
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UnmaskError(f"{path}: not a token store (no meta.json); make one with `unmask prepare`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UnmaskError(f"{meta_path}: unreadable store metadata: {e}") from None
        if not isinstance(meta, dict) or meta.get("format_version") not in READABLE_VERSIONS:
            version = meta.get("format_version") if isinstance(meta, dict) else None
            raise UnmaskError(f"{path}: store format {version} is not one this unmask reads ({READABLE_VERSIONS}); prepare it again")
        return cls(path, meta)

    @property
    def tokenizer_path(self) -> Path:
        return self.path / "tokenizer"

    @property
    def tokenizer_name(self) -> str:
        return self.meta["tokenizer"]["name"]

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    def vocabulary(self) -> Vocabulary:
        if "vocabulary" in self.meta:
            return Vocabulary.from_meta(self.meta["vocabulary"])
        # Format 1 kept the ids under "tokenizer" and no word-start table: rebuild the record
        # from the tokenizer the store carries, keeping the ids it recorded.
        old = self.meta["tokenizer"]
        rebuilt = Vocabulary.from_tokenizer(load_tokenizer(str(self.tokenizer_path)))
        return Vocabulary(
            size=old["vocab_size"], special_ids=tuple(old["special_ids"]), mask_id=old["mask_id"], opener_id=old["opener_id"],
            closer_id=old["separator_id"], pad_id=old["pad_id"] if old["pad_id"] is not None else 0, starts_word=rebuilt.starts_word,
        )  # fmt: skip

    def require_tokenizer(self, tokenizer, used_by: str, hint: str) -> None:
        """Refuse to pair this store with a tokenizer that maps text to other ids."""
        if fingerprint(tokenizer) != self.fingerprint:
            raise UnmaskError(
                f"--data {self.path}: made with tokenizer '{self.tokenizer_name}', which maps text to other ids than {used_by}; {hint}"
            )

    def split(self, name: str) -> Split:
        if name not in self.meta["splits"]:
            raise UnmaskError(f"--split: '{name}' is not a split of {self.path} ({', '.join(self.meta['splits'])})")
        count = self.meta["splits"][name]["tokens"]
        if count == 0:
            words = np.zeros(0, dtype=np.uint8) if self.has_word_starts else None
            return Split(np.zeros(0, dtype=self.meta["dtype"]), np.zeros(1, dtype=np.int64), words)
        try:
            tokens = np.memmap(self.path / f"{name}.tokens", dtype=self.meta["dtype"], mode="r")
            offsets = np.memmap(self.path / f"{name}.offsets", dtype=np.int64, mode="r")
        except (OSError, ValueError) as e:
            raise UnmaskError(f"{self.path}: {name} split cannot be read: {e}") from None
        if len(tokens) != count or offsets[-1] != count:
            raise UnmaskError(f"{self.path}: {name} split is damaged ({len(tokens)} tokens on disk, {count} recorded)")
        words = None
        if self.has_word_starts:
            words = np.memmap(self.path / f"{name}.words", dtype=np.uint8, mode="r")
            if len(words) != (count + 7) // 8:
                raise UnmaskError(f"{self.path}: {name} split is damaged ({len(words)} bytes of word starts for {count} tokens)")
        return Split(tokens, offsets, words)

    @property
    def has_word_starts(self) -> bool:
        return bool(self.meta.get("word_starts"))
