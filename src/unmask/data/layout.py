"""The token store's folder layout, in one place (the reader is `data.store`, the writer `data.prepare`).

    STORE/
      meta.json          tokenizer fingerprint, vocabulary record, dtype, counts, sources
      tokenizer/         the tokenizer that made it (save_pretrained format)
      train.tokens       raw uint16 (uint32 for vocabularies over 65,536) ids, every
      val.tokens         document followed by one separator ([SEP])
      *.offsets          raw int64: start of each document in .tokens, plus the end
      *.words            bits, one per token (packed, most significant first): does the
                         token start a word? From the tokenizer's own word_ids.

This module imports nothing but the standard library, so that anything (resolving a model
name, reading a folder of sources) can tell a store from other folders.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # format 1 kept its ids loose under "tokenizer"; it still opens
SPLITS = ("train", "val")


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

    def looks_like_store(self) -> bool:
        """The store's marker files are there (cheap; says nothing of the format)."""
        return self.meta.is_file() and self.tokens("train").is_file()

    def is_store(self) -> bool:
        """A folder that `unmask prepare` made in a format this unmask reads (so it may be replaced)."""
        if not self.looks_like_store():
            return False
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(meta, dict) and meta.get("format_version") in READABLE_VERSIONS
