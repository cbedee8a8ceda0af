"""The token store reader: a store's splits memory-mapped for training and evaluation.

The layout is in `data.layout`; `data.prepare` writes stores. Stores made before word starts
were recorded lack the `.words` files; they train with token masking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unmask.data.layout import READABLE_VERSIONS, StoreDir
from unmask.errors import UnmaskError
from unmask.files import recover_folder
from unmask.hub import no_such_folder
from unmask.tokenizer import Vocabulary, fingerprint, load_tokenizer


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
    """An opened store: its metadata, vocabulary record, tokenizer and splits."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.folder = StoreDir(path)
        self.meta = meta

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        recover_folder(path)
        meta_path = StoreDir(path).meta
        if not path.exists():
            raise UnmaskError(f"--data {no_such_folder(str(path))}")
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
        return self.folder.tokenizer

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
            size=old["vocab_size"],
            special_ids=tuple(old["special_ids"]),
            mask_id=old["mask_id"],
            opener_id=old["opener_id"],
            closer_id=old["separator_id"],
            pad_id=old["pad_id"] if old["pad_id"] is not None else 0,
            starts_word=rebuilt.starts_word,
        )

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
            tokens = np.memmap(self.folder.tokens(name), dtype=self.meta["dtype"], mode="r")
            offsets = np.memmap(self.folder.offsets(name), dtype=np.int64, mode="r")
        except (OSError, ValueError) as e:
            raise UnmaskError(f"{self.path}: {name} split cannot be read: {e}") from None
        if len(tokens) != count or offsets[-1] != count:
            raise UnmaskError(f"{self.path}: {name} split is damaged ({len(tokens)} tokens on disk, {count} recorded)")
        words = None
        if self.has_word_starts:
            words = np.memmap(self.folder.words(name), dtype=np.uint8, mode="r")
            if len(words) != (count + 7) // 8:
                raise UnmaskError(f"{self.path}: {name} split is damaged ({len(words)} bytes of word starts for {count} tokens)")
        return Split(tokens, offsets, words)

    @property
    def has_word_starts(self) -> bool:
        return bool(self.meta.get("word_starts"))
