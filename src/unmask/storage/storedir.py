"""The token store's folder layout, in one place (the reader is `data.store`, the writer `data.prepare`).

    STORE/
      meta.json          tokenizer fingerprint, vocabulary record, dtype, counts, sources
      tokenizer/         the tokenizer that made it (save_pretrained format)
      train.tokens       raw uint16 (uint32 for vocabularies over 65,536) ids, every
      val.tokens         document followed by one separator ([SEP])
      *.offsets          raw int64: start of each document in .tokens, plus the end
      *.words            bits, one per token (packed, most significant first): does the
                         token start a word? From the tokenizer's own word_ids.
      *.windows-128      the window index for --packing padded at --seq-len 128 (one per
                         length prepared): see `data.window_index`

A store may also be a folder of shards, each a store of the layout above, made separately
(`prepare --shard I/N`, one machine each) or added later (`prepare --append`):

    STORE/
      shard-000-00000-of-00004/   group 0 (the first prepare), shard 0 of 4
        *.blocks                  int64 (block, documents) pairs: which runs of documents it holds
      shard-001-00000-of-00001/   group 1, the first append
      manifest.json               written by `prepare --merge STORE` once every shard is there

A group's documents are numbered in the order they are read, continuing the previous
groups' numbers, and dealt out in blocks of `BLOCK` documents: block b to shard b mod N. The
held-out rule applies to those numbers, so the shards together are exactly the store one
prepare of the same sources would have made, and read back in that order. A group dealt out
by files (`--shard-by files`, meta.json's shard record says `"dealt": "files"`) gives shard I
the source files I, I+N, ...; each shard numbers and holds out its own documents, and the
group reads back shard after shard.

This module imports nothing but the standard library, so that anything (resolving a model
name, reading a folder of sources) can tell a store from other folders.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION,)
SPLITS = ("train", "val")
BLOCK = 256
"""Documents dealt out to one shard at a time."""
_SHARD = re.compile(r"^shard-(\d{3})-(\d{5})-of-(\d{5})$")


def shard_name(group: int, index: int, count: int) -> str:
    return f"shard-{group:03d}-{index:05d}-of-{count:05d}"


def is_validation_document(index: int, val_fraction: Fraction) -> bool:
    """Every 1/f-th document goes to validation, the first one always.

    Deterministic and streaming (no document count needed up front): after n documents
    exactly ceil(n * f) are held out. A split by document means no text leaks into eval.
    """
    return math.ceil((index + 1) * val_fraction) > math.ceil(index * val_fraction)


@dataclass(frozen=True)
class StoreDir:
    """A token store folder: the paths in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def meta(self) -> Path:
        return self.path / "meta.json"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    def tokens(self, split: str) -> Path:
        return self.path / f"{split}.tokens"

    def offsets(self, split: str) -> Path:
        return self.path / f"{split}.offsets"

    def words(self, split: str) -> Path:
        return self.path / f"{split}.words"

    def window_index(self, split: str, seq_len: int) -> Path:
        return self.path / f"{split}.windows-{seq_len}"

    def blocks(self, split: str) -> Path:
        return self.path / f"{split}.blocks"

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    def shard(self, group: int, index: int, count: int) -> Path:
        return self.path / shard_name(group, index, count)

    def shards(self) -> list[tuple[int, int, int, Path]]:
        """(group, index, count, folder) of every shard folder, in order."""
        if not self.path.is_dir():
            return []
        found = [(int(m[1]), int(m[2]), int(m[3]), p) for p in self.path.iterdir() if p.is_dir() and (m := _SHARD.match(p.name))]
        return sorted(found)

    def is_single(self) -> bool:
        """The store's own files are here (a store of one piece, or group 0 of a store with appended shards)."""
        return self.meta.is_file() and self.tokens("train").is_file()

    def looks_like_store(self) -> bool:
        """The store's marker files, or shards, are there (cheap; says nothing of the format)."""
        return self.is_single() or bool(self.shards())

    def is_store(self) -> bool:
        """A folder that `unmask prepare` made in a format this unmask reads (so it may be replaced)."""
        if not self.is_single():
            return bool(self.shards())
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("format_version") in READABLE_VERSIONS
