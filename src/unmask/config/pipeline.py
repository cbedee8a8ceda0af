"""Settings of the pipeline stages: `unmask prepare` and `unmask train`.

Each field's docstring is its `--help` text; `__post_init__` refuses bad values and names
the flag; derived values are methods.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from unmask.config.base import Bound, Settings, at_least, check_fields, check_setting
from unmask.errors import UnmaskError, UsageError


@dataclass(kw_only=True)
class SourceOptions(Settings):
    """How documents are read from text sources (shared by prepare and tokenizer)."""

    doc_per: Literal["file", "blank-line", "line"] = "file"
    """What one document is in a text file: the whole file, a block separated by blank lines, or one line."""
    text_field: str = "text"
    """Field of .jsonl records, column of .csv/.tsv/.parquet/.arrow files and datasets, that holds the text."""
    hf_config: str | None = None
    """Configuration (subset) of an hf:NAME dataset, e.g. wikitext-103-raw-v1."""
    hf_split: str = "train"
    """Split of an hf:NAME dataset or of a saved DatasetDict folder."""
    max_docs: int | None = None
    """Read at most this many (non-empty) documents, then stop: useful on a streamed hub dataset."""
    skip_bad_files: bool = False
    """Skip binary, non-UTF-8 or corrupt files with a count instead of stopping with an error."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "max_docs": at_least(1),
    }

    def __post_init__(self) -> None:
        check_setting(len(self.sources) > 0, "sources", "give at least one file, folder, glob or hf:NAME")
        check_setting(bool(self.text_field), "text_field", "must not be empty")
        check_setting(bool(self.hf_split), "hf_split", "must not be empty")
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class PrepareConfig(SourceOptions):
    """Settings of `unmask prepare`: text sources to a token store."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("sources",)
    sources: list[str] = field(default_factory=list)
    """Text (.txt .md .rst), .jsonl, .csv, .tsv (each also .gz .bz2 .xz .zst), .parquet and .arrow files, folders, globs, saved datasets, hf:NAME; `sample:pydocs` is the bundled sample corpus."""
    out: str | None = None
    """Folder of the token store to create (with --shard or --append: the store folder the shard goes into)."""
    tokenizer: str = "minilm-l6"
    """Hub id, local folder or alias of the tokenizer. `minilm-l6` is the bert-base-uncased WordPiece vocabulary shipped with the starter checkpoint."""
    val_fraction: float = 0.01
    """Share of documents held out for evaluation (every k-th document, the first always; at least one when above 0)."""
    max_tokens: int | None = None
    """Stop once this many tokens are stored (whole documents: the last one is kept entire)."""
    workers: int | None = None
    """Tokenizing processes (default: this machine's cores); 1 tokenizes in this process. The store is the same with any number."""
    shard: str | None = None
    """Make shard I of N (`--shard 0/4`), one machine each: documents are dealt out in blocks by the order they are read, so the shards together are the store one prepare would make. Merge with --merge, or read the folder of shards directly."""
    shard_by: Literal["documents", "files"] = "documents"
    """How --shard deals the work out. `documents`: every machine reads every source and keeps its blocks of documents, so the shards together are exactly the store one prepare would make. `files`: shard I reads only the files I, I+N, ... of the sources (expanded and sorted; a hub dataset is one), N times less reading, the way at scale; the store holds the same documents, shard after shard, each shard holding out every k-th of its own."""
    append: bool = False
    """Add the sources to the existing store --out as a new shard, numbered after its documents; the store's shards stay untouched."""
    merge: str | None = None
    """Check that the folder of shards is complete and consistent, and write its manifest (no token is copied)."""
    padded_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024])
    """Window lengths (--seq-len) to write the window index of, which `train --packing padded` memory-maps instead of reading every document's boundaries at start-up (8 bytes a document each). A split of over a million documents trains padded only at an indexed length."""
    index: str | None = None
    """Add the window indexes of --padded-lengths to this existing store (every shard of it), for a --seq-len it was not prepared with; no token is copied."""
    overwrite: bool = False
    """Replace an existing store (or shard) at --out (the old one stays intact until the new one is complete)."""
    trust_remote_code: bool = False
    """Allow a hub tokenizer to run its own code."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "max_tokens": at_least(1),
        "workers": at_least(1),
    }

    def __post_init__(self) -> None:
        for length in self.padded_lengths:
            check_setting(8 <= length <= MAX_CONTEXT, "padded_lengths", f"{length}: must be between 8 and {MAX_CONTEXT}")
        if self.merge is not None or self.index is not None:
            name = "merge" if self.merge is not None else "index"
            check_setting(not self.sources, name, "takes the store folder alone, no sources")
            check_setting(self.merge is None or self.index is None, "index", "one store task at a time: --merge, or --index")
            return
        SourceOptions.__post_init__(self)
        check_setting(self.out is not None, "out", "give the folder of the token store to create")
        check_setting(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check_fields(self, self.bounds())
        if self.shard is not None:
            index, count = self.shard_index()
            check_setting(
                count >= 1 and 0 <= index < count,
                "shard",
                f"'{self.shard}': I/N needs 0 <= I < N (shards 0/{max(count, 1)} to {max(count, 1) - 1}/{max(count, 1)})",
            )
            check_setting(
                self.max_tokens is None,
                "max_tokens",
                "a shard cannot know the other shards' tokens; stop every shard at the same document with --max-docs",
            )
        check_setting(self.shard_by == "documents" or self.shard is not None, "shard_by", "deals out shards: give --shard I/N too")
        check_setting(not (self.overwrite and self.append), "append", "adds a shard; it never replaces the store (drop --overwrite)")

    def shard_index(self) -> tuple[int, int]:
        """(I, N) of --shard I/N; (0, 1) without it."""
        if self.shard is None:
            return 0, 1
        parts = self.shard.split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            check_setting(False, "shard", f"'{self.shard}' is not I/N, e.g. 0/4")
        return index, count

    def worker_count(self) -> int:
        import os

        return self.workers or os.cpu_count() or 1


@dataclass(kw_only=True)
class TokenizerConfig(SourceOptions):
    """Settings of `unmask tokenizer`: train a vocabulary on text sources."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("sources",)
    sources: list[str]
    """The same sources `unmask prepare` reads."""
    out: str
    """Folder to save the tokenizer to (loads with AutoTokenizer.from_pretrained)."""
    kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    """`wordpiece`: BERT-style [CLS] ... [SEP], [MASK]. `bpe`: RoBERTa-style byte-level BPE, <s> ... </s>, <mask>. `unigram`: SentencePiece-style unigram with ▁ word starts, <s> ... </s>, <mask>."""
    vocab_size: int = 30522
    """Size of the vocabulary, special tokens included."""
    lowercase: bool = False
    """Lowercase text before tokenizing (as bert-base-uncased does)."""
    min_frequency: int = 2
    """Least number of times a piece must occur to enter the vocabulary (WordPiece and BPE)."""
    overwrite: bool = False
    """Replace an existing tokenizer folder at --out."""
    mix: str | None = None
    """Learn from the sources in these shares of documents, NAME=WEIGHT,... with the sources given as NAME=SOURCE: a small source repeats rather than drowns, until every source has been read through."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "vocab_size": at_least(100),
        "min_frequency": at_least(1),
    }

    def __post_init__(self) -> None:
        SourceOptions.__post_init__(self)
        if self.mix:
            parse_weights(self.mix, [name for name, _ in parse_sources(self.sources)])
        check_fields(self, self.bounds())


def parse_sources(entries: list[str]) -> list[tuple[str, str]]:
    """`name=path` or `path` (named after its folder) -> [(name, path)], names unique."""
    found: list[tuple[str, str]] = []
    for entry in entries:
        name, _, path = entry.partition("=") if "=" in entry else (Path(entry.rstrip("/")).name, "", entry)
        if not name or not path:
            raise UnmaskError(f"--data {entry}: give NAME=STORE or a store folder")
        if name in {n for n, _ in found}:
            raise UnmaskError(f"--data: two sources are named '{name}'; name them NAME=STORE")
        found.append((name, path))
    for name, path in found if len(found) > 1 else ():  # a name is a metric key's suffix (eval_loss@NAME) only with several stores
        if "@" in name or re.fullmatch(r"len\d+", name):
            raise UnmaskError(
                f"--data {name}={path}: a source may not be named '{name}' ('@' and lenN tag the held-out loss at other window "
                "lengths, eval_loss@lenN); choose another NAME"
            )
    return found


def parse_weights(text: str, names: list[str], flag: str = "--mix") -> list[float]:
    """`web=0.6,code=0.3,papers=0.1` -> weights in the order of `names`, summing to 1."""
    given: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            raise UnmaskError(f"{flag} {text}: '{part}' is not NAME=WEIGHT") from None
        if name not in names:
            raise UnmaskError(f"{flag} {text}: '{name}' is not a source of --data ({', '.join(names)})")
        if not math.isfinite(weight) or weight < 0:
            raise UnmaskError(f"{flag} {text}: the weight of '{name}' is {value}; weights must be 0 or more")
        given[name] = weight
    missing = [n for n in names if n not in given]
    if missing:
        raise UnmaskError(f"{flag} {text}: no weight for {', '.join(missing)} (give every source of --data one, 0 to leave it out)")
    total = sum(given.values())
    if total <= 0:
        raise UnmaskError(f"{flag} {text}: every weight is 0; at least one source must be drawn from")
    return [given[n] / total for n in names]


SIZES = ("tiny", "mini", "small", "base", "large")
ArchitectureName = Literal["bert", "roberta", "modernbert", "deberta-v2"]
ARCHITECTURE_NAMES: tuple[str, ...] = typing.get_args(ArchitectureName)
PRESETS = SIZES + tuple(f"{arch}-{size}" for arch in ARCHITECTURE_NAMES for size in SIZES)
MAX_CONTEXT = 8192


def parse_preset(text: str) -> tuple[str | None, str]:
    """`base` -> (None, "base"); `modernbert-base` -> ("modernbert", "base")."""
    if text in SIZES:
        return None, text
    arch, _, size = text.rpartition("-")
    if arch in ARCHITECTURE_NAMES and size in SIZES:
        return arch, size
    raise UsageError(
        f"--from-scratch {text}: give a size ({', '.join(SIZES)}) or ARCH-SIZE with ARCH one of {', '.join(ARCHITECTURE_NAMES)} "
        "(e.g. modernbert-base)"
    )
