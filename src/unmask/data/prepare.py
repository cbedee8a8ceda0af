"""`unmask prepare`: text sources to a token store (layout in `storage.storedir`, reader in `data.store`).

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
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from unmask.config import PrepareConfig
from unmask.data.encoding import encoded_batches
from unmask.data.sources import ReadOptions, ReadReport, Source, expand_sources, read_documents
from unmask.data.tokenizer import Vocabulary, fingerprint, load_tokenizer, raw_tokenizer
from unmask.data.window_index import index_store_folder, new_store_id
from unmask.errors import UnmaskError, option, setting
from unmask.storage.files import FolderLock, atomic_write_text, building, recover_folder, remove_stale_building
from unmask.storage.storedir import BLOCK, FORMAT_VERSION, SPLITS, StoreDir, is_validation_document

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
        self.blocks: list[list[int]] = []
        """(block, documents) runs, in order: where a shard's documents belong among all shards'."""
        self.offsets.write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, ids: np.ndarray, starts: np.ndarray, block: int) -> None:
        self.pending.append(np.append(ids, self.separator).astype(self.dtype))
        self.pending_starts.append(np.append(starts, True))  # the separator is a word of its own
        self.pending_tokens += len(ids) + 1
        self.documents += 1
        if not self.blocks or self.blocks[-1][0] != block:
            self.blocks.append([block, 0])
        self.blocks[-1][1] += 1
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
            raise UnmaskError(f"{option('out', str(out))}: already exists (pass {option('overwrite')} to replace it)")
        if not StoreDir(out).is_store():
            raise UnmaskError(
                f"{option('out', str(out))}: exists and is not a token store; {setting('overwrite')} only ever replaces a store "
                f"(choose another {setting('out')})"
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


@dataclass(frozen=True)
class ShardTarget:
    """Where a prepare writes, and which documents it takes."""

    folder: Path
    """The folder published: the store, or its shard."""
    group: int
    index: int
    count: int
    doc_base: int
    """The number of the first document read: the documents of the store's earlier groups."""
    by_files: bool = False
    """The shard reads only its share of the source files, and keeps every document of them."""

    @property
    def sharded(self) -> bool:
        return self.count > 1 or self.group > 0

    def takes(self, number: int) -> bool:
        """Whether document `number` (of this shard's reading) is this shard's."""
        return self.by_files or (number // BLOCK) % self.count == self.index

    def sources(self, found: list[Source]) -> list[Source]:
        """The sources this shard reads: all of them, or its share of the files."""
        return found[self.index :: self.count] if self.by_files else found


def _documents_within(config: PrepareConfig, sources: list[Source], report: ReadReport) -> Iterator[str]:
    """Document texts, stopping at --max-docs (--max-tokens is enforced where tokens are counted)."""
    for count, (_, text) in enumerate(read_documents(sources, report, ReadOptions.of(config)), 1):
        yield text
        if config.max_docs is not None and count >= config.max_docs:
            return


def prepare(config: PrepareConfig, progress: bool = True) -> dict:
    """Tokenize the sources into a new store (or shard) at config.out; returns its metadata.

    One prepare at a time per target (a second refuses at once), so two never mix."""
    if config.merge is not None:
        return merge(Path(config.merge))
    if config.index is not None:
        return index_store(Path(config.index), config.padded_lengths)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a token store")
    target = _shard_target(config, out)
    target.folder.parent.mkdir(parents=True, exist_ok=True)
    with FolderLock(target.folder.parent / f".{target.folder.name}.lock", "unmask prepare", guards=target.folder, remove_when_done=True):
        remove_stale_building(target.folder.parent)
        return _prepare(config, target, progress)


def _shard_target(config: PrepareConfig, out: Path) -> ShardTarget:
    """The shard this prepare makes: the store itself, a shard of a new store, or an appended one."""
    index, count = config.shard_index()
    folder = StoreDir(out)
    by_files = config.shard_by == "files"
    if not config.append and config.shard is None:
        return ShardTarget(out, 0, 0, 1, 0)
    if not config.append:  # group 0, shard I of N
        if folder.is_single():
            raise UnmaskError(f"--out {out}: holds a store already; add to it with --append, or choose another --out")
        clash = [p for g, _, n, p in folder.shards() if g == 0 and n != count]
        if clash:
            raise UnmaskError(f"--shard {config.shard}: {out} already holds shards of another count ({clash[0].name})")
        return ShardTarget(folder.shard(0, index, count), 0, index, count, 0, by_files)
    if not folder.looks_like_store():
        raise UnmaskError(f"--append: {out} holds no store to add to; make one first (without --append)")
    from unmask.data.store import TokenStore, documents_of_groups

    existing = TokenStore.open(out)
    records = existing.meta.get("shards") or [{"group": 0, "documents_read": sum(s["documents"] for s in existing.meta["splits"].values())}]
    group = max(r["group"] for r in records) + 1
    return ShardTarget(folder.shard(group, index, count), group, index, count, documents_of_groups(records), by_files)


def _prepare(config: PrepareConfig, target: ShardTarget, progress: bool) -> dict:
    _check_out(target.folder, [s for s in config.sources if not s.startswith("hf:")], config.overwrite)
    found = expand_sources(config.sources)
    sources = target.sources(found)
    if not sources:
        raise UnmaskError(
            f"--shard {config.shard} --shard-by files: the sources hold {len(found)} file(s), none left for shard {target.index}"
        )
    tokenizer = load_tokenizer(config.tokenizer, config.trust_remote_code)
    if target.group > 0 or target.index > 0:  # a shard must speak the store's tokenizer and hold out as it does
        _check_matches_store(target, tokenizer, config)
    vocab = Vocabulary.from_tokenizer(tokenizer)
    dtype = token_dtype(vocab.size)
    with building(target.folder, "the token store", tag="building") as folder:
        return _fill(config, target, StoreDir(folder), sources, tokenizer, vocab, dtype, progress)


def _check_matches_store(target: ShardTarget, tokenizer, config: PrepareConfig) -> None:
    """Refuse a shard (appended, or one of N) whose tokenizer or --val-fraction differs from
    the store's other shards'."""
    from unmask.data.store import TokenStore

    store = target.folder.parent
    others = [p for _, _, _, p in StoreDir(store).shards() if p != target.folder] + ([store] if StoreDir(store).is_single() else [])
    for other in others:
        meta = TokenStore.open_one(other).meta
        if meta["tokenizer"]["fingerprint"] != fingerprint(tokenizer):
            raise UnmaskError(
                f"--tokenizer {config.tokenizer}: {other} was prepared with '{meta['tokenizer']['name']}', which maps text to other ids"
            )
        if meta.get("val_fraction") != config.val_fraction:
            raise UnmaskError(f"--val-fraction {config.val_fraction}: {other} was prepared with {meta.get('val_fraction')}")


def _fill(
    config: PrepareConfig, target: ShardTarget, folder: StoreDir, sources, tokenizer, vocab: Vocabulary, dtype, progress: bool
) -> dict:
    """Tokenize into the hidden `folder`, which `building` then publishes."""
    val_fraction = Fraction(str(config.val_fraction))
    writers = {split: _SplitWriter(folder, split, dtype, vocab.closer_id) for split in SPLITS}
    report = ReadReport()
    started = time.perf_counter()
    shown = _Progress(progress, config.max_docs)
    documents = _documents_within(config, sources, report)
    read = [0]  # documents read by the whole group (all its shards read them all): this shard's and the others'

    def mine() -> Iterator[tuple[int, str]]:
        for number, text in enumerate(documents):
            read[0] = number + 1
            if target.takes(number):
                yield number, text

    items = mine()
    batches = iter(lambda: list(itertools.islice(items, _TEXTS_PER_BATCH)), [])
    stored_tokens = 0
    try:
        for batch, encoded in encoded_batches(raw_tokenizer(tokenizer), batches, config.worker_count()):
            before = stored_tokens
            for (number, _), (ids, starts) in zip(batch, encoded):
                split = "val" if is_validation_document(target.doc_base + number, val_fraction) else "train"
                writers[split].add(ids, starts, number // BLOCK)
                stored_tokens += len(ids) + 1
                if config.max_tokens is not None and stored_tokens >= config.max_tokens:
                    read[0] = number + 1  # the documents after it were read ahead, not stored
                    break
            shown.add(len(batch), stored_tokens - before)
            if config.max_tokens is not None and stored_tokens >= config.max_tokens:
                break
        for writer in writers.values():
            writer.close()
    finally:  # before the error is printed, so the bar does not run into it
        documents.close()  # stops a streamed hub dataset
        shown.close()
        for writer in writers.values():
            writer.abandon()
    seconds = time.perf_counter() - started
    stored = sum(w.documents for w in writers.values())
    if read[0] == 0:
        raise UnmaskError(f"{', '.join(config.sources)}: no non-empty documents found")
    if writers["train"].documents == 0 and not target.sharded:
        raise UnmaskError(
            f"only {stored} document(s): none left for training after the held-out split "
            "(add text, use --doc-per blank-line or line, or --val-fraction 0)"
        )
    tokenizer.save_pretrained(folder.tokenizer)
    meta = _store_meta(config, target, writers, report, tokenizer, vocab, dtype, seconds, read[0])
    if target.sharded:
        for split, writer in writers.items():
            np.asarray(writer.blocks, dtype=np.int64).reshape(-1, 2).tofile(folder.blocks(split))
    return index_store_folder(folder, meta, config.padded_lengths)


def _store_meta(
    config: PrepareConfig,
    target: ShardTarget,
    writers: dict,
    report: ReadReport,
    tokenizer,
    vocab: Vocabulary,
    dtype,
    seconds: float,
    read: int,
) -> dict:
    """meta.json of a store (or shard) just written: what made it, its splits, what was skipped;
    a shard's record says where its documents belong."""
    meta = {
        "format_version": FORMAT_VERSION,
        "store_id": new_store_id(),
        "tokenizer": {"name": config.tokenizer, "fingerprint": fingerprint(tokenizer)},
        "vocabulary": vocab.to_meta(),
        "dtype": dtype.name,
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
    if target.sharded:
        meta["shard"] = {
            "group": target.group,
            "index": target.index,
            "count": target.count,
            "doc_base": target.doc_base,
            "documents_read": read,
            "dealt": "files" if target.by_files else "documents",
        }
    return meta


def index_store(path: Path, lengths: list[int]) -> dict:
    """`prepare --index STORE`: write the window indexes of `lengths` that the store (each of
    its shards) lacks. One at a time per store, as prepare is; no token is copied."""
    from unmask.data.store import TokenStore

    store = TokenStore.open(path)
    with FolderLock(path.parent / f".{path.name}.lock", "unmask prepare --index", guards=path, remove_when_done=True):
        members = [each for _, each in store.shards] if store.shards is not None else [store]
        for member in members:
            index_store_folder(member.folder, member.meta, lengths)
    return TokenStore.open(path).meta


def merge(path: Path) -> dict:
    """Check a folder of shards (every shard there, complete, one tokenizer and held-out rule)
    and write its manifest; returns the combined metadata. No token is copied."""
    from unmask.data.store import TokenStore

    if not StoreDir(path).shards():
        raise UnmaskError(f"--merge {path}: holds no shards (shard-GGG-IIIII-of-NNNNN folders made with --shard or --append)")
    store = TokenStore.open(path)
    manifest = {
        "format": "unmask-shards",
        "version": 1,
        "shards": store.meta["shards"],
        "splits": store.meta["splits"],
        "tokenizer": store.meta["tokenizer"],
        "val_fraction": store.meta.get("val_fraction"),
    }
    atomic_write_text(StoreDir(path).manifest, json.dumps(manifest, indent=2))
    return {**store.meta, "merged": True, "files": sum(1 for _ in store.meta["shards"]), "seconds": 0.0}
