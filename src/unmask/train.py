"""Training: `setup` builds everything a run needs into a `Run` (`unmask.run`); `train` is the loop.

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
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from unmask import checkpoint, distributed
from unmask.checkpoint import CheckpointInfo
from unmask.config import TrainConfig, load_suite, save_yaml, to_dict
from unmask.data.store import TokenStore
from unmask.data.windows import DataPosition, Windows, WindowSampler
from unmask.distributed import World
from unmask.downstream import resolve_suite
from unmask.errors import UnmaskError
from unmask.files import RunLock, atomic_write_text
from unmask.hardware import autocast, autocast_dtype
from unmask.hub import resolve_model
from unmask.masking import Masker
from unmask.model import build_mlm, load_mlm, max_positions, set_dropout
from unmask.persist import check_run_folder, restore, save_base, save_final_model
from unmask.preemption import Stopped, StopSignals
from unmask.progress import MetricsLog, Progress, Throughput
from unmask.run import Run, build_optimizer, total_norm
from unmask.rundir import RunDir
from unmask.tokenizer import Vocabulary, load_tokenizer
from unmask.tracking import Trackers


def _load_model_and_tokenizer(config: TrainConfig, store: TokenStore, vocab: Vocabulary, echo: Callable[[str], None]):
    if config.model is not None:
        source = resolve_model(config.model)  # once, so that the tokenizer and the weights come from the same folder
        tokenizer = load_tokenizer(source, config.trust_remote_code)
        lm = load_mlm(source, config.trust_remote_code, echo=echo, init_seed=config.seed)
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
    run_dir = RunDir(Path(config.out))
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise UnmaskError(f"--out {run_dir.path}: is a file, not a run folder")
    lock = None
    if world.is_main:  # one run at a time in a folder; the lock dies with the process that holds it
        lock = RunLock(run_dir.lock, f"unmask train{' --resume' if config.resume else ''}")
        lock.acquire()
        checkpoint.clean_up(run_dir)
    try:
        return _setup(config, echo, world, device, run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _setup(
    config: TrainConfig, echo: Callable[[str], None], world: World, device: torch.device, run_dir: RunDir, lock: RunLock | None
) -> Run:
    check_run_folder(run_dir, config, echo)
    store = TokenStore.open(config.data)
    vocab = store.vocabulary()
    vocab.require_mask(f"--data {store.path}")
    if config.masking != "token" and not store.has_word_starts:
        raise UnmaskError(
            f"--masking {config.masking}: {store.path} was made before unmask recorded word boundaries; "
            f"prepare it again (`unmask prepare ... --out {store.path} --overwrite`) or use --masking token"
        )
    suite = load_suite(resolve_suite(config.downstream)) if config.downstream else None  # checked before any work
    tokenizer, lm = _load_model_and_tokenizer(config, store, vocab, echo)
    if config.dropout is not None:
        set_dropout(lm, config.dropout)
    strategy = distributed.resolve_strategy(config.strategy, world)
    dtype = autocast_dtype(device, config.precision)
    lm.to(device).train()
    if config.activation_checkpointing:
        lm.enable_activation_checkpointing()
    if config.compile:
        lm.compile_encoder()
    model = distributed.parallelize(lm, strategy, device, dtype)
    optimizer = build_optimizer(lm, config, device)

    train_windows = Windows.build(store.split("train"), config.seq_len, vocab, packing=config.packing)
    val_windows = Windows.build(store.split("val"), config.seq_len, vocab, packing=config.packing, keep_partial=True)
    if len(train_windows) == 0:
        raise UnmaskError(
            f"--data {store.path}: {store.meta['splits']['train']['tokens']} training tokens make no window of --seq-len {config.seq_len}"
        )
    total_steps = config.total_steps(len(train_windows), world.size)
    masker = Masker(
        vocab,
        seed=config.seed,
        device=device,
        strategy=config.masking,
        mask_prob=config.mask_prob,
        mask_replace_prob=config.mask_replace_prob,
        random_replace_prob=config.random_replace_prob,
    )
    resumed = restore(run_dir, config, lm, optimizer, strategy, world, device, echo) if config.resume else None
    resumed = resumed or CheckpointInfo(step=0)
    distributed.barrier(world)  # every process has checked the folder before rank 0 writes into it
    if world.is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        save_base(lm, tokenizer, run_dir)
        save_yaml(config, run_dir.config)
    trackers = Trackers(config.report_to, run_dir, to_dict(config), resumed.step, enabled=world.is_main) if config.report_to else None
    run = Run(
        config=config,
        run_dir=run_dir,
        world=world,
        strategy=strategy,
        device=device,
        dtype=dtype,
        tokenizer=tokenizer,
        lm=lm,
        model=model,
        optimizer=optimizer,
        masker=masker,
        sampler=WindowSampler(len(train_windows), config.seed, DataPosition(resumed.epoch, resumed.position)),
        train_windows=train_windows,
        val_windows=val_windows,
        total_steps=total_steps,
        warmup_steps=config.warmup(total_steps),
        metrics=MetricsLog(run_dir, resume_step=resumed.step, enabled=world.is_main, trackers=trackers),
        lock=lock,
        suite=suite,
        budget=config.budget_seconds(),
        step=resumed.step,
        spent=resumed.train_seconds,
        skipped=resumed.skipped_steps,
    )
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
    on_step: Callable[[int], None] | None = None,
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
                grad_norm = total_norm(torch.nn.utils.clip_grad_norm_(lm.parameters(), max_norm))
                train_loss = run.mean_loss(loss_sum, counts)
                applied = run.apply_or_skip(train_loss, grad_norm)  # a non-finite step never reaches the weights
                run.step += 1
                stop_signal = run.end_step(clock() - began, signals)

                speed.add(counts.tokens)
                logged = None
                if run.step % config.log_every == 0 or run.finished() or not applied:
                    logged = {
                        "step": run.step,
                        "loss": train_loss if applied else None,
                        "lr": lr,
                        "grad_norm": grad_norm if applied else None,
                        "skipped_steps": run.skipped,
                        "mask_rate": counts.picked / max(counts.maskable, 1),
                        "mask_prob": run.last_mask_prob,
                        "tokens_per_s": speed.rate_and_restart(),
                        "epoch": run.sampler.position.epoch,
                        "train_seconds": run.spent,
                    }
                    run.metrics.write(logged)
                display.step(run.step, logged, run.progress())
                with speed.paused():
                    if config.eval_every and run.step % config.eval_every == 0 and not run.finished():
                        last_eval = run.evaluate(display) or last_eval
                    if stop_signal or config.checkpoint_every and run.step % config.checkpoint_every == 0 and not run.finished():
                        saved = run.save_checkpoint()
                        run.score_downstream(display)
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
    save_final_model(run.lm, run.tokenizer, run.strategy, run.world, run.run_dir.model)
    run.score_downstream(display)
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
        atomic_write_text(run.run_dir.summary, json.dumps(summary, indent=2))
    display.echo(f"model saved to {run.run_dir.model} (loads with transformers' from_pretrained)")
    distributed.barrier(run.world)
    return summary
