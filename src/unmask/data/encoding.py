"""Tokenizing for `prepare`: batches of texts to (ids, word starts) per document, in order, in
this process or spread over worker processes.

Every worker holds its own copy of the Rust tokenizer (one thread each, so that N workers
use N cores and not N times the cores) and returns numpy arrays. The main process keeps
reading and writing, with at most two batches a worker in flight: memory stays flat however
large the corpus, and the results come back in the order the batches went out, so the
store is the same with any number of workers. A worker dies with the process that started
it (Linux's parent-death signal): a killed prepare leaves no orphan tokenizing away.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from unmask.data.tokenizer import word_starts

Encoded = list[tuple[np.ndarray, np.ndarray]]
"""(ids int64, word-start flags bool) of each text of a batch."""

_worker_tokenizer = None


def encode_texts(raw, texts: list[str]) -> Encoded:
    """Tokenize a batch with a Rust tokenizer (no special tokens, no truncation)."""
    # Not `encode_batch_fast`: it is faster but drops the word ids the word starts come from.
    return [(np.asarray(e.ids, dtype=np.int64), word_starts(e.word_ids)) for e in raw.encode_batch(texts, add_special_tokens=False)]


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this worker when `parent` dies, and exit now if it already has.

    A spawned worker runs the initializer only after its imports (seconds on a loaded
    machine): a parent killed during them is gone before the request is made, and the worker
    would wait on its queue for good. So the request comes first, then the check that the
    parent is still the one that started it (a dead parent's children pass to another)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the executor's own shutdown is all there is
        return
    if os.getppid() != parent:
        os._exit(1)


def _start_worker(tokenizer_json: str, parent: int) -> None:
    global _worker_tokenizer
    _die_with_parent(parent)
    from tokenizers import Tokenizer

    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode_in_worker(texts: list[str]) -> Encoded:
    return encode_texts(_worker_tokenizer, texts)


INLINE_BATCHES = 4
"""Batches tokenized here before workers start: a small corpus is done before they would be."""


def encoded_batches(raw, batches: Iterable[list[tuple[int, str]]], workers: int) -> Iterator[tuple[list[tuple[int, str]], Encoded]]:
    """(batch, encodings) of every batch of (number, text) items, in order. `workers` 1
    tokenizes here; more use that many processes, each single-threaded, once the input has
    outlasted a few batches (the result is the same either way)."""
    batches = iter(batches)
    for batch in itertools.islice(batches, INLINE_BATCHES if workers > 1 else None):
        yield batch, encode_texts(raw, [text for _, text in batch])
    if workers <= 1:
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # Spawned, not forked: a fork of a process whose tokenizer (or torch) threads are running
    # can deadlock. The variable is read by each worker's tokenizers library as it starts.
    saved = os.environ.get("RAYON_NUM_THREADS")
    os.environ["RAYON_NUM_THREADS"] = "1"
    context = multiprocessing.get_context("spawn")
    pending: deque = deque()
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(raw.to_str(), os.getpid())) as pool:
            try:
                for batch in batches:
                    pending.append((batch, pool.submit(_encode_in_worker, [text for _, text in batch])))
                    if len(pending) >= 2 * workers:
                        done, future = pending.popleft()
                        yield done, future.result()
                while pending:
                    done, future = pending.popleft()
                    yield done, future.result()
            finally:
                for _, future in pending:
                    future.cancel()
    finally:
        if saved is None:
            os.environ.pop("RAYON_NUM_THREADS", None)
        else:
            os.environ["RAYON_NUM_THREADS"] = saved
