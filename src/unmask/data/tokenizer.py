"""Load tokenizers (any name `names.resolve_pretrained` takes), fingerprint them, and describe their vocabulary.

The fingerprint ties a token store to the tokenizer that made it: training a model whose
tokenizer maps text to other ids would silently learn garbage. `Vocabulary` is the typed
record of the ids that masking, windows, evaluation and inference need, built once from a
tokenizer and saved in the store's metadata.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from unmask.errors import UnmaskError
from unmask.storage.names import (
    ModelSource,
    cannot_load,
    go_offline_if_unreachable,
    quiet_transformers,
    resolve_model,
)
from unmask.storage.storedir import StoreDir


def load_tokenizer(name: str | ModelSource, trust_remote_code: bool = False):
    """A fast (Rust-backed) transformers tokenizer; slow ones cannot tokenize at scale."""
    quiet_transformers()
    from transformers import AutoTokenizer

    if isinstance(name, str) and StoreDir(name).looks_like_store():
        name = ModelSource(name, str(StoreDir(name).tokenizer))  # a token store carries the tokenizer that made it
    source = name if isinstance(name, ModelSource) else resolve_model(name)
    path = source.folder
    go_offline_if_unreachable(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UnmaskError(cannot_load("a tokenizer", source.name, path, e)) from None
    if not getattr(tokenizer, "is_fast", False):
        raise UnmaskError(f"tokenizer '{source.name}' has no fast (Rust) implementation; unmask needs one")
    return tokenizer


def raw_tokenizer(tokenizer):
    """A copy of the Rust tokenizer with truncation and padding off.

    Checkpoints often ship tokenizer.json with truncation at 128 or 512 tokens, which would
    silently cut every document short during preparation.
    """
    from tokenizers import Tokenizer

    raw = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    raw.no_truncation()
    raw.no_padding()
    return raw


def fingerprint(tokenizer) -> str:
    """Hash of everything that decides which ids a text becomes, and nothing else."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    relevant = {key: spec.get(key) for key in ("added_tokens", "normalizer", "pre_tokenizer", "model")}
    blob = json.dumps(relevant, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


def _framing_ids(tokenizer) -> tuple[int, int]:
    """Ids that open and close a window: [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa."""
    opener = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    closer = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if opener is None or closer is None:
        raise UnmaskError("the tokenizer has neither [CLS]/[SEP] nor <s>/</s> tokens to frame windows with")
    return opener, closer


def word_starts(word_ids: list) -> np.ndarray:
    """For each token of one encoding: does it begin a word? A token with no word (an added
    special token written in the text) is a word of its own."""
    words = np.array(word_ids, dtype=np.float64)  # None -> nan, which differs from everything
    starts = np.ones(len(words), dtype=bool)
    starts[1:] = words[1:] != words[:-1]
    return starts


def word_start_table(tokenizer) -> np.ndarray:
    """For every id: does this token begin a new word?

    WordPiece marks continuations (`##ing`); byte-level BPE and SentencePiece mark word
    starts (`Ġthe`, `▁the`). A token that starts with punctuation counts as a word of its own.
    """
    vocab = tokenizer.get_vocab()
    table = np.ones(max(max(vocab.values()) + 1, len(tokenizer)), dtype=bool)
    model = tokenizer.backend_tokenizer.model
    prefix = getattr(model, "continuing_subword_prefix", None)
    wordpiece = bool(prefix) and type(model).__name__ == "WordPiece"
    markers = [] if wordpiece else [m for m in ("Ġ", "▁") if any(t.startswith(m) for t in list(vocab)[:5000])]
    for token, index in vocab.items():
        if wordpiece:
            table[index] = not token.startswith(prefix)
        elif markers:
            table[index] = token.startswith(markers[0]) or not token[:1].isalnum()
    return table


@dataclass(frozen=True)
class Vocabulary:
    """The ids of a tokenizer that everything after tokenizing needs."""

    size: int
    """Number of ids (the tokenizer's length, added tokens included)."""
    special_ids: tuple[int, ...]
    """Ids never picked for masking nor drawn as random replacements."""
    mask_id: int | None
    """The mask token; None for a tokenizer that has none (it cannot train or fill)."""
    opener_id: int
    """First token of every window: [CLS] or <s>."""
    closer_id: int
    """Last token of every window, and the separator after every document: [SEP] or </s>."""
    pad_id: int
    """Padding id (0 where the tokenizer defines none; padding is never attended to)."""
    starts_word: np.ndarray = field(compare=False, repr=False)
    """For every id, whether the token begins a word (False for `##ing`-like pieces)."""

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        opener, closer = _framing_ids(tokenizer)
        return cls(
            size=len(tokenizer),
            special_ids=tuple(sorted(set(tokenizer.all_special_ids))),
            mask_id=tokenizer.mask_token_id,
            opener_id=opener,
            closer_id=closer,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            starts_word=word_start_table(tokenizer),
        )

    def require_mask(self, what: str) -> int:
        if self.mask_id is None:
            raise UnmaskError(f"{what}: the tokenizer has no mask token, so it cannot be used for masked language modelling")
        return self.mask_id

    def to_meta(self) -> dict:
        bits = base64.b64encode(np.packbits(self.starts_word).tobytes()).decode("ascii")
        return {
            "size": self.size,
            "special_ids": list(self.special_ids),
            "mask_id": self.mask_id,
            "opener_id": self.opener_id,
            "closer_id": self.closer_id,
            "pad_id": self.pad_id,
            "starts_word_count": len(self.starts_word),
            "starts_word_bits": bits,
        }

    @classmethod
    def from_meta(cls, meta: dict) -> Vocabulary:
        count = meta["starts_word_count"]
        starts = np.unpackbits(np.frombuffer(base64.b64decode(meta["starts_word_bits"]), dtype=np.uint8))[:count].astype(bool)
        return cls(
            size=meta["size"],
            special_ids=tuple(meta["special_ids"]),
            mask_id=meta["mask_id"],
            opener_id=meta["opener_id"],
            closer_id=meta["closer_id"],
            pad_id=meta["pad_id"],
            starts_word=starts,
        )
