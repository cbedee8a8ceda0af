"""The token store reader: a store's splits memory-mapped for training and evaluation.

The layout is in `storage.storedir`; `data.prepare` writes stores. A store of shards
(`prepare --shard`, `--append`) opens as one: every shard is checked to be there, complete
and made with the same tokenizer and held-out rule, and its splits read as one stream of
documents in the order one prepare of the same sources would have written them, without
copying any tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unmask.data.layouts import AlignedLayout, PiecedLayout, aligned_window_counts
from unmask.data.tokenizer import Vocabulary, fingerprint
from unmask.data.window_index import LISTED_DOCUMENTS, WindowIndex
from unmask.errors import UnmaskError
from unmask.storage.files import map_file, no_such_path, recover_folder
from unmask.storage.storedir import READABLE_VERSIONS, SPLITS, StoreDir, shard_name


@dataclass
class Split:
    """One split of a store, memory-mapped: ids stream, document boundaries, word starts."""

    tokens: np.ndarray
    offsets: np.ndarray
    words: np.ndarray | None = None
    """Packed word-start bits, one per token (every store has them); None for a split made in
    memory from texts (`heldout.split_from_texts`)."""
    index: WindowIndex | None = None
    """The store's window indexes for this split (None for a split not read from a store)."""

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1

    def aligned_layout(self, seq_len: int, listing_allowed: bool | None = None) -> AlignedLayout:
        """Windows of `seq_len` that keep to documents: from the store's index of that length,
        else counted in memory where the split is small enough (`listing_allowed` overrides)."""
        indexed = self.index.layout(self.offsets, seq_len) if self.index is not None else None
        if indexed is not None:
            return indexed
        if listing_allowed is None:
            listing_allowed = self.documents <= LISTED_DOCUMENTS
        if not listing_allowed and self.index is not None:
            raise self.index.missing(seq_len)
        return AlignedLayout(self.offsets, aligned_window_counts(np.asarray(self.offsets), seq_len - 2), seq_len - 2)

    def word_starts(self, start: int, length: int) -> np.ndarray:
        """Word-start flags of tokens [start, start + length)."""
        if self.words is None:
            raise ValueError("this split has no word starts")
        first, last = start // 8, (start + length + 7) // 8
        return np.unpackbits(self.words[first:last])[start - first * 8 : start - first * 8 + length].astype(bool)


class JoinedTokens:
    """Several token arrays read as one (pieces of shards' splits, in global order): `len` and
    slicing, as a split's `tokens` are used."""

    def __init__(self, pieces: list[tuple[np.ndarray, int, int]], dtype):
        self.pieces = pieces
        """(tokens, first, end) of each piece."""
        self.starts = np.concatenate([[0], np.cumsum([end - first for _, first, end in pieces])]).astype(np.int64)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def spans(self, start: int, stop: int):
        """(piece number, offset in the piece, length) covering [start, stop)."""
        number = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < stop:
            piece_end = int(self.starts[number + 1])
            take = min(stop, piece_end) - start
            if take > 0:
                yield number, start - int(self.starts[number]), take
            start += max(take, 0)
            number += 1

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(len(self))
        parts = [self.pieces[n][0][self.pieces[n][1] + at : self.pieces[n][1] + at + size] for n, at, size in self.spans(start, stop)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole.astype(dtype) if dtype is not None else whole


class JoinedSplit:
    """A split made of pieces of shards' splits (`Split`, first document, end document), read as one."""

    def __init__(self, pieces: list[tuple[Split, int, int]], dtype):
        self.pieces = pieces
        self.tokens = JoinedTokens([(s.tokens, int(s.offsets[a]), int(s.offsets[b])) for s, a, b in pieces], dtype)
        self.words = True if pieces and all(s.words is not None for s, _, _ in pieces) else None
        self._offsets: np.ndarray | None = None

    def aligned_layout(self, seq_len: int) -> PiecedLayout:
        """Windows of `seq_len` that keep to documents, piece by piece from each shard's index
        (or counted in memory, where the whole split is small enough)."""
        listing_allowed = self.documents <= LISTED_DOCUMENTS
        own: dict[int, AlignedLayout] = {}  # a shard's split is opened once, however many of its blocks are pieces
        layouts, first_window, sizes = [], [], []
        for split, first, end in self.pieces:
            if id(split) not in own:  # not `own.get(...) or`: a layout of no windows is falsy
                own[id(split)] = split.aligned_layout(seq_len, listing_allowed)
            layout = own[id(split)]
            layouts.append(layout)
            first_window.append(int(layout.counts[first]))
            sizes.append(int(layout.counts[end]) - first_window[-1])
        origins = [int(split.offsets[first]) for split, first, _ in self.pieces]
        return PiecedLayout(
            layouts,
            np.asarray(first_window, dtype=np.int64),
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            self.tokens.starts[:-1],
            np.asarray(origins, dtype=np.int64),
        )

    @property
    def offsets(self) -> np.ndarray:
        """Start of each document in the joined stream, plus the end (built on first use, in
        memory: for inspection, not training, which reads `aligned_layout`)."""
        if self._offsets is None:
            parts, base = [np.zeros(1, dtype=np.int64)], 0
            for split, first, end in self.pieces:
                rebased = np.asarray(split.offsets[first + 1 : end + 1], dtype=np.int64) - int(split.offsets[first]) + base
                parts.append(rebased)
                base = int(rebased[-1]) if len(rebased) else base
            self._offsets = np.concatenate(parts)
        return self._offsets

    @property
    def documents(self) -> int:
        return sum(end - first for _, first, end in self.pieces)

    def word_starts(self, start: int, length: int) -> np.ndarray:
        if self.words is None:
            raise ValueError("this split has no word starts")
        parts = []
        for number, at, size in self.tokens.spans(start, start + length):
            split, first, _ = self.pieces[number]
            parts.append(split.word_starts(int(split.offsets[first]) + at, size))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


class TokenStore:
    """An opened store: its metadata, vocabulary record, tokenizer and splits (one store, or a
    store of shards read as one)."""

    def __init__(self, path: Path, meta: dict, shards: list[tuple[dict, TokenStore]] | None = None):
        self.path = path
        self.folder = StoreDir(path)
        self.meta = meta
        self.shards = shards
        """(shard record, its store) of every shard in order; None for a store of one piece."""

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        recover_folder(path)
        if not path.exists():
            raise UnmaskError(f"--data {no_such_path(str(path))}")
        if StoreDir(path).shards():
            return open_sharded(path)
        return cls.open_one(path)

    @classmethod
    def open_one(cls, path: Path) -> TokenStore:
        meta_path = StoreDir(path).meta
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
        """The tokenizer that made the store (a store of shards: its first shard's, which all share)."""
        return self.folder.tokenizer if self.shards is None else self.shards[0][1].tokenizer_path

    @property
    def tokenizer_name(self) -> str:
        return self.meta["tokenizer"]["name"]

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    def vocabulary(self) -> Vocabulary:
        return Vocabulary.from_meta(self.meta["vocabulary"])

    def require_tokenizer(self, tokenizer, used_by: str, hint: str) -> None:
        """Refuse to pair this store with a tokenizer that maps text to other ids."""
        if fingerprint(tokenizer) != self.fingerprint:
            raise UnmaskError(
                f"--data {self.path}: made with tokenizer '{self.tokenizer_name}', which maps text to other ids than {used_by}; {hint}"
            )

    def split(self, name: str) -> Split | JoinedSplit:
        if name not in self.meta["splits"]:
            raise UnmaskError(f"--split: '{name}' is not a split of {self.path} ({', '.join(self.meta['splits'])})")
        if self.shards is not None:
            return JoinedSplit(shard_pieces(self.shards, name), self.meta["dtype"])
        count = self.meta["splits"][name]["tokens"]
        if count == 0:
            empty = np.zeros(0, dtype=np.uint8)
            return Split(
                np.zeros(0, dtype=self.meta["dtype"]), np.zeros(1, dtype=np.int64), empty, WindowIndex(self.folder, name, self.meta, 0)
            )
        try:
            tokens = map_file(self.folder.tokens(name), self.meta["dtype"])
            offsets = map_file(self.folder.offsets(name), np.int64)
        except (OSError, ValueError) as e:
            raise UnmaskError(f"{self.path}: {name} split cannot be read: {e}") from None
        if len(tokens) != count or len(offsets) == 0 or offsets[-1] != count:
            raise UnmaskError(f"{self.path}: {name} split is damaged ({len(tokens)} tokens on disk, {count} recorded)")
        words = map_file(self.folder.words(name), np.uint8)
        if len(words) != (count + 7) // 8:
            raise UnmaskError(f"{self.path}: {name} split is damaged ({len(words)} bytes of word starts for {count} tokens)")
        return Split(tokens, offsets, words, WindowIndex(self.folder, name, self.meta, len(offsets) - 1))


def shard_pieces(shards: list[tuple[dict, TokenStore]], split: str) -> list[tuple[Split, int, int]]:
    """The pieces of every shard's `split` in global document order: group by group, and
    within a group of N shards block by block."""
    pieces = []
    for group in sorted({record["group"] for record, _ in shards}):
        members = [(record, store) for record, store in shards if record["group"] == group]
        if members[0][0]["count"] == 1 or _dealt(members[0][0]) == "files":  # shard after shard
            for _, store in members:
                part = store.split(split)
                pieces.append((part, 0, part.documents))
            continue
        runs = []
        for _, store in members:
            part = store.split(split)
            blocks = (
                np.fromfile(store.folder.blocks(split), dtype=np.int64).reshape(-1, 2) if part.documents else np.zeros((0, 2), np.int64)
            )
            first = 0
            for block, count in blocks.tolist():
                runs.append((block, part, first, first + count))
                first += count
        pieces += [(part, first, end) for _, part, first, end in sorted(runs, key=lambda run: run[0])]
    return pieces


def _dealt(record: dict) -> str:
    """How a group's shards were dealt out: by blocks of `documents` (every shard read all of
    them), or by source `files` (each read its own)."""
    return record.get("dealt", "documents")


def documents_of_groups(records: list[dict]) -> int:
    """Documents the groups of these shard records read: a group dealt by documents read them
    all in each shard, a group dealt by files read them between its shards."""
    total = 0
    for group in {r["group"] for r in records}:
        members = [r for r in records if r["group"] == group]
        total += sum(r["documents_read"] for r in members) if _dealt(members[0]) == "files" else members[0]["documents_read"]
    return total


def _record(meta: dict, path: Path) -> dict:
    """A shard's record; a store of one piece at the root counts as group 0, one shard of one."""
    documents = sum(s["documents"] for s in meta["splits"].values())
    return meta.get("shard") or {"group": 0, "index": 0, "count": 1, "doc_base": 0, "documents_read": documents, "path": str(path)}


def open_sharded(path: Path) -> TokenStore:
    """Open a folder of shards as one store, refusing a missing, half-written or mismatched shard."""
    folder = StoreDir(path)
    shards: list[tuple[dict, TokenStore]] = []
    if folder.is_single():
        root = TokenStore.open_one(path)
        shards.append((_record(root.meta, path), root))
    for group, index, count, shard_path in folder.shards():
        store = TokenStore.open_one(shard_path)
        record = _record(store.meta, shard_path)
        if (record["group"], record["index"], record["count"]) != (group, index, count):
            raise UnmaskError(
                f"{shard_path}: its meta.json says shard {record['index']}/{record['count']} of group {record['group']}; the folder was renamed"
            )
        shards.append((record, store))
    first = shards[0][1]
    expected_base = 0
    for group in sorted({r["group"] for r, _ in shards}):
        members = [(r, s) for r, s in shards if r["group"] == group]
        count = members[0][0]["count"]
        have = {r["index"] for r, _ in members}
        for index in sorted(set(range(count)) - have):
            writing = sorted(p.name for p in path.glob(f".{shard_name(group, index, count)}.*"))
            state = f"being written or interrupted ({writing[0]})" if writing else "missing"
            raise UnmaskError(
                f"{path}: shard {index}/{count} of group {group} is {state}; run `unmask prepare ... --out {path} --shard {index}/{count}`"
            )
        for record, store in members:
            label = f"{path}: shard {record['index']}/{record['count']} of group {record['group']}"
            if store.fingerprint != first.fingerprint:
                raise UnmaskError(
                    f"{label} was prepared with tokenizer '{store.tokenizer_name}', the store's other shards with '{first.tokenizer_name}'"
                )
            if store.meta.get("val_fraction") != first.meta.get("val_fraction"):
                raise UnmaskError(
                    f"{label} was prepared with --val-fraction {store.meta.get('val_fraction')}, the others with {first.meta.get('val_fraction')}"
                )
            if _dealt(record) != _dealt(members[0][0]):
                raise UnmaskError(
                    f"{label} was dealt out by {_dealt(record)}, its group's shard 0 by {_dealt(members[0][0])}; prepare every shard of a group with the same --shard-by"
                )
            if record["doc_base"] != members[0][0]["doc_base"] or (
                _dealt(record) == "documents" and record["documents_read"] != members[0][0]["documents_read"]
            ):
                raise UnmaskError(
                    f"{label} read other documents than its group's shard 0 ({record['documents_read']:,} against {members[0][0]['documents_read']:,}); prepare them from the same sources"
                )
        if members[0][0]["doc_base"] != expected_base:
            raise UnmaskError(
                f"{path}: group {group} numbers its documents from {members[0][0]['doc_base']:,}, but the groups before it hold {expected_base:,}"
            )
        expected_base += documents_of_groups([r for r, _ in members])
    meta = dict(first.meta)
    meta["splits"] = {name: {k: sum(s.meta["splits"][name][k] for _, s in shards) for k in ("documents", "tokens")} for name in SPLITS}
    meta["shards"] = [{**r, "path": str(s.path)} for r, s in shards]
    return TokenStore(path, meta, shards)
