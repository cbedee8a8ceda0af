"""A training run's state and what one step does with it, as methods of `Run`: set the
learning rate, draw and mask the step's micro-batches, count, apply or skip the update,
agree on time and signals, evaluate, checkpoint. `train.setup` builds a `Run`; `train.train`
calls these in order.

Random numbers are functions of (seed, step, window, position): masks are hashed, and
dropout is reseeded every step from (seed, step, rank), so a checkpoint carries none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from unmask.config import TrainConfig
from unmask.config.schedule import learning_rate, learning_rate_at, mask_rate, run_progress, warming_up
from unmask.data.masking import IGNORE_INDEX, Masker
from unmask.data.mixture import MixtureSampler, WindowMix
from unmask.data.windows import WINDOW_ORDER, DataPosition, Windows, rank_share
from unmask.errors import UnmaskError
from unmask.evaluation.heldout import combine, evaluate_model
from unmask.models.architectures import Picks, document_ids, padded_picks, picks_of
from unmask.models.flops import TRAINING_PASSES, Shape, segments_of
from unmask.models.masked_lm import MaskedLM
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.runtime.hardware import Peak, Precision, autocast, peak_memory, remeasured_peak, reporting_dtype, reset_peak_memory
from unmask.runtime.optimizer import adamw, decay_groups, set_learning_rate
from unmask.runtime.persist import full_state
from unmask.runtime.preemption import StepDropped, Stopped, StopSignals
from unmask.runtime.progress import MetricsLog, Progress
from unmask.runtime.stepping import PRETRAINING, clipped_update, step_seed
from unmask.storage import checkpoint
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.files import RunLock
from unmask.storage.rundir import RunDir


def build_optimizer(lm: MaskedLM, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW (`optimizer.adamw`); weights the checkpoint lacked (a fresh MLM head) may learn
    `--fresh-lr-scale` times faster than the pretrained encoder they sit on."""
    named = list(lm.model.named_parameters())
    groups = decay_groups([(n, p) for n, p in named if n not in lm.fresh_parameters], config.weight_decay)
    groups += decay_groups([(n, p) for n, p in named if n in lm.fresh_parameters], config.weight_decay, config.fresh_lr_scale)
    return adamw(groups, config.lr, (config.beta1, config.beta2), config.adam_eps, device)


PICKED_ROWS_MULTIPLE = 64
"""A step's masked positions are padded to a multiple of this (`architectures.padded_picks`)."""
PICKED_SLOTS_MULTIPLE = 8
"""And each row's slots of queries in the last layer to a multiple of this."""

DRAW_CHECK_EVERY = 16
"""Micro-batches drawn between two checks for a stop (a check under torchrun is an all-reduce;
drawing one is far quicker than computing it)."""


class MicroBatch(NamedTuple):
    """One micro-batch on the device, with everything about its masks that the host knows."""

    input_ids: torch.Tensor
    """(B, T) the ids the model sees."""
    attention_mask: torch.Tensor | None
    """(B, T), or None when no window is padded (packed windows): attention then needs no mask."""
    targets: torch.Tensor
    """(N,) the original ids at the picked positions."""
    picks: Picks
    documents: torch.Tensor | None = None
    """(B, T) each position's document (`architectures.document_ids`) with --no-attention-across-docs; else None."""


@dataclass
class Drawn:
    """This process's share of a step, and its counts (known on the host)."""

    micro_batches: list[MicroBatch]
    picked: int
    maskable: int
    tokens: int
    positions_before: list[DataPosition]
    """Where the data stood before the step drew its windows (to rewind to if it is dropped)."""
    slots: int = 0
    """Window positions, padding included (`tokens` / `slots`: the share that is real)."""
    flops: float = 0.0
    """Model FLOPs of the step's forward and backward passes (`models.flops`)."""
    seconds: float = 0.0
    """Host time spent drawing: reading, masking and copying the windows (the wait for data)."""


class Tally:
    """What the steps since the last settle did: counts on the host, and on the device the
    numbers only the device knows (read all at once when the run settles)."""

    # Slots of `on_device`.
    LOSS, APPLIED, SKIPPED, IN_A_ROW, WORST, FIRST, FIRST_LOSS, FIRST_NORM, LAST, LAST_LOSS, LAST_NORM, NORM = range(12)

    def __init__(self, device: torch.device):
        self.device = device
        self.in_a_row = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.picked = self.maskable = self.tokens = self.slots = 0
        self.flops = self.data_seconds = 0.0
        start = [0.0, 0, 0, 0, 0, -1, 0, 0, -1, 0, 0, 0]
        self.on_device = torch.tensor(start, dtype=torch.float64, device=self.device)
        self.on_device[self.IN_A_ROW] = self.in_a_row  # a run of non-finite steps goes on across log lines

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor, bad: torch.Tensor) -> None:
        """Fold one step in, on the device: `bad` is 1 for a step whose update was dropped."""
        t, hit = self.on_device, bad > 0
        first = (t[self.FIRST] < 0) & hit
        row = t[self.IN_A_ROW] * bad + bad
        self.in_a_row = row
        self.on_device = torch.stack(
            [
                t[self.LOSS] + torch.where(hit, 0.0, loss),
                t[self.APPLIED] + 1 - bad,
                t[self.SKIPPED] + bad,
                row,
                torch.maximum(t[self.WORST], row),
                torch.where(first, step, t[self.FIRST]),
                torch.where(first, loss, t[self.FIRST_LOSS]),
                torch.where(first, norm, t[self.FIRST_NORM]),
                torch.where(hit, step, t[self.LAST]),
                torch.where(hit, loss, t[self.LAST_LOSS]),
                torch.where(hit, norm, t[self.LAST_NORM]),
                torch.where(hit, torch.nan, norm),
            ]
        )


@dataclass
class Run:
    """Everything one training run works with, built by `setup`."""

    config: TrainConfig
    run_dir: RunDir
    world: World
    strategy: str
    device: torch.device
    dtype: torch.dtype | None
    precision: Precision
    tokenizer: object
    lm: MaskedLM
    model: nn.Module
    """What the step calls: `lm`, DDP around it, or `lm` sharded in place by FSDP2."""
    optimizer: torch.optim.Optimizer
    masker: Masker
    sampler: MixtureSampler
    train_windows: WindowMix
    val_windows: dict[str, Windows]
    """Each store's held-out windows, by the name --data gives it."""
    other_lengths: dict[int, dict[str, Windows]]
    """The same held-out text cut at the other --eval-seq-len lengths (and the length a context extension started from)."""
    total_steps: int | None
    """None when only the time budget ends the run."""
    warmup_steps: int
    metrics: MetricsLog
    lock: RunLock | None
    """Held by rank 0 while it trains in the folder; None on the other processes."""
    peak: Peak = Peak(0.0, "unknown")
    """The device's peak FLOP/s, which MFU is measured against (--peak-tflops)."""

    def peak_past(self) -> float:
        """The peak after a log line went past it: measured again (each process on its own: the
        log line is the first process's)."""
        self.peak = remeasured_peak(self.peak, self.device, self.dtype)
        return self.peak.flops

    score_checkpoint: Callable[[int, int, str], str] | None = None
    """The --downstream scoring hook: (step, tokens seen, device) -> a line to show; rank 0 calls it
    after a due checkpoint. Handed in by the caller (`unmask.api.train`), so that pretraining
    never imports the downstream package."""
    budget: float | None = None
    """--time-budget in seconds."""
    step: int = 0
    spent: float = 0.0
    """Seconds spent training (evaluation and checkpoints not counted), agreed by all processes."""
    spent_here: float = 0.0
    """The same, as this process counts it (agreed into `spent` when the processes settle)."""
    last_mask_prob: float = 0.0
    """The masking rate the schedule gave the last step drawn."""
    skipped: int = 0
    """Steps whose update was dropped for a non-finite loss or gradient norm (--on-nonfinite skip), as of the last settle."""
    tally: Tally | None = None
    """The steps since the last settle (`settle`); made in __post_init__."""
    signal: int = 0
    """A stop signal received (agreed by all processes as of the last settle); 0: none."""

    def __post_init__(self) -> None:
        if self.tally is None:
            self.tally = Tally(self.device)

    @property
    def global_batch(self) -> int:
        return self.config.windows_per_step(self.world.size)

    def progress(self) -> float:
        return run_progress(self.step, self.total_steps, self.spent, self.budget)

    def finished(self) -> bool:
        return (self.total_steps is not None and self.step >= self.total_steps) or (self.budget is not None and self.spent >= self.budget)

    def begin_step(self) -> float:
        """Before a step: set its learning rate (returned) and reseed dropout from (seed, step, rank)."""
        c = self.config
        shape = {"min_ratio": c.min_lr_ratio, "decay_fraction": c.decay_fraction, "warmup_start": c.warmup_start_ratio}
        if self.budget is None:
            lr = learning_rate(self.step, self.total_steps, self.warmup_steps, c.lr, c.schedule, **shape)
        elif self.step < self.warmup_steps:
            lr = c.lr * warming_up((self.step + 1) / self.warmup_steps, c.warmup_start_ratio)
        else:
            warmup_share = 0.0 if c.warmup_steps is not None else c.warmup_fraction
            lr = learning_rate_at(self.progress(), warmup_share, c.lr, c.schedule, **shape)
        set_learning_rate(self.optimizer, lr)
        torch.manual_seed(step_seed(c.seed, self.step, self.world.rank, PRETRAINING))
        return lr

    def mask_prob(self) -> float:
        c = self.config
        return mask_rate(self.progress(), c.mask_prob, c.mask_prob_end, c.mask_schedule)

    def draw_step(self, signals: StopSignals) -> Drawn:
        """This process's micro-batches of the step, masked on the host and copied over.

        Every process draws the whole global batch's window indices (cheap) and keeps its
        share. Masks are hashes of (seed, epoch, window, position), the same wherever they are
        computed; drawing them on the host means the host also knows how many positions are
        picked, and where, so the step never has to ask the device. Copies are pinned and
        asynchronous on a GPU. A stop asked for while a long step is drawn drops it (every
        `DRAW_CHECK_EVERY` micro-batches, as `stop_if_asked` says).
        """
        began = time.perf_counter()
        before = self.sampler.mark()
        indices, epochs = self.sampler.take(self.global_batch, self.step, self.progress())
        rate = self.last_mask_prob = self.mask_prob()
        drawn = Drawn([], 0, 0, 0, before)
        for number, part in enumerate(rank_share(self.world.rank, self.config.batch_size, self.config.grad_accum)):
            if number and number % DRAW_CHECK_EVERY == 0:
                self.stop_if_asked(drawn, signals)
            window = self.train_windows.batch(indices[part])
            attention_mask = torch.from_numpy(window.attention_mask)
            starts = torch.from_numpy(window.word_starts) if window.word_starts is not None and self.config.masking != "token" else None
            batch = self.masker(
                torch.from_numpy(window.input_ids),
                attention_mask,
                torch.from_numpy(indices[part]),
                torch.from_numpy(epochs[part]),
                mask_prob=rate,
                word_starts=starts,
            )
            picked = batch.labels != IGNORE_INDEX
            # Documents from the ids before masking: a random replacement may be a separator.
            documents = (
                None
                if self.config.attention_across_docs
                else document_ids(torch.from_numpy(window.input_ids), attention_mask, self.train_windows.vocab.closer_id)
            )
            picks, targets = padded_picks(picks_of(picked), batch.labels[picked], PICKED_ROWS_MULTIPLE, PICKED_SLOTS_MULTIPLE)
            host = [batch.input_ids, targets, *picks]
            padded = not bool(attention_mask.all())  # packed windows have no padding: attention needs no mask
            host += [attention_mask] if padded else []
            host += [documents] if documents is not None else []
            if self.device.type == "cuda":
                host = [t.pin_memory() for t in host]
            ids, targets, flat, order, slots, *rest = (t.to(self.device, non_blocking=True) for t in host)
            mask = rest.pop(0) if padded else None
            drawn.micro_batches.append(MicroBatch(ids, mask, targets, Picks(flat, order, slots), rest[0] if rest else None))
            count = int(picked.sum())
            segments = segments_of(window.attention_mask, documents.numpy() if documents is not None else None)
            drawn.picked += count
            drawn.maskable += int(batch.maskable.sum())
            drawn.tokens += int(segments.sum())
            drawn.slots += window.attention_mask.size
            drawn.flops += TRAINING_PASSES * self.lm.forward_flops(Shape(segments, count))
        drawn.seconds = time.perf_counter() - began
        return drawn

    def forward_backward(self, drawn: Drawn, signals: StopSignals, within_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Forward and backward every micro-batch; the step's mean loss over the masked tokens
        of all processes, on the device.

        The loss is normalised by the masked tokens of the whole step on all processes rather
        than averaged over micro-batch means; DDP and FSDP average gradients over processes,
        hence the factor `world.size`. Before each micro-batch after the first, the processes
        agree on whether a stop was asked for: then the partial step is dropped
        (`StepDropped`), so that a stop never waits for a long step to end. `within_step`
        hears (micro-batches done, of) for a progress display.
        """
        picked = distributed.sum_on_device(float(drawn.picked), self.world, self.device).clamp_min(1.0)
        loss_sum = torch.zeros((), device=self.device)
        count = len(drawn.micro_batches)
        for number, batch in enumerate(drawn.micro_batches, 1):
            if number > 1:
                if within_step is not None:
                    within_step(number - 1, count)
                self.stop_if_asked(drawn, signals)
            last = number == count
            with distributed.set_gradient_sync(self.model, self.strategy, last), autocast(self.device, self.dtype):
                loss, _ = self.model(batch.input_ids, batch.attention_mask, batch.targets, batch.picks, batch.documents)
                (loss * self.world.size / picked).backward()
            loss_sum += loss.detach()
        return distributed.sum_on_device(loss_sum, self.world, self.device) / picked

    def stop_if_asked(self, drawn: Drawn, signals: StopSignals) -> None:
        """Drop the step in progress when a stop signal reached any process: its gradients are
        cleared and the data rewound to where the step began, so the checkpoint written next
        is of the last whole step and a resumed run redoes this one exactly."""
        signum = int(distributed.agree_max(float(signals.received or 0), self.world))
        if signum:
            self.signal = signum
            self.optimizer.zero_grad(set_to_none=True)
            self.sampler.rewind(drawn.positions_before)
            raise StepDropped

    def stop_after_dropped_step(self) -> Stopped:
        """After `StepDropped`: read and agree on what the whole steps before it did, write the
        checkpoint of the last of them (unless it is on disk already, or none ran), and return
        the `Stopped` to raise."""
        self.settle()
        if self.step == 0:
            return Stopped(self.signal, self.step, None)
        newest = self.run_dir.checkpoint(self.step)
        on_disk = distributed.max_across([float(self.world.is_main and newest.is_dir())], self.world, self.device)[
            0
        ]  # rank 0's disk decides
        return Stopped(self.signal, self.step, newest if on_disk else self.save_checkpoint())

    def update(self, mean_loss: torch.Tensor) -> None:
        """Clip, and apply the update unless the loss or the gradient norm is not finite: such
        a step is dropped on the device (`skip_on_device`), so nothing waits for the device to
        know; `settle` reads what happened."""
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm > 0 else float("inf")
        norm, bad = clipped_update(self.optimizer, self.lm.parameters(), max_norm, mean_loss)
        self.tally.add(self.step, mean_loss.detach().to(torch.float64), norm.detach().to(torch.float64), bad.to(torch.float64))

    def finish_step(self, drawn: Drawn, signals: StopSignals) -> None:
        """After a step: its counts, and any stop signal, agreed by every process."""
        self.tally.picked += drawn.picked
        self.tally.maskable += drawn.maskable
        self.tally.tokens += drawn.tokens
        self.tally.slots += drawn.slots
        self.tally.flops += drawn.flops
        self.tally.data_seconds += drawn.seconds
        self.step += 1
        # Every process agrees on a stop after every step (a host-side gloo all-reduce), so
        # that one asked for is taken at once, not at the next log line.
        self.signal = int(distributed.agree_max(float(signals.received or 0), self.world))

    def spend(self, seconds: float) -> None:
        """The step's training time, the wait for the device included; several processes agree
        on the total when they settle."""
        self.spent_here += seconds
        if not self.world.distributed:
            self.spent = self.spent_here

    def due_to_settle(self) -> bool:
        """Whether this step ends with a log line, an evaluation, a checkpoint, a downstream
        score, a stop or the end: then the host reads what the device knows."""
        c = self.config
        every = [c.log_every, c.eval_every, c.checkpoint_every, c.downstream_every]
        return self.finished() or bool(self.signal) or any(n and self.step % n == 0 for n in every)

    def settle(self) -> dict:
        """Read what the steps since the last settle did (the one wait for the device), agree
        on the time spent across processes (a stop signal is agreed after every step, in
        `finish_step`), and stop on a non-finite step as --on-nonfinite says. Returns the
        numbers of a metrics line."""
        c = self.config
        values = self.tally.on_device.tolist()
        spent, memory = distributed.max_across([self.spent_here, float(peak_memory(self.device))], self.world, self.device)
        reset_peak_memory(self.device)  # each line's memory is the peak of its own steps
        if self.world.distributed:
            self.spent = spent
        tally = self.tally
        counts = distributed.sum_across(
            [tally.picked, tally.maskable, tally.tokens, tally.slots, tally.flops, tally.data_seconds], self.world, self.device
        )
        t = Tally
        if values[t.SKIPPED] and c.on_nonfinite == "stop":
            raise UnmaskError(
                f"step {int(values[t.FIRST]) + 1}: training loss is {values[t.FIRST_LOSS]}, gradient norm {values[t.FIRST_NORM]}; "
                "stopped before applying it (checkpoints so far are intact, no model/ written). "
                "Try a lower --lr, --precision fp32, or --on-nonfinite skip"
            )
        if values[t.WORST] > c.max_nonfinite:
            raise UnmaskError(
                f"step {int(values[t.LAST]) + 1}: training loss is {values[t.LAST_LOSS]}, gradient norm {values[t.LAST_NORM]}; "
                f"{int(values[t.WORST])} non-finite steps in a row (--max-nonfinite {c.max_nonfinite}): stopped"
            )
        self.skipped += int(values[t.SKIPPED])
        self.tally.reset()
        applied, norm = values[t.APPLIED], values[t.NORM]
        return {
            "loss": values[t.LOSS] / applied if applied else None,
            "grad_norm": None if math.isnan(norm) else norm,
            "skipped_steps": self.skipped,
            "mask_rate": counts[0] / max(counts[1], 1),
            "tokens": counts[2],
            "slots": counts[3],
            "flops": counts[4],
            "data_seconds": counts[5] / self.world.size,
            "memory": memory,
            "train_tokens": self.tokens_seen(),
        }

    def tokens_seen(self) -> int:
        """Training tokens of all processes so far: steps x the global batch x the window length
        (the one place this is worked out; the summary, the downstream hook and the run's page read it)."""
        return self.step * self.global_batch * self.config.seq_len

    def evaluate(self, progress: Progress) -> dict:
        """Held-out metrics, logged and printed; {} when there is no held-out split. With
        several stores, each store's held-out split separately (`eval_loss@NAME`, ...) and
        their token-weighted total (`eval_loss`, ...)."""
        per_source = self._evaluate_sets(self.val_windows, self.config.seq_len)
        if not per_source:
            return {}
        result = combine(list(per_source.values()))
        record = {"step": self.step, **result.as_dict("eval_")}
        if len(self.val_windows) > 1:
            for name, metrics in per_source.items():
                record.update({f"{key}@{name}": value for key, value in metrics.as_dict("eval_").items()})
        lengths = []
        for length, sets in self.other_lengths.items():
            at_length = self._evaluate_sets(sets, length)
            if at_length:
                other = combine(list(at_length.values()))
                record.update({f"{key}@len{length}": value for key, value in other.as_dict("eval_").items()})
                lengths.append(f"{other.loss:.4f} at {length} tokens")
        self.metrics.write(record)
        progress.echo(
            f"step {self.step}: eval loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
            f"accuracy {result.accuracy:.2%} (top-5 {result.top5_accuracy:.2%})" + (f"; eval loss {', '.join(lengths)}" if lengths else "")
        )
        return record

    def _evaluate_sets(self, sets: dict[str, Windows], length: int) -> dict:
        """Each non-empty held-out set's metrics. Batches hold about as many tokens as a
        training micro-batch, so that a longer evaluation length does not multiply memory."""
        batch_size = max(1, self.config.batch_size * self.config.seq_len // length)
        return {
            name: evaluate_model(
                self.lm,
                windows,
                batch_size=batch_size,
                device=self.device,
                dtype=reporting_dtype(self.device, self.config.precision),  # fp32 unless --precision bf16: comparable across machines
                max_batches=self.config.eval_max_batches,
                world=self.world,
                documents_apart=not self.config.attention_across_docs,
            )[0]
            for name, windows in sets.items()
            if len(windows)
        }

    def score_downstream(self, progress: Progress) -> None:
        """Score the checkpoint just written on the --downstream suite, when this step is due
        (every --downstream-every steps, and the last). Rank 0 loads the checkpoint from disk and
        scores it; the others wait. The time is not training time."""
        c = self.config
        if c.downstream is None or not (self.finished() or (c.downstream_every and self.step % c.downstream_every == 0)):
            return
        if self.world.is_main and self.score_checkpoint is not None:
            progress.echo(f"step {self.step}: " + self.score_checkpoint(self.step, self.tokens_seen(), str(self.device)))
        distributed.barrier(self.world)

    def save_checkpoint(self) -> Path:
        weights, named = full_state(self.lm, self.optimizer, self.strategy)
        if self.world.is_main:
            info = CheckpointInfo(
                step=self.step,
                epoch=self.sampler.position.epoch,
                position=self.sampler.position.position,
                sources=[[p.epoch, p.position] for p in self.sampler.positions] if len(self.sampler.positions) > 1 else None,
                train_seconds=self.spent,
                skipped_steps=self.skipped,
                device_type=self.device.type,
                world_size=self.world.size,
                global_batch=self.global_batch,
                strategy=self.strategy,
                window_order=WINDOW_ORDER,
                windows=[len(part) for part in self.train_windows.parts],
            )
            checkpoint.save_checkpoint(self.run_dir, info, weights, named, keep=self.config.keep_checkpoints)
        distributed.barrier(self.world)
        return self.run_dir.checkpoint(self.step)
