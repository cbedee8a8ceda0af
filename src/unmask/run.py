"""A training run's state and what one step does with it, as methods of `Run`: set the
learning rate, draw and mask the step's micro-batches, count, apply or skip the update,
agree on time and signals, evaluate, checkpoint. `train.setup` builds a `Run`; `train.train`
calls these in order.

Random numbers are functions of (seed, step, window, position): masks are hashed, and
dropout is reseeded every step from (seed, step, rank), so a checkpoint carries none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from unmask import checkpoint, distributed
from unmask.checkpoint import CheckpointInfo
from unmask.config import TrainConfig
from unmask.data.windows import Windows, WindowSampler, rank_share
from unmask.distributed import World
from unmask.errors import UnmaskError
from unmask.evaluate import evaluate_model
from unmask.files import RunLock
from unmask.masking import IGNORE_INDEX, MaskedBatch, Masker, mix32
from unmask.model import MaskedLM
from unmask.optimizer import adamw, decay_groups, set_learning_rate
from unmask.persist import full_state
from unmask.preemption import StopSignals
from unmask.progress import MetricsLog, Progress
from unmask.rundir import RunDir
from unmask.schedule import learning_rate, learning_rate_at, mask_rate, run_progress


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one process: dropout is a function of (seed, step, rank),
    so a checkpoint needs no random-number state."""
    return mix32(mix32(mix32((seed & 0xFFFFFFFF) ^ 0x3C6EF372) ^ step) ^ rank)


def build_optimizer(lm: MaskedLM, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (`optimizer.adamw`); weights the checkpoint lacked (a fresh MLM head) may learn
    `--fresh-lr-scale` times faster than the pretrained encoder they sit on."""
    named = list(lm.model.named_parameters())
    groups = decay_groups([(n, p) for n, p in named if n not in lm.fresh_parameters], config.weight_decay)
    groups += decay_groups([(n, p) for n, p in named if n in lm.fresh_parameters], config.weight_decay, config.fresh_lr_scale)
    return adamw(groups, config.lr, (config.beta1, config.beta2), config.adam_eps, device)


@dataclass
class StepCounts:
    """Counts of one step over all processes."""

    picked: int
    maskable: int
    tokens: int


@dataclass
class Run:
    """Everything one training run works with, built by `setup`."""

    config: TrainConfig
    run_dir: RunDir
    world: World
    strategy: str
    device: torch.device
    dtype: torch.dtype | None
    tokenizer: object
    lm: MaskedLM
    model: nn.Module
    """What the step calls: `lm`, DDP around it, or `lm` sharded in place by FSDP2."""
    optimizer: torch.optim.Optimizer
    masker: Masker
    sampler: WindowSampler
    train_windows: Windows
    val_windows: Windows
    total_steps: int | None
    """None when only the time budget ends the run."""
    warmup_steps: int
    metrics: MetricsLog
    lock: RunLock | None
    """Held by rank 0 while it trains in the folder; None on the other processes."""
    suite: object | None = None
    """The --downstream suite (`config.Suite`), read and checked at setup."""
    budget: float | None = None
    """--time-budget in seconds."""
    step: int = 0
    spent: float = 0.0
    """Seconds spent training (evaluation and checkpoints not counted), agreed by all processes."""
    last_mask_prob: float = 0.0
    """The masking rate the schedule gave the last step drawn."""
    skipped: int = 0
    """Steps whose update was dropped for a non-finite loss or gradient norm (--on-nonfinite skip)."""
    nonfinite_in_a_row: int = 0

    @property
    def global_batch(self) -> int:
        return self.config.windows_per_step(self.world.size)

    def progress(self) -> float:
        return run_progress(self.step, self.total_steps, self.spent, self.budget)

    def finished(self) -> bool:
        return (self.total_steps is not None and self.step >= self.total_steps) or (self.budget is not None and self.spent >= self.budget)

    def set_learning_rate(self) -> float:
        c = self.config
        if self.budget is None:
            lr = learning_rate(self.step, self.total_steps, self.warmup_steps, c.lr, c.schedule, c.min_lr_ratio)
        elif self.step < self.warmup_steps:
            lr = c.lr * (self.step + 1) / self.warmup_steps
        else:
            warmup_share = 0.0 if c.warmup_steps is not None else c.warmup_fraction
            lr = learning_rate_at(self.progress(), warmup_share, c.lr, c.schedule, c.min_lr_ratio)
        set_learning_rate(self.optimizer, lr)
        torch.manual_seed(dropout_seed(c.seed, self.step, self.world.rank))
        return lr

    def mask_prob(self) -> float:
        c = self.config
        return mask_rate(self.progress(), c.mask_prob, c.mask_prob_end, c.mask_schedule)

    def draw_step(self) -> list[tuple[MaskedBatch, torch.Tensor]]:
        """This process's micro-batches of the step, masked, each with its attention mask.

        Every process draws the whole global batch's window indices (cheap) and keeps its
        share. Windows are assembled on the host, copied over (pinned and asynchronous on a
        GPU), and masked on the device.
        """
        indices, epochs = self.sampler.take(self.global_batch)
        rate = self.last_mask_prob = self.mask_prob()
        drawn = []
        for part in rank_share(self.world.rank, self.config.batch_size, self.config.grad_accum):
            input_ids, attention_mask, starts = self.train_windows.batch(indices[part])
            host = [torch.from_numpy(a) for a in (input_ids, attention_mask, indices[part], epochs[part])]
            if starts is not None and self.config.masking != "token":
                host.append(torch.from_numpy(starts))
            if self.device.type == "cuda":
                host = [t.pin_memory() for t in host]
            on_device = [t.to(self.device, non_blocking=True) for t in host]
            batch = self.masker(*on_device[:4], mask_prob=rate, word_starts=on_device[4] if len(on_device) > 4 else None)
            drawn.append((batch, on_device[1]))
        return drawn

    def count(self, micro_batches: list[tuple[MaskedBatch, torch.Tensor]]) -> StepCounts:
        local = [
            sum(int((batch.labels != IGNORE_INDEX).sum()) for batch, _ in micro_batches),
            sum(int(batch.maskable.sum()) for batch, _ in micro_batches),
            sum(int(mask.sum()) for _, mask in micro_batches),
        ]
        return StepCounts(*(round(v) for v in distributed.sum_across(local, self.world, self.device)))

    def apply_or_skip(self, loss: float, grad_norm: float) -> bool:
        """Apply the step's update, unless the loss or the gradient norm is not finite: then
        stop (--on-nonfinite stop) or drop the update (skip), before anything reaches the weights."""
        c = self.config
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
            self.nonfinite_in_a_row = 0
        else:
            what = f"step {self.step + 1}: training loss is {loss}, gradient norm {grad_norm}"
            if c.on_nonfinite == "stop":
                raise UnmaskError(
                    f"{what}; stopped before applying it (checkpoints so far are intact, no model/ written). "
                    "Try a lower --lr, --precision fp32, or --on-nonfinite skip"
                )
            self.skipped += 1
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row > c.max_nonfinite:
                raise UnmaskError(
                    f"{what}; {self.nonfinite_in_a_row} non-finite steps in a row (--max-nonfinite {c.max_nonfinite}): stopped"
                )
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def mean_loss(self, loss_sum: torch.Tensor, counts: StepCounts) -> float:
        """The step's mean loss over the masked tokens of all processes."""
        (loss,) = distributed.sum_across([float(loss_sum)], self.world, self.device)
        return loss / max(counts.picked, 1)

    def end_step(self, seconds: float, signals: StopSignals) -> int:
        """Count the step's training time and agree on it, and on any signal received (0: none),
        so that every process stops at the same step."""
        signal, spent = distributed.max_across([float(signals.received or 0), self.spent + seconds], self.world, self.device)
        self.spent = spent
        return int(signal)

    def evaluate(self, progress: Progress) -> dict:
        """Held-out metrics, logged and printed; {} when there is no held-out split."""
        if len(self.val_windows) == 0:
            return {}
        [result] = evaluate_model(
            self.lm,
            self.val_windows,
            batch_size=self.config.batch_size,
            device=self.device,
            dtype=self.dtype,
            max_batches=self.config.eval_max_batches,
            world=self.world,
        )
        record = {"step": self.step, **result.as_dict("eval_")}
        self.metrics.write(record)
        progress.echo(
            f"step {self.step}: eval loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
            f"accuracy {result.accuracy:.2%} (top-5 {result.top5_accuracy:.2%})"
        )
        return record

    def score_downstream(self, progress: Progress) -> None:
        """Score the checkpoint just written on the --downstream suite, when this step is due
        (every --downstream-every steps, and the last). Rank 0 loads the checkpoint from disk and
        scores it; the others wait. The time is not training time."""
        c = self.config
        if c.downstream is None or not (self.finished() or (c.downstream_every and self.step % c.downstream_every == 0)):
            return
        if self.world.is_main:
            from unmask.downstream import Target, score_targets, write_report

            target = Target(f"step {self.step}", str(self.run_dir.path), self.step, self.step * self.global_batch * c.seq_len)
            results = score_targets(
                self.suite, [target], self.run_dir.downstream, c.downstream_mode, str(self.device), c.trust_remote_code, lambda _: None
            )
            write_report(results, self.suite, [target], self.run_dir.downstream)
            mine = [r for r in results.records if r["target"] == target.label]
            progress.echo(f"step {self.step}: downstream " + ", ".join(f"{r['task']} {r['score_metric']} {r['score']:.4f}" for r in mine))
        distributed.barrier(self.world)

    def save_checkpoint(self) -> Path:
        weights, named = full_state(self.lm, self.optimizer, self.strategy)
        if self.world.is_main:
            info = CheckpointInfo(
                step=self.step,
                epoch=self.sampler.position.epoch,
                position=self.sampler.position.position,
                train_seconds=self.spent,
                skipped_steps=self.skipped,
                device_type=self.device.type,
                world_size=self.world.size,
                global_batch=self.global_batch,
                strategy=self.strategy,
            )
            checkpoint.save_checkpoint(self.run_dir, info, weights, named, keep=self.config.keep_checkpoints)
        distributed.barrier(self.world)
        return self.run_dir.checkpoint(self.step)


def total_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a number (under FSDP it is a replicated DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
