"""Settings of `unmask train`: the sections of `config.sections`, flat, with the checks that
span sections and the numbers derived from them; and what a resumed run may change.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from unmask.config.base import check_fields, check_masking_probabilities, check_setting, flag
from unmask.config.pipeline import MAX_CONTEXT, parse_preset, parse_sources, parse_weights
from unmask.config.recipes import RECIPES, recipe_names
from unmask.config.schedule import parse_duration
from unmask.config.sections import (
    CheckpointSection,
    DataSection,
    DownstreamSection,
    EvaluationSection,
    MaskingSection,
    ModelSection,
    OptimizerSection,
    ScheduleSection,
    SystemSection,
)
from unmask.errors import UnmaskError


@dataclass(kw_only=True)
class TrainConfig(
    DownstreamSection,
    SystemSection,
    CheckpointSection,
    EvaluationSection,
    ScheduleSection,
    OptimizerSection,
    MaskingSection,
    ModelSection,
    DataSection,
):
    """Settings of `unmask train`. (The sections are listed last to first: a dataclass puts a
    later base's fields first, so the flags read data, model, masking, optimizer, schedule,
    evaluation, checkpoints, system, downstream.)"""

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # one store, given from Python or a YAML scalar
            self.data = [self.data]
        check_setting(len(self.data) > 0, "data", "give the token store(s) to train on")
        check_fields(self, self.bounds())
        names = [name for name, _ in parse_sources(self.data)]
        for name in ("mix", "mix_end", "mix_temperature"):
            check_setting(len(names) > 1 or not getattr(self, name), name, "mixes several --data stores; one was given")
        check_setting(not (self.mix and self.mix_temperature), "mix_temperature", "give --mix or --mix-temperature, not both")
        for name in ("mix", "mix_end"):
            if getattr(self, name):
                parse_weights(getattr(self, name), names, flag(name))
        check_setting(
            self.mix_schedule == "constant" or self.mix_end is not None,
            "mix_end",
            f"--mix-schedule {self.mix_schedule} needs the weights to end at",
        )
        check_setting((self.model is None) != (self.from_scratch is None), "model", "give exactly one of --model or --from-scratch")
        if self.recipe is not None:
            check_setting(self.recipe in RECIPES, "recipe", f"no recipe '{self.recipe}' (choose from {recipe_names()})")
        if self.from_scratch is not None:
            named, _ = parse_preset(self.from_scratch)
            check_setting(
                named is None or self.arch is None or named == self.arch,
                "arch",
                f"{self.arch}, but --from-scratch {self.from_scratch} names {named}",
            )
        check_setting(
            self.arch is None or self.from_scratch is not None, "arch", "chooses the architecture of --from-scratch; --model has its own"
        )
        for length in self.eval_seq_len:
            check_setting(8 <= length <= MAX_CONTEXT, "eval_seq_len", f"{length}: must be between 8 and {MAX_CONTEXT}")
        check_setting(
            self.seq_len <= MAX_CONTEXT,
            "seq_len",
            f"{self.seq_len} is more than the {MAX_CONTEXT} tokens unmask trains at (ModernBERT's context); attention over it would take "
            f"about {self.batch_size * 16 * self.seq_len**2 * 4 / 2**30:,.0f} GiB a layer for a batch of {self.batch_size} where it is materialised",
        )
        one_step = self.batch_size * self.grad_accum * self.seq_len if self.global_batch is None else self.global_batch * self.seq_len
        check_setting(
            self.max_tokens is None or self.max_tokens >= one_step,
            "max_tokens",
            f"{self.max_tokens}: less than one step's {one_step:,} tokens (the global batch x --seq-len {self.seq_len}); give more or a smaller batch",
        )
        check_masking_probabilities(self.mask_prob, self.mask_replace_prob, self.random_replace_prob)
        if self.mask_prob_end is not None:
            check_setting(0.0 < self.mask_prob_end < 1.0, "mask_prob_end", f"must be strictly between 0 and 1, got {self.mask_prob_end}")
        check_setting(
            (self.mask_schedule == "constant") or self.mask_prob_end is not None,
            "mask_prob_end",
            f"--mask-schedule {self.mask_schedule} needs the rate to end at, e.g. --mask-prob-end 0.15",
        )
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget)
            except ValueError as e:
                check_setting(False, "time_budget", str(e))
        unknown = sorted(set(self.report_to) - {"tensorboard", "wandb"})
        check_setting(not unknown, "report_to", f"{', '.join(unknown)}: choose from tensorboard, wandb")
        check_setting(
            not self.downstream_every or self.downstream is not None, "downstream_every", "give the suite to score with --downstream"
        )
        check_setting(
            not self.downstream_every or (self.checkpoint_every and self.downstream_every % self.checkpoint_every == 0),
            "downstream_every",
            f"scores checkpoints, so it must be a multiple of --checkpoint-every ({self.checkpoint_every})",
        )

    def windows_per_step(self, world_size: int = 1) -> int:
        """The global batch: windows of one optimizer step over all processes."""
        return self.batch_size * self.grad_accum * world_size

    def scratch_architecture(self) -> str:
        """The --arch of a --from-scratch model: the preset's, --arch, the recipe's, or bert."""
        named, _ = parse_preset(self.from_scratch or "base")
        return named or self.arch or (RECIPES[self.recipe].architecture if self.recipe else "bert")

    def with_global_batch(self, world_size: int) -> TrainConfig:
        """This config with --grad-accum set from --global-batch for `world_size` processes."""
        if self.global_batch is None:
            return self
        per_pass = self.batch_size * world_size
        if self.global_batch % per_pass:
            raise UnmaskError(
                f"--global-batch {self.global_batch}: not a multiple of --batch-size {self.batch_size} x {world_size} process(es) = {per_pass}; "
                "choose a --batch-size that divides it"
            )
        return dataclasses.replace(self, grad_accum=self.global_batch // per_pass)

    def budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget else None

    def total_steps(self, train_windows: int, world_size: int = 1) -> int | None:
        """Optimizer steps of the whole run, given the number of training windows; None when
        only a time budget ends it."""
        per_step = self.windows_per_step(world_size) * self.seq_len
        if self.max_tokens is not None and self.max_tokens < per_step:
            raise UnmaskError(
                f"--max-tokens {self.max_tokens:,}: less than one step's {per_step:,} tokens "
                f"({self.windows_per_step(world_size)} windows x {self.seq_len}); give at least {per_step:,} or a smaller batch"
            )
        by_tokens = math.ceil(self.max_tokens / per_step) if self.max_tokens is not None else None
        if self.time_budget is not None and self.max_steps is None and self.epochs is None:
            return by_tokens
        steps_per_epoch = max(1, train_windows // self.windows_per_step(world_size))
        by_epochs = math.ceil((self.epochs or 1.0) * steps_per_epoch)
        if self.max_steps is None:
            steps = by_epochs if by_tokens is None or self.epochs is not None else by_tokens
        else:
            steps = self.max_steps if self.epochs is None else min(self.max_steps, by_epochs)
        return steps if by_tokens is None else min(steps, by_tokens)

    def warmup(self, total_steps: int | None) -> int:
        """Warmup steps (0 when a time budget alone ends the run: it warms up over --warmup-fraction of the time)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_fraction * total_steps) if total_steps else 0


# Fields that may change when a run is resumed: they change neither the data order, the
# masking, nor the arithmetic of a step. Checked against the checkpoint instead: the device
# type ("auto" may resolve differently) and the global batch (batch-size and grad-accum may
# change with the number of processes as long as their product with it stays the same).
RESUMABLE_CHANGES = frozenset({
    "out", "resume", "device", "compile", "eval_every", "eval_max_batches", "log_every", "checkpoint_every", "keep_checkpoints",
    "strategy", "collective_timeout", "peak_tflops", "plan", "json", "activation_checkpointing", "progress", "batch_size", "grad_accum", "global_batch", "on_nonfinite", "max_nonfinite", "report_to",
    "eval_seq_len",
    *("max_steps", "max_tokens", "epochs", "time_budget"),  # a run may be extended; `length_changes` says what that does to the schedule
    *("downstream", "downstream_every", "downstream_mode"),
})  # fmt: skip
LENGTH_SETTINGS = ("max_steps", "max_tokens", "epochs", "time_budget")


def length_changes(saved: dict, now: dict) -> list[str]:
    """`field: old -> new` for the settings that set how long a run is."""
    return [f"{flag(k)} {saved.get(k)} -> {now[k]}" for k in LENGTH_SETTINGS if saved.get(k) != now.get(k)]


def refused_resume_changes(saved: dict, now: dict, allowed: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """`field: old -> new` for every setting that differs and may not change on resume."""
    changed = sorted(k for k, v in now.items() if k not in allowed and saved.get(k) != v)
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed]
