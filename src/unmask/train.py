"""Training: `setup` builds everything a run needs into a `Run`; `train` is the loop.

Per step, top to bottom: set the learning rate, draw and mask the step's micro-batches,
forward and backward each (loss normalised by the masked tokens of the whole step, over all
processes), clip, check, step, log, evaluate, checkpoint. Everything a resumed run needs
(weights, optimizer state, data position) is in the checkpoint, and the random numbers are
functions of (seed, step, window, position), so an interrupted and resumed run ends with
the same weights as one that ran straight through.

Under torchrun every process runs this same loop on its own share of each global batch
(`data.windows.rank_share`); `distributed` holds the process-group plumbing.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from unmask import checkpoint, distributed
from unmask.config import TrainConfig, UnmaskError, save_yaml, to_dict
from unmask.data.store import TokenStore
from unmask.data.windows import WindowSampler, Windows, rank_share
from unmask.distributed import World
from unmask.evaluate import evaluate_model
from unmask.files import RunLock, atomic_write_text
from unmask.masking import IGNORE_INDEX, MaskedBatch, Masker, mix32
from unmask.model import MaskedLM, autocast, autocast_dtype, build_mlm, load_mlm, max_positions, set_dropout
from unmask.persist import BASE_DIR, check_run_folder, full_state, restore, save_base, save_final_model
from unmask.preemption import StopSignals, Stopped
from unmask.progress import MetricsLog, Progress, Throughput
from unmask.schedule import learning_rate, learning_rate_at, mask_rate, run_progress
from unmask.tokenizer import Vocabulary, load_tokenizer
from unmask.tracking import Trackers

def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one process: dropout is a function of (seed, step, rank),
    so a checkpoint needs no random-number state."""
    return mix32(mix32(mix32((seed & 0xFFFFFFFF) ^ 0x3C6EF372) ^ step) ^ rank)


def build_optimizer(lm: MaskedLM, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; biases and LayerNorm weights (every parameter under 2 dimensions) never decay.

    Each group carries an `lr_scale`: weights the checkpoint lacked (a fresh MLM head) may
    learn faster than the pretrained encoder they sit on.
    """
    groups = []
    for fresh in (False, True):
        for decays in (True, False):
            params = [
                p for name, p in lm.model.named_parameters()
                if p.requires_grad and (name in lm.fresh_parameters) == fresh and (p.ndim >= 2) == decays
            ]  # fmt: skip
            if params:
                scale = config.fresh_lr_scale if fresh else 1.0
                groups.append({"params": params, "weight_decay": config.weight_decay if decays else 0.0, "lr_scale": scale})
    # The fused kernel: on this 2-core CPU 18 ms a step for MiniLM-L6's 22.7M parameters,
    # against 113 ms for the per-parameter loop and 90 ms for foreach.
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.adam_eps, fused=device.type in ("cpu", "cuda")
    )


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
    out: Path
    world: World
    strategy: str
    device: torch.device
    dtype: Optional[torch.dtype]
    tokenizer: object
    lm: MaskedLM
    model: nn.Module
    """What the step calls: `lm`, DDP around it, or `lm` sharded in place by FSDP2."""
    optimizer: torch.optim.Optimizer
    masker: Masker
    sampler: WindowSampler
    train_windows: Windows
    val_windows: Windows
    total_steps: Optional[int]
    """None when only the time budget ends the run."""
    warmup_steps: int
    metrics: MetricsLog
    tied_aliases: dict[str, str]
    budget: Optional[float] = None
    """--time-budget in seconds."""
    step: int = 0
    spent: float = 0.0
    """Seconds spent training (evaluation and checkpoints not counted), agreed by all processes."""
    last_mask_prob: float = 0.0
    """The masking rate the schedule gave the last step drawn."""
    skipped: int = 0
    """Steps whose update was dropped for a non-finite loss or gradient norm (--on-nonfinite skip)."""
    nonfinite_in_a_row: int = 0
    lock: Optional[RunLock] = None

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
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
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
                raise UnmaskError(f"{what}; {self.nonfinite_in_a_row} non-finite steps in a row (--max-nonfinite {c.max_nonfinite}): stopped")
        self.optimizer.zero_grad(set_to_none=True)
        return finite

    def mean_loss(self, loss_sum: torch.Tensor, counts: StepCounts) -> float:
        """The step's mean loss over the masked tokens of all processes."""
        loss, = distributed.sum_across([float(loss_sum)], self.world, self.device)
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
            self.lm, self.val_windows, batch_size=self.config.batch_size, device=self.device, dtype=self.dtype,
            max_batches=self.config.eval_max_batches, world=self.world,
        )  # fmt: skip
        record = {"step": self.step, **result.as_dict("eval_")}
        self.metrics.write(record)
        progress.echo(
            f"step {self.step}: eval loss {result.loss:.4f}, perplexity {result.perplexity:.2f}, "
            f"accuracy {result.accuracy:.2%} (top-5 {result.top5_accuracy:.2%})"
        )
        return record

    def save_checkpoint(self) -> Path:
        weights, named = full_state(self)
        path = self.out / "checkpoints" / f"step-{self.step:08d}"
        if self.world.is_main:
            info = {
                "device_type": self.device.type, "world_size": self.world.size, "global_batch": self.global_batch,
                "strategy": self.strategy, "train_seconds": self.spent, "skipped_steps": self.skipped,
            }  # fmt: skip
            path = checkpoint.save_checkpoint(
                self.out, self.step, weights, named, asdict(self.sampler.position), info, keep=self.config.keep_checkpoints
            )
        distributed.barrier(self.world)
        return path

def _total_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a number (under FSDP it is a replicated DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _load_model_and_tokenizer(config: TrainConfig, store: TokenStore, vocab: Vocabulary, echo: Callable[[str], None]):
    if config.model is not None:
        # load_mlm and load_tokenizer both take a run folder for its final model.
        tokenizer = load_tokenizer(config.model, config.trust_remote_code)
        lm = load_mlm(config.model, config.trust_remote_code, echo=echo, init_seed=config.seed)
        used_by, remedy = f"the model '{config.model}'", config.model
    else:
        tokenizer = load_tokenizer(config.tokenizer or str(store.tokenizer_path), config.trust_remote_code)
        lm = build_mlm(config.from_scratch, vocab, config.seq_len, config.seed)
        used_by, remedy = f"the tokenizer '{config.tokenizer or store.tokenizer_name}'", config.tokenizer
    store.require_tokenizer(tokenizer, used_by, f"run `unmask prepare ... --tokenizer {remedy}` first")
    if config.seq_len > max_positions(lm):
        raise UnmaskError(f"--seq-len {config.seq_len}: the model embeds at most {max_positions(lm)} positions")
    return tokenizer, lm


def _warn_about_repeats(run: Run, echo: Callable[[str], None]) -> None:
    windows, per_step = len(run.train_windows), run.global_batch
    if per_step > windows:
        echo(
            f"warning: a step takes {per_step} windows but the store has only {windows} training windows, so every step "
            f"sees each window {per_step / windows:.1f} times; add text or lower --batch-size / --grad-accum / --seq-len"
        )


def setup(config: TrainConfig, echo: Callable[[str], None] = print) -> Run:
    """Join the process group, check the run folder, load the data and the model, wrap it,
    build the optimizer and the sampler, and restore the newest checkpoint when resuming."""
    world, device = distributed.join(config.device)
    echo = echo if world.is_main else (lambda _: None)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a run folder")
    lock = None
    if world.is_main:  # one run at a time in a folder; the lock dies with the process that holds it
        lock = RunLock(out / ".lock", f"unmask train{' --resume' if config.resume else ''}")
        lock.acquire()
        checkpoint.clean_up(out)
    try:
        run = _setup(config, echo, world, device, out)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    return run


def _setup(config: TrainConfig, echo: Callable[[str], None], world: World, device: torch.device, out: Path) -> Run:
    check_run_folder(out, config, echo)
    store = TokenStore.open(config.data)
    vocab = store.vocabulary()
    vocab.require_mask(f"--data {store.path}")
    if config.masking != "token" and not store.has_word_starts:
        raise UnmaskError(
            f"--masking {config.masking}: {store.path} was made before unmask recorded word boundaries; "
            f"prepare it again (`unmask prepare ... --out {store.path} --overwrite`) or use --masking token"
        )
    tokenizer, lm = _load_model_and_tokenizer(config, store, vocab, echo)
    if config.dropout is not None:
        set_dropout(lm, config.dropout)
    tied = lm.tied_aliases()
    strategy = distributed.resolve_strategy(config.strategy, world)
    dtype = autocast_dtype(device, config.precision)
    lm.to(device).train()
    if config.activation_checkpointing:
        lm.enable_activation_checkpointing()
    if config.compile:
        lm.compile_encoder()
    model = distributed.wrap(lm, strategy, device, dtype)

    train_windows = Windows.build(store.split("train"), config.seq_len, vocab, packing=config.packing)
    val_windows = Windows.build(store.split("val"), config.seq_len, vocab, packing=config.packing, keep_partial=True)
    if len(train_windows) == 0:
        raise UnmaskError(f"--data {store.path}: {store.meta['splits']['train']['tokens']} training tokens make no window of --seq-len {config.seq_len}")
    total_steps = config.total_steps(len(train_windows), world.size)
    masker = Masker(
        vocab, seed=config.seed, device=device, strategy=config.masking,
        mask_prob=config.mask_prob, mask_replace_prob=config.mask_replace_prob, random_replace_prob=config.random_replace_prob,
    )  # fmt: skip
    run = Run(
        config=config, out=out, world=world, strategy=strategy, device=device, dtype=dtype, tokenizer=tokenizer, lm=lm, model=model,
        optimizer=build_optimizer(lm, config, device), masker=masker, sampler=WindowSampler(len(train_windows), config.seed),
        train_windows=train_windows, val_windows=val_windows, total_steps=total_steps, warmup_steps=config.warmup(total_steps),
        metrics=MetricsLog(out / "metrics.jsonl", None, enabled=False), tied_aliases=tied, budget=config.budget_seconds(),
    )  # fmt: skip
    if config.resume:
        restore(run, echo)
    distributed.barrier(world)  # every process has checked the folder before rank 0 writes into it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_base(lm, tokenizer, out / BASE_DIR)
        save_yaml(config, out / "config.yaml")
    trackers = Trackers(config.report_to, out, to_dict(config), run.step, enabled=world.is_main) if config.report_to else None
    run.metrics = MetricsLog(out / "metrics.jsonl", resume_step=run.step, enabled=world.is_main, trackers=trackers)
    _warn_about_repeats(run, echo)
    processes = f" on {world.size} processes ({strategy})" if world.distributed else ""
    length = f"{total_steps} steps" if total_steps else f"{config.time_budget} of training"
    length += f" (or {config.time_budget}, whichever ends first)" if total_steps and config.time_budget else ""
    echo(
        f"training {type(lm.model).__name__} ({sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M parameters) on {device}{processes}"
        f"{' with bf16' if dtype else ' in fp32'}: {length} of {run.global_batch} x {config.seq_len} tokens,"
        f" {len(train_windows)} training windows, {len(val_windows)} held-out windows"
    )
    return run


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    on_step: Optional[Callable[[int], None]] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    """Run (or resume) training as `config` says; returns the summary also saved as summary.json.

    `clock` measures the training time a --time-budget counts (tests pass a fake one).
    """
    run = setup(config, echo)
    try:
        lm, model, device = run.lm, run.model, run.device
        max_norm = config.clip_grad_norm if config.clip_grad_norm > 0 else float("inf")
        display = Progress(config.progress if progress else "none", run.total_steps, run.step, echo, enabled=run.world.is_main)
        speed = Throughput()
        last_eval: dict = {}
        with StopSignals() as signals:
            while not run.finished():
                began = clock()
                lr = run.set_learning_rate()

                # All micro-batches of the step are drawn and counted first, so the loss can be
                # normalised by the masked tokens of the whole step on all processes rather than
                # averaged over micro-batch means. DDP and FSDP average gradients over processes,
                # hence the factor `world.size`.
                micro_batches = run.draw_step()
                counts = run.count(micro_batches)
                loss_sum = torch.zeros((), device=device)
                for number, (batch, attention_mask) in enumerate(micro_batches, 1):
                    with distributed.set_gradient_sync(model, run.strategy, number == len(micro_batches)), autocast(device, run.dtype):
                        loss, _ = model(batch.input_ids, attention_mask, batch.labels)
                        (loss * run.world.size / max(counts.picked, 1)).backward()
                    loss_sum += loss.detach()
                grad_norm = _total_norm(torch.nn.utils.clip_grad_norm_(lm.parameters(), max_norm))
                train_loss = run.mean_loss(loss_sum, counts)
                applied = run.apply_or_skip(train_loss, grad_norm)  # a non-finite step never reaches the weights
                run.step += 1
                stop_signal = run.end_step(clock() - began, signals)

                speed.add(counts.tokens)
                logged = None
                if run.step % config.log_every == 0 or run.finished() or not applied:
                    logged = {"step": run.step, "loss": train_loss if applied else None, "lr": lr, "grad_norm": grad_norm if applied else None,
                              "skipped_steps": run.skipped, "mask_rate": counts.picked / max(counts.maskable, 1),
                              "mask_prob": run.last_mask_prob, "tokens_per_s": speed.rate_and_restart(),
                              "epoch": run.sampler.position.epoch, "train_seconds": run.spent}  # fmt: skip
                    run.metrics.write(logged)
                display.step(run.step, logged, run.progress())
                with speed.paused():
                    if config.eval_every and run.step % config.eval_every == 0 and not run.finished():
                        last_eval = run.evaluate(display) or last_eval
                    if stop_signal or config.checkpoint_every and run.step % config.checkpoint_every == 0 and not run.finished():
                        saved = run.save_checkpoint()
                    if stop_signal:
                        display.close()
                        raise Stopped(stop_signal, run.step, saved)
                if on_step is not None:
                    on_step(run.step)
        display.close()
        return finish(run, last_eval, display)
    finally:
        run.metrics.close()
        if run.lock is not None:
            run.lock.release()


def finish(run: Run, last_eval: dict, display: Progress) -> dict:
    """Final evaluation, checkpoint, model and summary. A finished run resumed (to redo a
    final model save that a crash interrupted) keeps the evaluation it already logged."""
    last_eval = run.metrics.eval_at(run.step) or run.evaluate(display) or last_eval
    run.save_checkpoint()
    save_final_model(run, run.out / "model")
    summary = {
        "steps": run.step,
        "tokens_per_step": run.global_batch * run.config.seq_len,
        **{k: v for k, v in last_eval.items() if k != "step"},
        "device": str(run.device),
        "processes": run.world.size,
        "strategy": run.strategy,
        "precision": "bf16" if run.dtype else "fp32",
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if run.world.is_main:
        atomic_write_text(run.out / "summary.json", json.dumps(summary, indent=2))
    display.echo(f"model saved to {run.out / 'model'} (loads with transformers' from_pretrained)")
    distributed.barrier(run.world)
    return summary
