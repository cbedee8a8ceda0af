"""unmask's masking for scripts that already run Hugging Face's `Trainer`: `MaskingCollator` in
place of `DataCollatorForLanguageModeling`, and `MaskRateCallback` to move its rate.

The collator takes the records `DataCollatorForLanguageModeling` takes (dicts with
`input_ids`, and `attention_mask` / `token_type_ids` where the tokenizer gave them), pads
them with the tokenizer, and returns the same keys, with `labels` -100 off the mask. What it
adds:

- **Masks that do not depend on the data loader.** A mask is a hash of (seed, example,
  epoch, position) (`masking.hashed_draws`), never a draw from a generator: the same whatever
  `dataloader_num_workers`, batch composition or machine. An *example* is the record's
  `id_field` (an integer column such as `idx`) where the records have one, else a hash of its
  token ids (so two identical records share their masks). The *epoch* is the collator's
  `epoch`, which `MaskRateCallback` sets as each epoch begins; worker processes take it when
  `Trainer` starts them for the epoch, so `dataloader_persistent_workers` (workers kept from
  the first epoch) cannot see it and is refused by the callback. Without the callback every
  epoch draws the same masks (static masking).
- **Whole words and spans for any fast tokenizer**: word boundaries from a `word_ids` column
  where the records carry one (the fast tokenizer's `encoding.word_ids()`, exact), else from
  the vocabulary (`##` pieces for WordPiece, `Ġ` / `▁` word starts for byte-level BPE and
  SentencePiece, with a token that starts with punctuation a word of its own).
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
from collections.abc import Sequence

import numpy as np
import torch

from unmask.config import check_masking_probabilities
from unmask.config.schedule import mask_rate
from unmask.data.masking import IGNORE_INDEX, STRATEGIES, Masker
from unmask.data.tokenizer import Vocabulary, word_starts
from unmask.errors import UnmaskError

_COUNT_SLOTS = 65
"""Rows of the shared counts: the main process and up to 64 data-loader workers, each adding
to its own row, so that no two processes write one number."""


def example_key(record: dict, id_field: str | None) -> int:
    """The number that identifies an example for its masks: its `id_field` value, else a hash
    of its token ids."""
    if id_field is not None and id_field in record:
        value = record[id_field]
        return int(value.item() if hasattr(value, "item") else value) & 0x7FFFFFFF
    ids = np.asarray(record["input_ids"], dtype=np.int64)
    return int.from_bytes(hashlib.blake2b(ids.tobytes(), digest_size=4).digest(), "little") & 0x7FFFFFFF


class MaskingCollator:
    """A drop-in for `DataCollatorForLanguageModeling(tokenizer, mlm_probability=...)`, on
    unmask's masks (see the module's text)."""

    def __init__(
        self,
        tokenizer,
        strategy: str = "token",
        mask_prob: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int = 0,
        id_field: str | None = "idx",
        pad_to_multiple_of: int | None = None,
    ):
        if strategy not in STRATEGIES:
            raise UnmaskError(f"strategy: '{strategy}' is not one of {', '.join(STRATEGIES)}")
        try:
            check_masking_probabilities(mask_prob, mask_replace_prob, random_replace_prob)
        except UnmaskError as e:  # named as the keyword arguments are, not as the command's flags
            raise UnmaskError("MaskingCollator: " + re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), str(e))) from None
        if strategy != "token" and not getattr(tokenizer, "is_fast", False):
            raise UnmaskError(
                f"strategy '{strategy}': needs a fast tokenizer (its word boundaries); {type(tokenizer).__name__} is not one "
                "(load it with AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        if tokenizer.mask_token_id is None:
            raise UnmaskError(f"{type(tokenizer).__name__} has no mask token to mask with")
        self.tokenizer = tokenizer
        self.vocab = Vocabulary.from_tokenizer(tokenizer)
        self.strategy, self.seed, self.id_field, self.pad_to_multiple_of = strategy, seed, id_field, pad_to_multiple_of
        self.masker = Masker(
            self.vocab,
            seed=seed,
            strategy=strategy,
            mask_prob=mask_prob,
            mask_replace_prob=mask_replace_prob,
            random_replace_prob=random_replace_prob,
        )
        self.mask_prob = mask_prob
        self.epoch = 0
        self.counts = torch.zeros(_COUNT_SLOTS, 2, dtype=torch.float64).share_memory_()
        """Per process that masks: [picked, maskable] so far (row 0 the main process, 1+ the workers)."""

    def masking_rate(self) -> float:
        """The positions picked over the positions that could have been, over every batch made so far."""
        picked, maskable = self.counts.sum(dim=0).tolist()
        return picked / maskable if maskable else float("nan")

    def reset_counts(self) -> None:
        """Start counting the real masking rate afresh (`MaskRateCallback` does at the start of training)."""
        self.counts.zero_()

    def _word_starts(self, records: Sequence[dict], input_ids: torch.Tensor) -> torch.Tensor:
        if all("word_ids" in r for r in records):
            rows = []
            for r in records:
                starts = word_starts(list(r["word_ids"]))
                fill = (
                    (input_ids.shape[1] - len(starts), 0)
                    if self.tokenizer.padding_side == "left"
                    else (0, input_ids.shape[1] - len(starts))
                )
                rows.append(np.pad(starts, fill, constant_values=True))  # on the side the tokenizer pads
            return torch.from_numpy(np.stack(rows))
        table = torch.from_numpy(self.vocab.starts_word)
        return table[input_ids.clamp(min=0, max=len(table) - 1)]

    def __call__(self, records: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not records:
            raise UnmaskError("MaskingCollator: an empty batch")
        missing = [number for number, r in enumerate(records) if "input_ids" not in r]
        if missing:
            raise UnmaskError(
                f"MaskingCollator: record {missing[0]} has no 'input_ids' (keys: {', '.join(sorted(records[missing[0]]))}); "
                "tokenize the text first, e.g. dataset.map(lambda r: tokenizer(r['text'], truncation=True))"
            )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if all(k in r for r in records)]
        padded = self.tokenizer.pad(
            [{k: np.asarray(r[k]).tolist() for k in keys} for r in records], return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of
        )
        input_ids = padded["input_ids"].long()
        attention_mask = padded["attention_mask"] if "attention_mask" in padded else (input_ids != self.vocab.pad_id).long()
        examples = torch.tensor([example_key(r, self.id_field) for r in records], dtype=torch.long)
        epochs = torch.full_like(examples, self.epoch)
        starts = self._word_starts(records, input_ids) if self.strategy != "token" else None
        masked = self.masker(input_ids, attention_mask, examples, epochs, mask_prob=self.mask_prob, word_starts=starts)
        picked = masked.labels != IGNORE_INDEX
        worker = torch.utils.data.get_worker_info()
        row = 0 if worker is None else 1 + worker.id % (_COUNT_SLOTS - 1)
        self.counts[row, 0] += float(picked.sum())
        self.counts[row, 1] += float(masked.maskable.sum())
        batch = {"input_ids": masked.input_ids, "attention_mask": attention_mask, "labels": masked.labels}
        if "token_type_ids" in padded:
            batch["token_type_ids"] = padded["token_type_ids"]
        return batch


def __getattr__(name: str):
    if name == "MaskRateCallback":
        return mask_rate_callback_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            if not isinstance(collator, MaskingCollator):
                raise UnmaskError(f"MaskRateCallback: needs the MaskingCollator the Trainer uses, got {type(collator).__name__}")
            if every not in ("epoch", "step"):
                raise UnmaskError(f"MaskRateCallback: every='{every}' is not 'epoch' or 'step'")
            if schedule not in ("constant", "linear", "cosine"):
                raise UnmaskError(f"MaskRateCallback: schedule '{schedule}' is not constant, linear or cosine")
            self.collator, self.every, self.schedule = collator, every, schedule
            self.start = collator.mask_prob if start is None else start
            self.end = end
            for name, value in (("start", self.start), ("end", self.end)):
                if value is not None and not 0.0 < value < 1.0:
                    raise UnmaskError(f"MaskRateCallback: {name} must be strictly between 0 and 1, got {value}")
            if schedule != "constant" and end is None:
                raise UnmaskError(f"MaskRateCallback: schedule '{schedule}' needs the rate to end at (end=...)")

        def _move(self, state) -> None:
            progress = state.global_step / state.max_steps if state.max_steps else 0.0
            self.collator.mask_prob = mask_rate(progress, self.start, self.end, self.schedule)

        def on_train_begin(self, args, state, control, **kwargs):
            workers = args.dataloader_num_workers
            if workers and args.dataloader_persistent_workers:
                raise UnmaskError(
                    "MaskRateCallback: dataloader_persistent_workers keeps the workers (and the collator) of the first epoch, "
                    "so every epoch would draw the same masks; set dataloader_persistent_workers=False"
                )
            if workers and self.every == "step":
                raise UnmaskError(
                    f"MaskRateCallback: every='step' moves the rate in this process, but {workers} data-loader workers make "
                    "their batches ahead with the rate they started with; use every='epoch' or dataloader_num_workers=0"
                )
            self.collator.reset_counts()
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
