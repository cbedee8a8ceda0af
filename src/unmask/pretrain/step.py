"""One pretraining step and what the loop does around it.

`train.setup` builds a `Run`: what the run works with (model, optimizer, a `Drawer` of the
step's windows, an `Evaluator` of the held-out ones) and its `StepState` (the step, the time
spent, the tally since the last settle). `train_step` is one step, as the loop and `--plan`
both take it: set the learning rate and reseed dropout, draw, forward and backward, clip and
step, count. Each verb's name says what it may do besides its job: `..._or_drop` raises
`StepDropped` (after rewinding the data) when a stop was asked for, `settle_or_stop` raises on
a non-finite step as --on-nonfinite says.

Random numbers are functions of (seed, step, window, position): masks are hashed, and
dropout is reseeded every step from (seed, step, rank), so a checkpoint carries none.
"""

from __future__ import annotations

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
from unmask.evaluation.heldout import combine, evaluate_model
from unmask.models.architectures import Picks, document_ids, padded_picks, picks_of
from unmask.models.attention import UNPADDED, Spans, spans_of
from unmask.models.flops import TRAINING_PASSES, Shape, segments_of
from unmask.models.masked_lm import MaskedLM
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.runtime.hardware import Peak, Precision, autocast, peak_memory, remeasured_peak, reporting_dtype
from unmask.runtime.metrics import MetricsLog
from unmask.runtime.optimizer import adamw, decay_groups, set_learning_rate
from unmask.runtime.persist import write_checkpoint
from unmask.runtime.preemption import StepDropped, Stopped, StopSignals
from unmask.runtime.stepping import PRETRAINING, Tally, clipped_update, step_seed
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.files import FolderLock
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
    spans: Spans | None = None
    """The documents' `attention.Spans`, from the host, when the attention path runs them unpadded (varlen, flash)."""


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


class Drawer:
    """Draws each step's windows in their seeded order, masks them on the host and copies this
    process's micro-batches to the device.

    Every process draws the whole global batch's window indices (cheap) and keeps its share.
    Masks are hashes of (seed, epoch, window, position), the same wherever they are computed;
    drawing them on the host means the host also knows how many positions are picked, and
    where, so the step never has to ask the device. Copies are pinned and asynchronous on a GPU.
    """

    def __init__(
        self,
        config: TrainConfig,
        world: World,
        device: torch.device,
        sampler: MixtureSampler,
        train_windows: WindowMix,
        masker: Masker,
        lm: MaskedLM,
    ):
        self.config, self.world, self.device = config, world, device
        self.sampler, self.train_windows, self.masker, self.lm = sampler, train_windows, masker, lm
        self.last_mask_prob = 0.0
        """The masking rate the schedule gave the last step drawn."""

    def draw(self, step: int, progress: float, between: Callable[[Drawn], None]) -> Drawn:
        """This process's micro-batches of step `step`; `between(drawn)` is called every
        `DRAW_CHECK_EVERY` micro-batches (where a stop asked for may drop the step)."""
        c = self.config
        began = time.perf_counter()
        before = self.sampler.mark()
        indices, epochs = self.sampler.take(c.windows_per_step(self.world.size), step, progress)
        rate = self.last_mask_prob = mask_rate(progress, c.mask_prob, c.mask_prob_end, c.mask_schedule)
        drawn = Drawn([], 0, 0, 0, before)
        for number, part in enumerate(rank_share(self.world.rank, c.batch_size, c.grad_accum)):
            if number and number % DRAW_CHECK_EVERY == 0:
                between(drawn)
            self._add_micro_batch(drawn, indices[part], epochs[part], rate)
        drawn.seconds = time.perf_counter() - began
        return drawn

    def _add_micro_batch(self, drawn: Drawn, indices, epochs, rate: float) -> None:
        window = self.train_windows.batch(indices)
        attention_mask = torch.from_numpy(window.attention_mask)
        starts = torch.from_numpy(window.word_starts) if window.word_starts is not None and self.config.masking != "token" else None
        batch = self.masker(
            torch.from_numpy(window.input_ids),
            attention_mask,
            torch.from_numpy(indices),
            torch.from_numpy(epochs),
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
        spans = None
        if documents is not None and self.lm.attention in UNPADDED:
            host_spans = spans_of(documents)
            cu = host_spans.cu.pin_memory() if self.device.type == "cuda" else host_spans.cu
            spans = Spans(cu.to(self.device, non_blocking=True), host_spans.longest)
        drawn.micro_batches.append(MicroBatch(ids, mask, targets, Picks(flat, order, slots), rest[0] if rest else None, spans))
        count = int(picked.sum())
        segments = segments_of(window.attention_mask, documents.numpy() if documents is not None else None)
        drawn.picked += count
        drawn.maskable += int(batch.maskable.sum())
        drawn.tokens += int(segments.sum())
        drawn.slots += window.attention_mask.size
        drawn.flops += TRAINING_PASSES * self.lm.forward_flops(Shape(segments, count))


class Evaluator:
    """Scores the held-out windows of every store (and at every other --eval-seq-len), logs the
    metrics line and prints it."""

    def __init__(
        self,
        config: TrainConfig,
        world: World,
        device: torch.device,
        lm: MaskedLM,
        val_windows: dict[str, Windows],
        other_lengths: dict[int, dict[str, Windows]],
        metrics: MetricsLog,
    ):
        self.config, self.world, self.device, self.lm, self.metrics = config, world, device, lm, metrics
        self.val_windows = val_windows
        """Each store's held-out windows, by the name --data gives it."""
        self.other_lengths = other_lengths
        """The same held-out text cut at the other --eval-seq-len lengths (and the length a context extension started from)."""

    def evaluate(self, step: int, echo: Callable[[str], None]) -> dict:
        """Held-out metrics, logged and printed; {} when there is no held-out split. With
        several stores, each store's held-out split separately (`eval_loss@NAME`, ...) and
        their token-weighted total (`eval_loss`, ...)."""
        per_source = self._evaluate_sets(self.val_windows, self.config.seq_len)
        if not per_source:
            return {}
        result = combine(list(per_source.values()))
        record = {"step": step, **result.as_dict("eval_")}
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
        echo(
            f"step {step}: eval loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
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


@dataclass
class StepState:
    """Where the run stands: the step, the time spent, and what the steps since the last
    settle did. A checkpoint keeps the step, the time spent and the tally's count of dropped steps."""

    tally: Tally
    """The steps since the last settle (`settle_or_stop`), and the run's dropped steps."""
    step: int = 0
    spent: float = 0.0
    """Seconds spent training (evaluation and checkpoints not counted), agreed by all processes."""
    spent_here: float = 0.0
    """The same, as this process counts it (agreed into `spent` when the processes settle)."""
    signal: int = 0
    """A stop signal received (agreed by all processes after every step); 0: none."""


@dataclass
class Run:
    """Everything one training run works with, built by `setup`, and its `StepState`."""

    config: TrainConfig
    run_dir: RunDir
    world: World
    strategy: str
    device: torch.device
    precision: Precision
    tokenizer: object
    lm: MaskedLM
    model: nn.Module
    """What the step calls: `lm`, DDP around it, or `lm` sharded in place by FSDP2."""
    optimizer: torch.optim.Optimizer
    drawer: Drawer
    evaluator: Evaluator
    total_steps: int | None
    """None when only the time budget ends the run."""
    warmup_steps: int
    metrics: MetricsLog
    lock: FolderLock | None
    """Held by rank 0 while it trains in the folder; None on the other processes."""
    state: StepState
    peak: Peak = Peak(0.0, "unknown")
    """The device's peak FLOP/s, which MFU is measured against (--peak-tflops)."""
    score_checkpoint: Callable[[int, int, str], str] | None = None
    """The --downstream scoring hook: (step, tokens seen, device) -> a line to show; rank 0 calls it
    after a due checkpoint. Handed in by the caller (`unmask.api.train`), so that pretraining
    never imports the downstream package."""
    budget: float | None = None
    """--time-budget in seconds."""

    @property
    def dtype(self) -> torch.dtype | None:
        return self.precision.dtype

    @property
    def global_batch(self) -> int:
        return self.config.windows_per_step(self.world.size)

    def progress(self) -> float:
        return run_progress(self.state.step, self.total_steps, self.state.spent, self.budget)

    def finished(self) -> bool:
        s = self.state
        return (self.total_steps is not None and s.step >= self.total_steps) or (self.budget is not None and s.spent >= self.budget)

    def tokens_seen(self) -> int:
        """Training tokens of all processes so far: steps x the global batch x the window length
        (the one place this is worked out; the summary, the downstream hook and the run's page read it)."""
        return self.state.step * self.global_batch * self.config.seq_len

    def peak_past(self) -> float:
        """The peak after a log line went past it: measured again (each process on its own: the
        log line is the first process's)."""
        self.peak = remeasured_peak(self.peak, self.device, self.dtype)
        return self.peak.flops


def train_step(run: Run, signals: StopSignals, within_step: Callable[[int, int], None] | None = None) -> float:
    """One whole step, as the loop and --plan take it; returns its learning rate. Nothing here
    reads the device: what it did is tallied on the device, read when the run settles."""
    lr = set_lr_and_reseed_dropout(run)
    drawn = draw_or_drop(run, signals)  # the step's windows, masked on the host, copied to the device
    mean_loss = forward_backward_or_drop(run, drawn, signals, within_step)
    clip_step_and_tally(run, mean_loss)  # the update, dropped on the device where not finite
    count_step_and_agree_on_stop(run, drawn, signals)
    return lr


def set_lr_and_reseed_dropout(run: Run) -> float:
    """Set the step's learning rate (returned) and reseed torch's generator from (seed, step,
    rank), which dropout draws from: a checkpoint then needs no random-number state."""
    c, step = run.config, run.state.step
    shape = {"min_ratio": c.min_lr_ratio, "decay_fraction": c.decay_fraction, "warmup_start": c.warmup_start_ratio}
    if run.budget is None:
        lr = learning_rate(step, run.total_steps, run.warmup_steps, c.lr, c.schedule, **shape)
    elif step < run.warmup_steps:
        lr = c.lr * warming_up((step + 1) / run.warmup_steps, c.warmup_start_ratio)
    else:
        warmup_share = 0.0 if c.warmup_steps is not None else c.warmup_fraction
        lr = learning_rate_at(run.progress(), warmup_share, c.lr, c.schedule, **shape)
    set_learning_rate(run.optimizer, lr)
    torch.manual_seed(step_seed(c.seed, step, run.world.rank, PRETRAINING))
    return lr


def draw_or_drop(run: Run, signals: StopSignals) -> Drawn:
    """This process's micro-batches of the step (`Drawer.draw`); a stop asked for while a long
    step is drawn drops it (checked every `DRAW_CHECK_EVERY` micro-batches)."""
    return run.drawer.draw(run.state.step, run.progress(), lambda drawn: drop_step_if_stop_asked(run, drawn, signals))


def forward_backward_or_drop(
    run: Run, drawn: Drawn, signals: StopSignals, within_step: Callable[[int, int], None] | None = None
) -> torch.Tensor:
    """Forward and backward every micro-batch; the step's mean loss over the masked tokens
    of all processes, on the device.

    The loss is normalised by the masked tokens of the whole step on all processes rather
    than averaged over micro-batch means; DDP and FSDP average gradients over processes,
    hence the factor `world.size`. Before each micro-batch after the first, the processes
    agree on whether a stop was asked for: then the partial step is dropped
    (`drop_step_if_stop_asked`), so that a stop never waits for a long step to end.
    `within_step` hears (micro-batches done, of) for a progress display.
    """
    picked = distributed.sum_on_device(float(drawn.picked), run.world, run.device).clamp_min(1.0)
    loss_sum = torch.zeros((), device=run.device)
    count = len(drawn.micro_batches)
    for number, batch in enumerate(drawn.micro_batches, 1):
        if number > 1:
            if within_step is not None:
                within_step(number - 1, count)
            drop_step_if_stop_asked(run, drawn, signals)
        last = number == count
        with distributed.set_gradient_sync(run.model, run.strategy, last), autocast(run.device, run.dtype):
            loss, _ = run.model(batch.input_ids, batch.attention_mask, batch.targets, batch.picks, batch.documents, batch.spans)
            (loss * run.world.size / picked).backward()
        loss_sum += loss.detach()
    return distributed.sum_on_device(loss_sum, run.world, run.device) / picked


def drop_step_if_stop_asked(run: Run, drawn: Drawn, signals: StopSignals) -> None:
    """Drop the step in progress when a stop signal reached any process: its gradients are
    cleared, the data rewound to where the step began, and `StepDropped` raised, so the
    checkpoint written next is of the last whole step and a resumed run redoes this one exactly."""
    signum = int(distributed.agree_max(float(signals.received or 0), run.world))
    if signum:
        run.state.signal = signum
        run.optimizer.zero_grad(set_to_none=True)
        run.drawer.sampler.rewind(drawn.positions_before)
        raise StepDropped


def clip_step_and_tally(run: Run, mean_loss: torch.Tensor) -> None:
    """Clip, and apply the update unless the loss or the gradient norm is not finite: such
    a step is dropped on the device (`skip_on_device`), so nothing waits for the device to
    know; the step's loss, norm and verdict go into the tally, which `settle_or_stop` reads."""
    max_norm = run.config.clip_grad_norm if run.config.clip_grad_norm > 0 else float("inf")
    norm, bad = clipped_update(run.optimizer, run.lm.parameters(), max_norm, mean_loss)
    run.state.tally.add(run.state.step, mean_loss.detach().to(torch.float64), norm.detach().to(torch.float64), bad.to(torch.float64))


def count_step_and_agree_on_stop(run: Run, drawn: Drawn, signals: StopSignals) -> None:
    """After a step: its host counts tallied, the step counted, and any stop signal agreed by
    every process (a host-side all-reduce), so that one asked for is taken at once."""
    tally, state = run.state.tally, run.state
    tally.picked += drawn.picked
    tally.maskable += drawn.maskable
    tally.tokens += drawn.tokens
    tally.slots += drawn.slots
    tally.flops += drawn.flops
    tally.data_seconds += drawn.seconds
    state.step += 1
    state.signal = int(distributed.agree_max(float(signals.received or 0), run.world))


def spend(run: Run, seconds: float) -> None:
    """The step's training time, the wait for the device included; several processes agree
    on the total when they settle."""
    run.state.spent_here += seconds
    if not run.world.distributed:
        run.state.spent = run.state.spent_here


def due_to_settle(run: Run) -> bool:
    """Whether this step ends with a log line, an evaluation, a checkpoint, a downstream
    score, a stop or the end: then the host reads what the device knows."""
    c = run.config
    every = [c.log_every, c.eval_every, c.checkpoint_every, c.downstream_every]
    return run.finished() or bool(run.state.signal) or any(n and run.state.step % n == 0 for n in every)


def settle_or_stop(run: Run) -> dict:
    """Read what the steps since the last settle did (the one wait for the device), agree on
    the time spent and the peak memory across processes, and stop on a non-finite step as
    --on-nonfinite says (`Tally.settle`). Returns the numbers of a metrics line; the tally
    starts again. The peak memory counter is the caller's to reset."""
    c, state, tally = run.config, run.state, run.state.tally
    spent, memory = distributed.max_across([state.spent_here, float(peak_memory(run.device))], run.world, run.device)
    if run.world.distributed:
        state.spent = spent
    counts = distributed.sum_across(
        [tally.picked, tally.maskable, tally.tokens, tally.slots, tally.flops, tally.data_seconds], run.world, run.device
    )
    return {
        **tally.settle(c.on_nonfinite, c.max_nonfinite, "no model/ written"),
        "mask_rate": counts[0] / max(counts[1], 1),
        "tokens": counts[2],
        "slots": counts[3],
        "flops": counts[4],
        "data_seconds": counts[5] / run.world.size,
        "memory": memory,
        "train_tokens": run.tokens_seen(),
    }


def due_to_evaluate(run: Run) -> bool:
    return bool(run.config.eval_every) and run.state.step % run.config.eval_every == 0 and not run.finished()


def due_to_checkpoint(run: Run) -> bool:
    """A stop signal, or --checkpoint-every (the end writes its own)."""
    every = run.config.checkpoint_every
    return bool(run.state.signal) or bool(every) and run.state.step % every == 0 and not run.finished()


def evaluate(run: Run, echo: Callable[[str], None]) -> dict:
    return run.evaluator.evaluate(run.state.step, echo)


def stop_after_dropped_step(run: Run) -> Stopped:
    """After `StepDropped`: read and agree on what the whole steps before it did, write the
    checkpoint of the last of them (unless it is on disk already, or none ran), and return
    the `Stopped` to raise."""
    settle_or_stop(run)
    step = run.state.step
    if step == 0:
        return Stopped(run.state.signal, step, None)
    newest = run.run_dir.checkpoint(step)
    on_disk = distributed.max_across([float(run.world.is_main and newest.is_dir())], run.world, run.device)[0]  # rank 0's disk decides
    return Stopped(run.state.signal, step, newest if on_disk else save_checkpoint(run))


def score_downstream(run: Run, echo: Callable[[str], None]) -> None:
    """Score the checkpoint just written on the --downstream suite, when this step is due
    (every --downstream-every steps, and the last). Rank 0 loads the checkpoint from disk and
    scores it; the others wait. The time is not training time."""
    c, step = run.config, run.state.step
    if c.downstream is None or not (run.finished() or (c.downstream_every and step % c.downstream_every == 0)):
        return
    if run.world.is_main and run.score_checkpoint is not None:
        echo(f"step {step}: " + run.score_checkpoint(step, run.tokens_seen(), str(run.device)))
    distributed.barrier(run.world)


def save_checkpoint(run: Run) -> Path:
    """The checkpoint of this step (`persist.write_checkpoint`), with where the data stands."""
    state, sampler = run.state, run.drawer.sampler
    info = CheckpointInfo(
        step=state.step,
        epoch=sampler.position.epoch,
        position=sampler.position.position,
        sources=[[p.epoch, p.position] for p in sampler.positions] if len(sampler.positions) > 1 else None,
        train_seconds=state.spent,
        skipped_steps=state.tally.skipped,
        device_type=run.device.type,
        world_size=run.world.size,
        global_batch=run.global_batch,
        strategy=run.strategy,
        window_order=WINDOW_ORDER,
        windows=[len(part) for part in run.drawer.train_windows.parts],
    )
    return write_checkpoint(run.run_dir, info, run.lm, run.optimizer, run.world, run.config.keep_checkpoints)
