"""Held-out evaluation of masked LMs.

The masked positions and replacements come from a fixed seed at 15% for each window, drawn
on the CPU, whatever the training settings, batch size or device: two models scored on the
same data are scored on exactly the same positions and replacements. Loss is the mean over
the masked tokens of the whole split (not a mean of batch means), and nothing but running
sums is kept: memory does not grow with the size of the data.

`held_out_windows` turns a store's split or text files into windows; `evaluate_model`
scores one or several models on them. Training, `unmask eval` and `unmask compare` all go
through these two. Under torchrun the batches are dealt out to the processes and the sums
added up, so the numbers are those of a single process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from unmask.data.masking import IGNORE_INDEX, MaskedBatch, Masker, generator_draws
from unmask.data.sources import ReadReport, expand_sources, read_documents
from unmask.data.store import Split, TokenStore
from unmask.data.tokenizer import Vocabulary, raw_tokenizer
from unmask.data.windows import Windows, evaluation_batch, evaluation_batches
from unmask.errors import UnmaskError
from unmask.models.architectures import document_ids
from unmask.models.attention import spans_of
from unmask.models.masked_lm import MaskedLM
from unmask.runtime.distributed import SINGLE_PROCESS, World, sum_across
from unmask.runtime.hardware import autocast
from unmask.storage.storedir import StoreDir

EVAL_SEED = 1234
EVAL_MASK_PROB = 0.15


@dataclass
class MlmMetrics:
    loss: float
    perplexity: float
    accuracy: float
    masked_tokens: int
    top5_accuracy: float = float("nan")
    whole_word_accuracy: float = float("nan")
    whole_word_tokens: int = 0
    word_piece_accuracy: float = float("nan")
    word_piece_tokens: int = 0

    def as_dict(self, prefix: str = "") -> dict:
        """Plain values; a metric with nothing behind it is None (JSON null), never NaN."""
        return {f"{prefix}{k}": None if isinstance(v, float) and math.isnan(v) else v for k, v in asdict(self).items()}


TOP_K = 5
"""The held-out metrics count top-1 and top-5 hits."""


@dataclass
class MlmAccumulator:
    """Running sums over masked tokens; `metrics()` turns them into means."""

    loss_sum: float = 0.0
    count: int = 0
    top1: int = 0
    top5: int = 0
    word_counts: list[int] = field(default_factory=lambda: [0, 0])  # [whole words, word pieces]
    word_top1: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, loss_sum: torch.Tensor, top: torch.Tensor, targets: torch.Tensor, is_piece: torch.Tensor | None) -> torch.Tensor:
        """Add one batch, `top` (N, min(5, V)) the best ids of each masked position; returns the top-1 predictions (N,)."""
        hit1 = top[:, 0] == targets
        self.loss_sum += float(loss_sum)
        self.count += len(targets)
        self.top1 += int(hit1.sum())
        self.top5 += int((top == targets[:, None]).any(-1).sum())
        if is_piece is not None:
            for kind, selector in ((0, ~is_piece), (1, is_piece)):
                self.word_counts[kind] += int(selector.sum())
                self.word_top1[kind] += int(hit1[selector].sum())
        return top[:, 0]

    def totals(self) -> list[float]:
        return [self.loss_sum, self.count, self.top1, self.top5, *self.word_counts, *self.word_top1]

    @classmethod
    def from_totals(cls, totals: list[float]) -> MlmAccumulator:
        loss_sum, count, top1, top5, words, pieces, word_top1, piece_top1 = totals
        return cls(loss_sum, round(count), round(top1), round(top5), [round(words), round(pieces)], [round(word_top1), round(piece_top1)])

    def metrics(self) -> MlmMetrics:
        if self.count == 0:
            return MlmMetrics(float("nan"), float("nan"), float("nan"), 0)
        loss = self.loss_sum / self.count
        share = lambda hits, n: hits / n if n else float("nan")
        return MlmMetrics(
            loss=loss,
            perplexity=math.exp(min(loss, 700.0)),
            accuracy=self.top1 / self.count,
            masked_tokens=self.count,
            top5_accuracy=self.top5 / self.count,
            whole_word_accuracy=share(self.word_top1[0], self.word_counts[0]),
            whole_word_tokens=self.word_counts[0],
            word_piece_accuracy=share(self.word_top1[1], self.word_counts[1]),
            word_piece_tokens=self.word_counts[1],
        )


def combine(results: list[MlmMetrics]) -> MlmMetrics:
    """Several held-out sets' metrics as one, weighted by their masked tokens (as if scored together)."""
    if len(results) == 1:
        return results[0]
    count = sum(r.masked_tokens for r in results)
    if count == 0:
        return MlmMetrics(float("nan"), float("nan"), float("nan"), 0)

    def weighted(key: str, weight: str = "masked_tokens") -> float:
        total = sum(getattr(r, weight) for r in results)
        return sum(getattr(r, key) * getattr(r, weight) for r in results if getattr(r, weight)) / total if total else float("nan")

    loss = weighted("loss")
    return MlmMetrics(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        accuracy=weighted("accuracy"),
        masked_tokens=count,
        top5_accuracy=weighted("top5_accuracy"),
        whole_word_accuracy=weighted("whole_word_accuracy", "whole_word_tokens"),
        whole_word_tokens=sum(r.whole_word_tokens for r in results),
        word_piece_accuracy=weighted("word_piece_accuracy", "word_piece_tokens"),
        word_piece_tokens=sum(r.word_piece_tokens for r in results),
    )


def eval_masker(vocab: Vocabulary) -> Masker:
    return Masker(vocab, seed=EVAL_SEED, mask_prob=EVAL_MASK_PROB)


def mask_windows(masker: Masker, input_ids: torch.Tensor, attention_mask: torch.Tensor, window_indices: np.ndarray) -> MaskedBatch:
    """Mask each window with a draw seeded by its own index.

    The positions then depend on the data and the window length only, not on the batch
    size or the order of batches: any two evaluations of the same windows agree.
    """
    rows = []
    generator = torch.Generator()
    for row, window in enumerate(window_indices.tolist()):
        generator.manual_seed(EVAL_SEED * 1_000_003 + window)
        draws = generator_draws((1, input_ids.shape[1]), generator, len(masker.random_pool))
        rows.append(masker.with_draws(input_ids[row : row + 1], attention_mask[row : row + 1], draws))
    return MaskedBatch(*(torch.cat(parts) for parts in zip(*rows)))


def word_piece_mask(input_ids: torch.Tensor, starts_word: np.ndarray, special: torch.Tensor) -> torch.Tensor:
    """True at tokens that belong to a word split into several pieces (original ids, (B, T))."""
    starts = torch.from_numpy(starts_word)[input_ids.clamp(max=len(starts_word) - 1)] | special
    next_starts = torch.ones_like(starts)
    next_starts[:, :-1] = starts[:, 1:]
    return ~(starts & next_starts) & ~special


@torch.no_grad()
def evaluate_model(
    models: MaskedLM | list[MaskedLM],
    windows: Windows,
    *,
    batch_size: int,
    device: torch.device,
    dtype: torch.dtype | None = None,
    max_batches: int | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor, list[torch.Tensor]], None] | None = None,
    progress: bool = False,
    world: World = SINGLE_PROCESS,
    documents_apart: bool = False,
) -> list[MlmMetrics]:
    """Score one or several models on the same masked positions of `windows`; one result per model.

    `documents_apart`: each document of a packed window attends only to itself, as a model
    trained with --no-attention-across-docs was.

    `on_batch(original_ids, labels, top1s)` sees each batch this process scores (the
    comparison report uses it). Each model is called through its forward, which is where
    FSDP gathers sharded weights.
    """
    from tqdm import tqdm

    models = [models] if isinstance(models, MaskedLM) else models
    vocab = windows.vocab
    masker = eval_masker(vocab)
    specials = torch.tensor(vocab.special_ids)
    accumulators = [MlmAccumulator() for _ in models]
    modes = [lm.training for lm in models]
    for lm in models:
        lm.eval()
    count = evaluation_batches(len(windows), batch_size, max_batches)
    # Process r scores batches r, r + world, ...; every process runs as many forwards as the
    # busiest one: a sharded model gathers its weights in each forward, which all processes
    # must join. Surplus forwards are not counted.
    rounds = -(-count // world.size)
    with ExitStack() as fp32_safe:
        for lm in models:  # the unpadded kernels take half precision only: fp32 scoring runs SDPA
            fp32_safe.enter_context(lm.attention_for(dtype))
        for number in tqdm(range(rounds), desc="eval", unit="batch", disable=not progress, leave=False):
            _score_round(
                models,
                accumulators,
                windows,
                masker,
                specials,
                (batch_size, count, number),
                device,
                dtype,
                world,
                documents_apart,
                on_batch,
            )
    for lm, mode in zip(models, modes):
        lm.train(mode)
    return [MlmAccumulator.from_totals(sum_across(a.totals(), world, device)).metrics() for a in accumulators]


def _score_round(
    models, accumulators, windows: Windows, masker: Masker, specials, batching, device, dtype, world: World, documents_apart: bool, on_batch
) -> None:
    """This process's batch of one round (a surplus round scores batch 0 and counts nothing)."""
    batch_size, count, round_ = batching
    vocab = windows.vocab
    number = round_ * world.size + world.rank
    counted = number < count
    indices = evaluation_batch(len(windows), batch_size, number if counted else 0)
    original, attention_mask = (torch.from_numpy(a) for a in windows.batch(indices)[:2])
    masked = mask_windows(masker, original, attention_mask, indices)
    picked = masked.labels != IGNORE_INDEX
    is_piece = word_piece_mask(original, vocab.starts_word, torch.isin(original, specials))[picked].to(device)
    # Moved to the device once, and the targets picked once, for all the models.
    input_ids, attention, labels = (t.to(device) for t in (masked.input_ids, attention_mask, masked.labels))
    documents = document_ids(original, attention_mask, vocab.closer_id) if documents_apart else None
    spans = spans_of(documents).to(device) if documents is not None else None  # from the host: nothing waits
    documents = documents.to(device) if documents is not None else None
    targets = labels[labels != IGNORE_INDEX]
    top1s = []
    for lm, accumulator in zip(models, accumulators):
        with autocast(device, dtype):
            loss_sum, top = lm(input_ids, attention, labels, None, documents, spans, top_k=TOP_K)
        if counted:
            top1s.append(accumulator.add(loss_sum, top, targets, is_piece).cpu())
    if on_batch is not None and counted:
        on_batch(original, masked.labels, top1s)


def split_from_texts(tokenizer, texts: list[str]) -> Split:
    """An in-memory split: each text's ids followed by the separator, as the store lays them out."""
    closer = Vocabulary.from_tokenizer(tokenizer).closer_id
    encoded = raw_tokenizer(tokenizer).encode_batch(texts, add_special_tokens=False)
    pieces = [np.asarray(e.ids + [closer], dtype=np.int64) for e in encoded]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return Split(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64), offsets)


def _names_a_store(entry: str) -> bool:
    """A store's metadata or shards are there: opened as a store (which names what is wrong
    with it), never read as text."""
    folder = StoreDir(entry)
    return folder.meta.is_file() or bool(folder.shards())


def held_out_windows(data: list[str], tokenizer, seq_len: int, split: str = "val") -> Windows:
    """Evaluation windows (ragged tail kept) of a store's split, whose tokenizer must be the
    model's, or of text sources tokenized here with the model's tokenizer."""
    vocab = Vocabulary.from_tokenizer(tokenizer)
    if len(data) == 1 and _names_a_store(data[0]):
        store = TokenStore.open(data[0])
        store.require_tokenizer(
            tokenizer, "this model's", "pass the text files instead and they are tokenized with the model's own tokenizer"
        )
        source = store.split(split)
        if len(source.tokens) == 0:
            raise UnmaskError(
                f"--data {data[0]}: the store has no '{split}' documents (prepared with --val-fraction {store.meta.get('val_fraction')}); "
                f"score another split with --split train, or prepare it again with --val-fraction above 0"
            )
    else:
        texts = [text for _, text in read_documents(expand_sources(data), ReadReport())]
        if not texts:
            raise UnmaskError(f"--data {' '.join(data)}: no non-empty documents")
        source = split_from_texts(tokenizer, texts)
    return Windows.build(source, seq_len, vocab, keep_partial=True)


def held_out_sets(data: list[str], tokenizer, seq_len: int, split: str = "val") -> dict[str, Windows]:
    """The held-out windows of each named store (`NAME=STORE`, or several stores), scored
    apart and then together; or, for one store or text sources, one set named ''."""
    from unmask.config import parse_sources

    named = any("=" in entry for entry in data)
    if named or (len(data) > 1 and all(_names_a_store(entry) for entry in data)):
        return {name: held_out_windows([path], tokenizer, seq_len, split) for name, path in parse_sources(data)}
    return {"": held_out_windows(data, tokenizer, seq_len, split)}
