"""unmask's masking for scripts that already run Hugging Face's `Trainer`: `MaskingCollator` in
place of `DataCollatorForLanguageModeling`, and `MaskRateCallback` to move its rate.

The collator takes what `DataCollatorForLanguageModeling` takes, with its argument names
(`mlm`, `mlm_probability`, `whole_word_mask`, `mask_replace_prob`, `random_replace_prob`,
`pad_to_multiple_of`, `return_tensors`, `seed`): records as dicts (lists, numpy arrays or
tensors of ids), bare lists of ids or 1-D tensors; `special_tokens_mask` honoured and
dropped, as Hugging Face does; every other key passed through (a sequence padded: -100 for a
key that ends in `labels`, 0 otherwise). Bad settings raise `InvalidValue`, which is both an
`UnmaskError` and the `ValueError` Hugging Face raises. What it adds:

- **Masks that are a function, not a stream.** A mask is a hash of (seed, example, round,
  position) (`masking.hashed_draws`), never a draw from a generator. The *example* is the
  record's `id_field` (an integer column such as `idx`) where the records have one, else a
  hash of its token ids. The *round* is chosen in one of two ways:
  - with `MaskRateCallback`, the epoch, which the callback sets as each epoch begins: an
    example's masks are then the same whatever `dataloader_num_workers`, batch composition
    or machine, and new every epoch (worker processes take the epoch when `Trainer` starts
    them for it, so the callback refuses `dataloader_persistent_workers`); two identical
    records without an `id_field` share their masks.
  - without it (dynamic masking, as Hugging Face's collator and RoBERTa do), a new round at
    every call: a hash of the number of batches this process's collator has made and, in a
    data-loader worker, of torch's seed for the worker (new every epoch); the row's place in
    the batch is mixed in too, so identical records get different masks. The masks are new
    every time an example comes again and repeat run to run with the same seed, worker count
    and batch order; like Hugging Face's, they change when either changes.
- **Whole words and spans for any fast tokenizer**: word boundaries from a `word_ids` column
  where the records carry one (the fast tokenizer's `encoding.word_ids()`, exact), else from
  an `offset_mapping` (a token that starts where the one before ended continues its word),
  else from the vocabulary (`##` pieces for WordPiece, `Ġ` / `▁` word starts for byte-level
  BPE and SentencePiece, with a token that starts with punctuation a word of its own).
- **A rate that moves**: `MaskRateCallback` moves `mask_prob` along unmask's schedules as
  `Trainer` steps, once per epoch by default (what reaches worker processes), every step
  with `every="step"` where the loader runs in the main process (`dataloader_num_workers=0`).
- **The real masking rate**: the positions picked over the positions that could be, counted
  where the masking ran (worker processes included, through shared memory) since training
  began (batches a worker made ahead, and evaluation batches through the same collator,
  included), and written as `mask_rate` beside the `mask_prob` asked for into each loss line
  of `trainer.state.log_history`. (Trainer's own trackers run before user callbacks, so
  TensorBoard and W&B do not get the two numbers.)
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from unmask.config import check_masking_probabilities
from unmask.config.schedule import mask_rate
from unmask.data.masking import _MASK32, IGNORE_INDEX, STRATEGIES, Masker, mix32
from unmask.data.tokenizer import Vocabulary, word_starts
from unmask.errors import InvalidValue, UnmaskError

_COUNT_SLOTS = 65
"""Rows of the shared counts: the main process and up to 64 data-loader workers, each adding
to its own row, so that no two processes write one number."""
_PADDED_BY_TOKENIZER = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
_WORD_KEYS = ("word_ids", "offset_mapping")
"""Keys that say where words begin: read for whole-word and span masking, never returned."""
_DYNAMIC_ROUND = 1 << 31
"""Rounds of dynamic masking are hashes at or above this; epochs (the callback's rounds) stay below."""
RETURN_TENSORS = ("pt", "np")


def example_key(record: dict, id_field: str | None) -> int:
    """The number that identifies an example for its masks: its `id_field` value, else a hash
    of its token ids."""
    if id_field is not None and id_field in record:
        value = record[id_field]
        return int(value.item() if hasattr(value, "item") else value) & 0x7FFFFFFF
    ids = np.asarray(record["input_ids"], dtype=np.int64)
    return int.from_bytes(hashlib.blake2b(ids.tobytes(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def as_record(record, number: int) -> dict:
    """A record as a dict: a mapping as it is, a bare sequence of ids (list, array, 1-D tensor) as its input_ids."""
    if isinstance(record, Mapping):
        return dict(record)
    if isinstance(record, (list, tuple, np.ndarray, torch.Tensor)):
        return {"input_ids": record}
    raise InvalidValue(
        f"MaskingCollator: record {number} is a {type(record).__name__}; give dicts with 'input_ids', lists of ids or 1-D tensors"
    )


def word_starts_from_offsets(offsets) -> np.ndarray:
    """For each token of one encoding, from its (start, end) character offsets: does it begin a
    word? A token that starts where the one before it ended continues that word; a special token
    ((0, 0)) is a word of its own."""
    spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    starts = np.ones(len(spans), dtype=bool)
    empty = spans[:, 0] == spans[:, 1]
    starts[1:] = (spans[1:, 0] != spans[:-1, 1]) | empty[1:] | empty[:-1]
    return starts


def pad_value(key: str) -> int:
    """What pads a passed-through sequence: the ignore index for labels, 0 for anything else."""
    return IGNORE_INDEX if key.endswith("labels") else 0


def pass_through(values: list, key: str, lengths: list[int], width: int, left: bool):
    """A batch of one passed-through key: numbers stacked, numeric sequences padded (to the ids'
    `width`, on their side, where each is as long as its record's ids; else to the longest),
    anything else left as a list."""
    try:
        arrays = [np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for v in values]
    except ValueError:  # ragged inside one record (lists of spans of different lengths)
        return values
    if not all(a.dtype.kind in "biuf" for a in arrays) or len({a.shape[1:] for a in arrays}) != 1 or len({a.ndim for a in arrays}) != 1:
        return values
    if arrays[0].ndim == 0:
        return torch.from_numpy(np.stack(arrays))
    aligned = all(len(a) == n for a, n in zip(arrays, lengths))
    target = width if aligned else max(len(a) for a in arrays)
    rest = [(0, 0)] * (arrays[0].ndim - 1)
    padded = [
        np.pad(a, [(target - len(a), 0) if left and aligned else (0, target - len(a)), *rest], constant_values=pad_value(key))
        for a in arrays
    ]
    return torch.from_numpy(np.stack(padded))


class MaskingCollator:
    """A drop-in for `DataCollatorForLanguageModeling`, on unmask's masks (see the module's text).

    Arguments as Hugging Face names and orders them: `mlm` (False gives causal-LM labels, as there),
    `mlm_probability` (an alias of `mask_prob`), `whole_word_mask` (an alias of
    `strategy="whole-word"`), `mask_replace_prob`, `random_replace_prob`, `pad_to_multiple_of`,
    `return_tensors` ("pt" or "np", also per call), `seed` (None: torch's seed). unmask's own, by
    keyword: `strategy` ("token", "whole-word", "span"), `mask_prob`, `id_field` (the column that
    names an example). Where the records carry a `special_tokens_mask`, its flagged positions are
    never picked, and neither are the tokenizer's special tokens (Hugging Face takes the mask
    alone, so a mask of zeros lets it pick [CLS]; unmask never picks a special token).
    """

    def __init__(
        self,
        tokenizer,
        mlm: bool = True,
        whole_word_mask: bool = False,
        mlm_probability: float | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        pad_to_multiple_of: int | None = None,
        return_tensors: str = "pt",
        seed: int | None = 0,
        *,
        strategy: str = "token",
        mask_prob: float = 0.15,
        id_field: str | None = "idx",
    ):
        mask_prob, strategy = _resolve_aliases(mlm, mlm_probability, mask_prob, whole_word_mask, strategy)
        named = "mlm_probability" if mlm_probability is not None else "mask_prob"
        if mlm:
            try:
                check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob, name=named, closed=True)
            except UnmaskError as e:  # named as the keyword arguments are, not as the command's flags
                raise InvalidValue("MaskingCollator: " + re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), str(e))) from None
            if strategy != "token" and not getattr(tokenizer, "is_fast", False):
                raise InvalidValue(
                    f"strategy '{strategy}': needs a fast tokenizer (its word boundaries); {type(tokenizer).__name__} is not one "
                    "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
                )
            if tokenizer.mask_token_id is None:
                raise InvalidValue(
                    f"{type(tokenizer).__name__} has no mask token to mask with; pass mlm=False for causal language modelling labels"
                )
        if return_tensors not in RETURN_TENSORS:
            raise InvalidValue(f"MaskingCollator: return_tensors='{return_tensors}' is not one of {', '.join(RETURN_TENSORS)}")
        if pad_to_multiple_of is not None and (
            isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
        ):
            raise InvalidValue(f"MaskingCollator: pad_to_multiple_of must be a whole number of at least 1, got {pad_to_multiple_of!r}")
        self.tokenizer, self.mlm, self.return_tensors = tokenizer, mlm, return_tensors
        self.seed = int(torch.initial_seed() & 0x7FFFFFFF) if seed is None else seed
        self.strategy, self.id_field, self.pad_to_multiple_of = strategy, id_field, pad_to_multiple_of
        self.mask_replace_prob, self.random_replace_prob = mask_replace_prob, random_replace_prob
        self.vocab = Vocabulary.from_tokenizer(tokenizer) if mlm else None
        self.masker = None
        if mlm:
            self.masker = Masker(
                self.vocab,
                seed=self.seed,
                strategy=strategy,
                mask_prob=mask_prob,
                mask_replace_prob=mask_replace_prob,
                random_replace_prob=random_replace_prob,
                closed=True,
            )
        self.mask_prob = mask_prob
        self.epoch: int | None = None
        """The round of masking when `MaskRateCallback` drives it; None: new masks at every call (dynamic)."""
        self.calls = 0
        """Batches this process's collator has made: the round of dynamic masking."""
        self.counts = torch.zeros(_COUNT_SLOTS, 2, dtype=torch.float64).share_memory_()
        """Per process that masks: [picked, maskable] so far (row 0 the main process, 1+ the workers)."""

    @property
    def mlm_probability(self) -> float:
        """Hugging Face's name for `mask_prob`."""
        return self.mask_prob

    @property
    def whole_word_mask(self) -> bool:
        return self.strategy == "whole-word"

    def masking_rate(self) -> float:
        """The positions picked over the positions that could have been, over every batch made so far."""
        picked, maskable = self.counts.sum(dim=0).tolist()
        return picked / maskable if maskable else float("nan")

    def reset_counts(self) -> None:
        """Start counting the real masking rate afresh (`MaskRateCallback` does at the start of training)."""
        self.counts.zero_()

    def _word_starts(self, records: Sequence[dict], input_ids: torch.Tensor) -> torch.Tensor:
        for key, starts_of in (("word_ids", lambda v: word_starts(list(v))), ("offset_mapping", word_starts_from_offsets)):
            if all(key in r for r in records):
                width, left = input_ids.shape[1], self.tokenizer.padding_side == "left"
                rows = []
                for r in records:
                    starts = starts_of(r[key])
                    fill = (width - len(starts), 0) if left else (0, width - len(starts))
                    rows.append(np.pad(starts, fill, constant_values=True))  # on the side the tokenizer pads
                return torch.from_numpy(np.stack(rows))
        table = torch.from_numpy(self.vocab.starts_word)
        return table[input_ids.clamp(min=0, max=len(table) - 1)]

    def _rounds(self, records: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """(example, round) per row: the epoch's round under the callback, else a fresh one per call and row."""
        examples = torch.tensor([example_key(r, self.id_field) for r in records], dtype=torch.long)
        if self.epoch is not None:
            return examples, torch.full_like(examples, self.epoch)
        self.calls += 1
        worker = torch.utils.data.get_worker_info()
        salt = 0 if worker is None else torch.initial_seed()  # a worker's seed is new every epoch
        base = mix32(mix32(self.calls & _MASK32) ^ (salt & _MASK32) ^ mix32((salt >> 32) & _MASK32))
        rows = torch.arange(len(records), dtype=torch.int64)
        return examples, (mix32(rows ^ base) & 0x7FFFFFFF) | _DYNAMIC_ROUND

    def _pad(self, records: list[dict]) -> dict:
        """Pad the ids and the tokenizer's own keys with the tokenizer; pass every other key through."""
        own = [k for k in _PADDED_BY_TOKENIZER if all(k in r for r in records)]
        lengths = {len(r["input_ids"]) for r in records}
        if self.tokenizer.pad_token_id is None and (
            len(lengths) > 1 or (self.pad_to_multiple_of and max(lengths) % self.pad_to_multiple_of)
        ):
            raise InvalidValue(
                f"MaskingCollator: records of different lengths need padding, and {type(self.tokenizer).__name__} has no pad token"
            )
        lists = [{k: np.asarray(r[k]).tolist() for k in own} for r in records]
        if self.tokenizer.pad_token_id is None:  # records of one length need no padding (checked above), as in Hugging Face's
            batch = {k: torch.tensor([r[k] for r in lists], dtype=torch.long) for k in own}
        else:
            padded = self.tokenizer.pad(lists, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
            batch = {k: padded[k] for k in padded}
        width, left = batch["input_ids"].shape[1], self.tokenizer.padding_side == "left"
        others = {k for r in records for k in r} - set(own) - set(_WORD_KEYS) - {"labels"}  # the labels are made here
        for key in sorted(others):
            if not all(key in r for r in records):
                missing = next(n for n, r in enumerate(records) if key not in r)
                raise InvalidValue(f"MaskingCollator: record {missing} has no '{key}', which other records of the batch have")
            batch[key] = pass_through([r[key] for r in records], key, [len(r["input_ids"]) for r in records], width, left)
        return batch

    def __call__(self, records: Sequence, return_tensors: str | None = None) -> dict:
        return_tensors = return_tensors or self.return_tensors
        if return_tensors not in RETURN_TENSORS:
            raise InvalidValue(f"MaskingCollator: return_tensors='{return_tensors}' is not one of {', '.join(RETURN_TENSORS)}")
        if not records:
            raise InvalidValue("MaskingCollator: an empty batch")
        records = [as_record(r, number) for number, r in enumerate(records)]
        missing = [number for number, r in enumerate(records) if "input_ids" not in r]
        if missing:
            raise InvalidValue(
                f"MaskingCollator: record {missing[0]} has no 'input_ids' (keys: {', '.join(map(str, sorted(records[missing[0]])))}); "
                "tokenize the text first, e.g. dataset.map(lambda r: tokenizer(r['text'], truncation=True))"
            )
        batch = self._pad(records)
        input_ids = batch["input_ids"] = batch["input_ids"].long()
        special = batch.pop("special_tokens_mask", None)
        if self.mlm:
            batch["input_ids"], batch["labels"] = self._mask(records, input_ids, batch.get("attention_mask"), special)
        else:  # causal language modelling, as Hugging Face's collator does it
            labels = input_ids.clone()
            if self.tokenizer.pad_token_id is not None:
                labels[labels == self.tokenizer.pad_token_id] = IGNORE_INDEX
            batch["labels"] = labels
        if return_tensors == "np":
            return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return batch

    def _mask(self, records, input_ids, attention_mask, special_tokens_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked ids and labels; the real rate counted in this process's row."""
        if attention_mask is None:  # without a pad token, nothing is padding (records of one length)
            pad = self.tokenizer.pad_token_id
            attention_mask = torch.ones_like(input_ids) if pad is None else (input_ids != pad).long()
        allowed = attention_mask.bool()
        if special_tokens_mask is not None:  # the records' own word on which positions are special
            allowed &= ~special_tokens_mask.bool()
        examples, rounds = self._rounds(records)
        starts = self._word_starts(records, input_ids) if self.strategy != "token" else None
        masked = self.masker(input_ids, allowed, examples, rounds, mask_prob=self.mask_prob, word_starts=starts)
        worker = torch.utils.data.get_worker_info()
        row = 0 if worker is None else 1 + worker.id % (_COUNT_SLOTS - 1)
        self.counts[row, 0] += float((masked.labels != IGNORE_INDEX).sum())
        self.counts[row, 1] += float(masked.maskable.sum())
        return masked.input_ids, masked.labels


def _resolve_aliases(mlm, mlm_probability, mask_prob, whole_word_mask, strategy) -> tuple[float, str]:
    """unmask's names and Hugging Face's for the same two settings, refused where they disagree."""
    named = "mlm_probability" if mlm_probability is not None else "mask_prob"
    if mlm_probability is not None:
        if mask_prob not in (0.15, mlm_probability):
            raise InvalidValue(f"MaskingCollator: mlm_probability={mlm_probability} and mask_prob={mask_prob} name one setting; give one")
        mask_prob = mlm_probability
    if whole_word_mask:
        if not mlm:
            raise InvalidValue("MaskingCollator: whole_word_mask needs mlm=True (there is nothing to mask otherwise)")
        if strategy not in ("token", "whole-word"):
            raise InvalidValue(f"MaskingCollator: whole_word_mask=True and strategy='{strategy}' disagree; give one")
        strategy = "whole-word"
    if strategy not in STRATEGIES:
        raise InvalidValue(f"strategy: '{strategy}' is not one of {', '.join(STRATEGIES)}")
    if isinstance(mask_prob, bool) or not isinstance(mask_prob, (int, float)):
        raise InvalidValue(f"MaskingCollator: {named} must be a number, got {mask_prob!r}")
    return float(mask_prob), strategy


def __getattr__(name: str):
    if name == "MaskRateCallback":
        return mask_rate_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_callback_settings(collator, end: float | None, schedule: str, start: float | None, every: str) -> None:
    """MaskRateCallback's arguments, refused with one line each."""
    if not isinstance(collator, MaskingCollator):
        raise UnmaskError(f"MaskRateCallback: needs the MaskingCollator the Trainer uses, got {type(collator).__name__}")
    if every not in ("epoch", "step"):
        raise UnmaskError(f"MaskRateCallback: every='{every}' is not 'epoch' or 'step'")
    if schedule not in ("constant", "linear", "cosine"):
        raise UnmaskError(f"MaskRateCallback: schedule '{schedule}' is not constant, linear or cosine")
    for name, value in (("start", collator.mask_prob if start is None else start), ("end", end)):
        if value is not None and not 0.0 < value < 1.0:
            raise UnmaskError(f"MaskRateCallback: {name} must be strictly between 0 and 1, got {value}")
    if schedule != "constant" and end is None:
        raise UnmaskError(f"MaskRateCallback: schedule '{schedule}' needs the rate to end at (end=...)")


def _check_loader_workers(args, every: str) -> None:
    """Refuse data-loader workers that would not see the rate move: persistent ones keep the first
    epoch's collator, and any worker makes its batches ahead, before a per-step move."""
    workers = args.dataloader_num_workers
    if workers and args.dataloader_persistent_workers:
        raise UnmaskError(
            "MaskRateCallback: dataloader_persistent_workers keeps the workers (and the collator) of the first epoch, "
            "so every epoch would draw the same masks; set dataloader_persistent_workers=False"
        )
    if workers and every == "step":
        raise UnmaskError(
            f"MaskRateCallback: every='step' moves the rate in this process, but {workers} data-loader workers make "
            "their batches ahead with the rate they started with; use every='epoch' or dataloader_num_workers=0"
        )


@functools.cache
def mask_rate_callback_class():
    """The class `MaskRateCallback(collator, end=None, schedule="constant", start=None, every="epoch")`,
    made on first use so that importing unmask does not import Trainer.

    It tells a `MaskingCollator` the epoch as each begins (so that every epoch masks anew),
    moves its `mask_prob` from `start` (default: the collator's) to `end` along `schedule`
    (constant, linear, cosine) over the run, once per epoch (`every="epoch"`, what reaches the
    loader's worker processes) or before every step (`every="step"`, which needs
    `dataloader_num_workers=0`), and writes `mask_prob` and the real `mask_rate` into each loss
    line of `trainer.state.log_history`. It refuses persistent data-loader workers, which
    would keep the first epoch's collator.
    """
    from transformers import TrainerCallback

    class MaskRateCallback(TrainerCallback):
        """Tells a `MaskingCollator` the epoch (so that every epoch masks anew) and moves its
        `mask_prob` from `start` (default: the collator's) to `end` along `schedule` (constant,
        linear, cosine) over the run; logs `mask_prob` and the real `mask_rate` with each log line.

        `every="epoch"` (default) moves the rate when an epoch begins, which is what reaches
        the loader's worker processes; `every="step"` moves it before every step and needs
        `dataloader_num_workers=0` (workers made their batches ahead, at the rate they started with).
        """

        def __init__(
            self,
            collator: MaskingCollator,
            end: float | None = None,
            schedule: str = "constant",
            start: float | None = None,
            every: str = "epoch",
        ):
            _check_callback_settings(collator, end, schedule, start, every)
            self.collator, self.every, self.schedule = collator, every, schedule
            self.start = collator.mask_prob if start is None else start
            self.end = end

        def _move(self, state) -> None:
            progress = state.global_step / state.max_steps if state.max_steps else 0.0
            self.collator.mask_prob = mask_rate(progress, self.start, self.end, self.schedule)

        def on_train_begin(self, args, state, control, **kwargs):
            _check_loader_workers(args, self.every)
            self.collator.reset_counts()
            self.collator.epoch = math.floor((state.epoch or 0) + 1e-9)  # from now on an example's masks are its epoch's
            self._move(state)

        def on_epoch_begin(self, args, state, control, **kwargs):
            # floor: a run resumed mid-epoch restores a fractional epoch (0.6 is still epoch 0)
            self.collator.epoch = math.floor((state.epoch or 0) + 1e-9)
            self._move(state)

        def on_step_begin(self, args, state, control, **kwargs):
            if self.every == "step":
                self._move(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs is not None and "loss" in logs:
                numbers = {"mask_prob": self.collator.mask_prob, "mask_rate": self.collator.masking_rate()}
                logs.update(numbers)
                if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
                    state.log_history[-1].update(numbers)  # Trainer copied the line before the callbacks saw it

    MaskRateCallback.__module__, MaskRateCallback.__qualname__ = __name__, "MaskRateCallback"
    return MaskRateCallback
