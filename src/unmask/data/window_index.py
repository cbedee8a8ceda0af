"""The window index: for one split and one window length, the cumulative count of
document-aligned windows before each document (`layouts.aligned_window_counts`), written once
by `prepare` and memory-mapped by training, so that `--packing padded` starts without reading
every document's boundaries.

    STORE/train.windows-128    64-byte header, int64 x (documents + 1), then every
                               COARSE_STRIDE-th of those again (held in memory by training)

The header holds a magic, the window length, the document count and the id of the store that
wrote it (meta.json's `store_id`), so an index copied from another store, or left over from
before the store was replaced, is refused rather than read. meta.json's `window_index` records
the lengths indexed and each split's window count, checked against the file's last entry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from unmask.data.layouts import COARSE_STRIDE, AlignedLayout, aligned_window_counts_chunked
from unmask.errors import UnmaskError
from unmask.storage.files import atomic_write_chunks, atomic_write_text, map_file
from unmask.storage.storedir import SPLITS, StoreDir

MAGIC = b"UNMASKWI"
HEADER_BYTES = 64
LISTED_DOCUMENTS = 1_000_000
"""A split of up to this many documents may be indexed in memory at start-up (a few MB, a few
milliseconds) for a window length it has no index of; a larger one needs the index."""


def new_store_id() -> str:
    return uuid.uuid4().hex


def _header(seq_len: int, documents: int, store_id: str, stride: int) -> bytes:
    fields = MAGIC + np.array([seq_len, documents], dtype="<i8").tobytes() + bytes.fromhex(store_id)
    return (fields + np.array([stride], dtype="<i8").tobytes()).ljust(HEADER_BYTES, b"\0")


def write_window_index(folder: StoreDir, split: str, seq_len: int, store_id: str) -> int:
    """Write `split`'s index for `seq_len` (atomically, in bounded memory); returns its window count."""
    offsets_path = folder.offsets(split)
    offsets = map_file(offsets_path, np.int64)
    total, stride = [0], COARSE_STRIDE

    def chunks() -> Iterable[bytes]:
        yield _header(seq_len, len(offsets) - 1, store_id, stride)
        coarse, written = [], 0
        for piece in aligned_window_counts_chunked(offsets, seq_len - 2):
            coarse.append(piece[(-written) % stride :: stride])
            written += len(piece)
            total[0] = int(piece[-1])
            yield piece.astype("<i8").tobytes()
        yield np.concatenate(coarse).astype("<i8").tobytes()

    atomic_write_chunks(folder.window_index(split, seq_len), chunks(), _file_bytes(len(offsets) - 1, stride))
    return total[0]


def _file_bytes(documents: int, stride: int) -> int:
    return HEADER_BYTES + 8 * (documents + 1) + 8 * (documents // stride + 1)


def index_store_folder(folder: StoreDir, meta: dict, lengths: Iterable[int]) -> dict:
    """Write the indexes of `lengths` into `folder` (one store, or one shard), replacing any of
    those lengths already there (a damaged one is repaired so), then its meta.json (after them,
    so a crash between leaves at worst an index meta.json does not name). A store made before
    store ids is given one. Returns the new metadata."""
    meta = dict(meta)
    meta.setdefault("store_id", new_store_id())
    recorded = {k: dict(v) for k, v in meta.get("window_index", {}).items()}
    for seq_len in sorted(set(lengths)):
        recorded[str(seq_len)] = {split: write_window_index(folder, split, seq_len, meta["store_id"]) for split in SPLITS}
    meta["window_index"] = recorded
    atomic_write_text(folder.meta, json.dumps(meta, indent=2))
    return meta


@dataclass(frozen=True)
class WindowIndex:
    """One store split's window indexes, opened on demand."""

    folder: StoreDir
    split: str
    meta: dict
    documents: int

    def layout(self, offsets: np.ndarray, seq_len: int) -> AlignedLayout | None:
        """The windows of `seq_len` from the memory-mapped index (its coarse table read into
        memory); None where the store has no index of that length. A recorded index that is
        missing, damaged or another store's is refused, naming the file."""
        recorded = self.meta.get("window_index", {}).get(str(seq_len))
        if recorded is None:
            return None
        path = self.folder.window_index(self.split, seq_len)
        remedy = f"write it again with `unmask prepare --index {self.folder.path} --padded-lengths {seq_len}`"
        if not path.is_file():
            raise UnmaskError(f"{path}: missing, though {self.folder.meta} records it; {remedy}")
        with open(path, "rb") as f:
            header = f.read(HEADER_BYTES)
        stride = int(np.frombuffer(header[40:48], dtype="<i8")[0]) if len(header) == HEADER_BYTES else 0
        expected = _file_bytes(self.documents, max(stride, 1))
        size = path.stat().st_size
        if header[:8] != MAGIC or stride < 1 or size != expected:
            raise UnmaskError(f"{path}: not this store's window index ({size:,} bytes, {expected:,} expected); {remedy}")
        seq, documents = np.frombuffer(header[8:24], dtype="<i8").tolist()
        if header[24:40].hex() != self.meta.get("store_id") or (seq, documents) != (seq_len, self.documents):
            raise UnmaskError(f"{path}: the window index of another store (or of this one before it was replaced); {remedy}")
        whole = map_file(path, "<i8", offset=HEADER_BYTES)
        counts, coarse = whole[: self.documents + 1], np.array(whole[self.documents + 1 :])
        if int(counts[-1]) != recorded[self.split] or int(coarse[-1]) != int(counts[(len(coarse) - 1) * stride]):
            raise UnmaskError(f"{path}: damaged ({int(counts[-1]):,} windows, meta.json records {recorded[self.split]:,}); {remedy}")
        return AlignedLayout(offsets, counts, seq_len - 2, coarse, stride)

    def missing(self, seq_len: int) -> UnmaskError:
        """The error for a split too large to index in memory that has no index of `seq_len`."""
        return UnmaskError(
            f"{self.folder.window_index(self.split, seq_len)}: no window index for --seq-len {seq_len}, and {self.documents:,} "
            f"documents are too many to index at start-up; write it once with `unmask prepare --index {self.folder.path} --padded-lengths {seq_len}`"
        )
