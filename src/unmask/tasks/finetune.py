"""`unmask finetune`: an encoder with a fresh task head, trained on labelled data, once per seed.

`finetune` reads and encodes the task once, then for each seed runs `_fit`: a setup, then a
loop that reads top to bottom (set the learning rate, take the step's batch, forward,
backward, clip, check, step, log, evaluate, checkpoint), then the final evaluation and the
model. The summary gives every metric's median, mean and spread over the seeds.

What makes it fast: batches of similar lengths padded only to their own longest example
(`batching`), the fused AdamW, the cheap CPU dropout, and no wait for the device in a step
that logs nothing. Under torchrun each process takes its share of every batch (DDP).

The output folder is a run folder (`rundir.RunDir`); with several seeds each seed has its
own, `OUT/seed-N/`, beside the summary. Checkpoints resume exactly: the batch order of an
epoch is a function of (seed, epoch), dropout of (seed, step, rank).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unmask.config import FINETUNE_RESUMABLE, FinetuneConfig, load_yaml, refused_resume_changes, save_yaml, to_dict
from unmask.config.schedule import learning_rate
from unmask.data.batching import length_grouped_batches, padded, sorted_batches
from unmask.data.tokenizer import load_tokenizer
from unmask.errors import UnmaskError, option, setting
from unmask.models.attention import attention_of, refuse_unavailable, switch_attention
from unmask.models.masked_lm import load_task_model, prepared_attention_mask, set_dropout
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.runtime.hardware import autocast, choose_precision, make_deterministic
from unmask.runtime.metrics import MetricsLog
from unmask.runtime.optimizer import adamw, decay_groups, set_learning_rate
from unmask.runtime.persist import load_module_state, write_checkpoint
from unmask.runtime.progress import Progress, Throughput
from unmask.runtime.stepping import FINE_TUNING, Tally, clipped_update, step_seed
from unmask.storage import checkpoint
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.files import FolderLock, atomic_write_text, building
from unmask.storage.names import resolve_model
from unmask.storage.rundir import FINE_TUNING_RUN, PRETRAINING_RUN, RunDir
from unmask.tasks.labelled import IGNORE_INDEX, Encoded, TaskData, compute_metrics, load_task, score, word_predictions


def seed_dir(out: RunDir, seed: int, seeds: list[int]) -> RunDir:
    """Where one seed's run lives: OUT itself for a single seed, OUT/seed-N for several."""
    return out if len(seeds) == 1 else out.seed(seed)


# ---------------------------------------------------------------- one batch


def targets_of(encoded: Encoded, indices: np.ndarray, width: int, regression: bool) -> torch.Tensor:
    """The targets of a batch: class ids, numbers, or tag ids per token padded with -100."""
    if regression:
        return torch.tensor([encoded.targets[i] for i in indices], dtype=torch.float32)
    if encoded.word_ids is None:
        return torch.tensor([encoded.targets[i] for i in indices], dtype=torch.long)
    result = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    for row, index in enumerate(indices):
        result[row, : len(encoded.targets[index])] = torch.tensor(encoded.targets[index])
    return result


def target_count(encoded: Encoded, indices: np.ndarray) -> int:
    """Examples, or (token classification) tokens with a target, in a batch: what its loss is a mean over."""
    if encoded.word_ids is None:
        return len(indices)
    return sum(sum(t != IGNORE_INDEX for t in encoded.targets[i]) for i in indices)


def loss_sum(logits: torch.Tensor, targets: torch.Tensor, regression: bool) -> torch.Tensor:
    """Summed loss of a batch (divide by its target count for transformers' mean): mean squared
    error for regression, cross-entropy otherwise, -100 ignored."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), targets, reduction="sum")
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def make_batch(encoded: Encoded, indices: np.ndarray, pad_id: int, regression: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    input_ids, attention_mask = padded([encoded.input_ids[i] for i in indices], pad_id)
    return input_ids, attention_mask, targets_of(encoded, indices, input_ids.shape[1], regression)


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict(
    model: nn.Module, encoded: Encoded, regression: bool, batch_size: int, device: torch.device, dtype, pad_id: int, world: World
) -> list:
    """Each example's prediction, in example order: a class id, a number, or a tag id per token.

    Batches are dealt out to the processes (longest first) and the predictions gathered.
    """
    was_training = model.training
    model.eval()
    mine: list[tuple[int, object]] = []
    for indices in sorted_batches(encoded.lengths(), batch_size)[world.rank :: world.size]:
        input_ids, attention_mask, _ = make_batch(encoded, indices, pad_id, regression)
        with autocast(device, dtype):
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits.float().cpu()
        for row, index in enumerate(indices.tolist()):
            if regression:
                mine.append((index, float(logits[row, 0])))
            elif encoded.word_ids is None:
                mine.append((index, int(logits[row].argmax())))
            else:
                mine.append((index, logits[row, : len(encoded.input_ids[index])].argmax(-1).tolist()))
    model.train(was_training)
    found = dict(distributed.gather_objects(mine, world))
    return [found[i] for i in range(len(encoded.input_ids))]


def evaluate(model, task: TaskData, config: FinetuneConfig, device, dtype, pad_id: int, world: World) -> dict:
    """Every metric of every evaluation split, and their mean over the splits (MNLI's m and mm)."""
    per_split = {}
    for name, (examples, encoded) in task.evals.items():
        predictions = predict(model, encoded, task.spec.is_regression, config.eval_batch_size, device, dtype, pad_id, world)
        references = examples.labels if task.spec.is_regression else None
        if task.spec.is_tokens:
            predictions = word_predictions(encoded, predictions, examples, task.fill)
            references = [[task.labels.id_of(t) for t in tags] for tags in examples.labels]
        elif references is None:
            references = [task.labels.id_of(v) for v in examples.labels]
        per_split[name] = compute_metrics(task.spec, predictions, references, task.labels)
    names = list(next(iter(per_split.values())))
    mean = {n: float(np.mean([m[n] for m in per_split.values()])) for n in names}
    return {"metrics": mean, "splits": per_split} if len(per_split) > 1 else {"metrics": mean}


# ---------------------------------------------------------------- one seed


@dataclass
class Fit:
    """One seed's fine-tuning, built by `_setup_fit`."""

    run: RunDir
    seed: int
    model: nn.Module
    """What the step calls: the model, or DDP around it."""
    inner: nn.Module
    optimizer: torch.optim.Optimizer
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    metrics: MetricsLog
    tally: Tally
    """The steps since the last settle, as pretraining keeps them, and the run's dropped steps."""
    step: int = 0
    spent: float = 0.0

    def batch_indices(self, task: TaskData, config: FinetuneConfig, world: World) -> np.ndarray:
        """The global batch of this step (every process takes its share of it)."""
        epoch, position = divmod(self.step, self.steps_per_epoch)
        lengths = task.train_encoded.lengths()
        size = config.batch_size * world.size
        if config.group_by_length:
            batches = length_grouped_batches(lengths, size, self.seed, epoch)
        else:
            order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(lengths))
            batches = [order[i : i + size] for i in range(0, len(order), size)]
        return batches[position]


def _steps_per_epoch(examples: int, config: FinetuneConfig, world: World) -> int:
    return -(-examples // (config.batch_size * world.size))


def _restore(run: RunDir, seed: int, model: nn.Module, optimizer: torch.optim.Optimizer, echo) -> CheckpointInfo | None:
    """Load the seed's newest checkpoint that verifies into the model and optimizer; its record, or None."""
    latest = checkpoint.latest_checkpoint(run, warn=echo)
    if latest is None:
        return None
    saved = checkpoint.read_checkpoint(latest)
    load_module_state(model, optimizer, saved, latest)
    echo(f"seed {seed}: resumed from {latest} at step {saved.info.step}")
    return saved.info


def _setup_fit(config: FinetuneConfig, task: TaskData, source, run: RunDir, seed: int, world: World, device, dtype, echo) -> Fit:
    labels = None if task.spec.is_regression else task.labels.id2label
    model = load_task_model(
        source, tokens=task.spec.is_tokens, labels=labels, seed=seed, trust_remote_code=config.trust_remote_code, echo=echo
    )
    if config.dropout is not None:
        set_dropout(model, config.dropout)
    attention, why = attention_of(config.attention, device, model, config.dropout, dtype, config.deterministic)
    switch_attention(model, attention)
    if seed == config.seed:
        echo(why)
    model.to(device).train()
    wrapped = distributed.parallelize(model, "ddp" if world.distributed else "none", device, dtype)
    optimizer = adamw(
        decay_groups(model.named_parameters(), config.weight_decay), config.lr, (config.beta1, config.beta2), config.adam_eps, device
    )
    per_epoch = _steps_per_epoch(len(task.train), config, world)
    total = max(1, math.ceil(config.epochs * per_epoch))
    resumed = (_restore(run, seed, model, optimizer, echo) if config.resume else None) or CheckpointInfo(step=0)
    if world.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
    metrics_log = MetricsLog(run, resume_step=resumed.step, enabled=world.is_main)
    return Fit(
        run,
        seed,
        wrapped,
        model,
        optimizer,
        per_epoch,
        total,
        int(config.warmup_fraction * total),
        metrics_log,
        Tally(device, resumed.skipped_steps),
        resumed.step,
        resumed.train_seconds,
    )


def _fit(
    config: FinetuneConfig,
    task: TaskData,
    source,
    run: RunDir,
    seed: int,
    world: World,
    device,
    pad_id: int,
    tokenizer,
    echo,
    progress: bool,
) -> dict:
    """Fine-tune one seed to the end; returns its result (also saved as RUN/result.json)."""
    dtype = choose_precision(device, config.precision).dtype
    fit = _setup_fit(config, task, source, run, seed, world, device, dtype, echo)
    max_norm = config.clip_grad_norm if config.clip_grad_norm > 0 else float("inf")
    checkpoint_every = config.checkpoint_every or fit.steps_per_epoch
    display = Progress(
        config.progress if progress else "none", fit.total_steps, fit.step, echo, enabled=world.is_main, rate=("examples_per_s", "ex/s")
    )
    pace = Throughput(world.size)  # examples a second of training time: evaluation and checkpoints are paused out
    evaluations = []
    while fit.step < fit.total_steps:
        lr, examples = _fit_step(fit, task, config, seed, world, device, dtype, pad_id, max_norm)
        pace.add(examples)

        logged = None
        epoch_end = fit.step % fit.steps_per_epoch == 0 and fit.step < fit.total_steps
        due_checkpoint = fit.step % checkpoint_every == 0 and fit.step < fit.total_steps
        # Every settle writes its line (as pretraining's does): a settle starts a new window.
        due_log = fit.step % config.log_every == 0 or fit.step == fit.total_steps or epoch_end or due_checkpoint
        if due_log:
            settled = _settle_or_stop(fit, config)
            logged = {"seed": seed, "step": fit.step, **settled, "lr": lr, "examples_per_s": pace.rate_and_restart()}
            fit.metrics.write({**logged, "epoch": fit.step / fit.steps_per_epoch})
        display.step(fit.step, logged)
        with pace.paused():
            if config.eval_every_epoch and epoch_end:
                result = evaluate(fit.inner, task, config, device, dtype, pad_id, world)
                evaluations.append({"step": fit.step, **result["metrics"]})
                fit.metrics.write({"seed": seed, "step": fit.step, **{f"eval_{k}": v for k, v in result["metrics"].items()}})
            if due_checkpoint:
                _checkpoint(fit, config, world, device)
    display.close()
    return _fit_result(fit, task, config, seed, world, device, dtype, pad_id, run, tokenizer, evaluations)


def _fit_step(
    fit: Fit, task: TaskData, config: FinetuneConfig, seed: int, world: World, device, dtype, pad_id: int, max_norm: float
) -> tuple[float, int]:
    """One step: the learning rate set, dropout reseeded from (seed, step, rank),
    this process's share of the global batch forward and backward, the update clipped and
    taken (dropped on the device where the loss or the gradient norm is not finite) and
    tallied, as a pretraining step is. Nothing here waits for the device. Returns the learning
    rate and the examples of the global batch."""
    began = time.perf_counter()
    lr = learning_rate(fit.step, fit.total_steps, fit.warmup_steps, config.lr, "linear")
    set_learning_rate(fit.optimizer, lr)
    torch.manual_seed(step_seed(seed, fit.step, world.rank, FINE_TUNING))
    regression = task.spec.is_regression
    # The global batch, this process's share of it, and the count the loss is a mean over.
    indices = fit.batch_indices(task, config, world)
    count = max(target_count(task.train_encoded, indices), 1)
    share = indices[world.rank :: world.size]
    weight = 1.0 if len(share) else 0.0  # a process with no example this step still joins DDP's reduction
    input_ids, attention_mask, targets = make_batch(task.train_encoded, share if len(share) else indices[:1], pad_id, regression)
    mask = prepared_attention_mask(fit.inner, attention_mask)
    with autocast(device, dtype):
        logits = fit.model(input_ids=input_ids.to(device), attention_mask=None if mask is None else mask.to(device)).logits
    loss = loss_sum(logits, targets.to(device), regression) * weight
    (loss * world.size / count).backward()  # DDP averages gradients over processes
    mean_loss = distributed.sum_on_device(loss.detach(), world, device) / count  # the step's loss over every process's targets
    norm, bad = clipped_update(fit.optimizer, fit.inner.parameters(), max_norm, mean_loss)
    fit.tally.add(fit.step, mean_loss.to(torch.float64), norm.detach().to(torch.float64), bad.to(torch.float64))
    fit.step += 1
    fit.spent += time.perf_counter() - began
    return lr, len(indices)


def _settle_or_stop(fit: Fit, config: FinetuneConfig) -> dict:
    """The one wait for the device (a log line, an evaluation, a checkpoint or the end):
    `Tally.settle` with the non-finite rule (the same on every process: the step's loss is
    summed over them and DDP shares the gradients, so their norms). The log line's numbers."""
    return fit.tally.settle(config.on_nonfinite, config.max_nonfinite, "no model written", where=f"seed {fit.seed}, ")


def _fit_result(
    fit: Fit,
    task: TaskData,
    config: FinetuneConfig,
    seed: int,
    world: World,
    device,
    dtype,
    pad_id: int,
    run: RunDir,
    tokenizer,
    evaluations: list,
) -> dict:
    """The final evaluation, the seed's record (RUN/result.json) and, if asked, the model."""
    result = evaluate(fit.inner, task, config, device, dtype, pad_id, world)
    fit.metrics.write({"seed": seed, "step": fit.step, **{f"eval_{k}": v for k, v in result["metrics"].items()}})
    record = {
        "seed": seed,
        "steps": fit.step,
        "train_seconds": fit.spent,
        "examples_per_s": fit.step and len(task.train) * fit.step / fit.steps_per_epoch / max(fit.spent, 1e-9),
        **result,
    }
    if evaluations:
        record["per_epoch"] = evaluations
    if world.is_main:
        if config.save_model:
            with building(run.model, "the fine-tuned model") as folder:
                fit.inner.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
        atomic_write_text(run.result, json.dumps(record, indent=2))
    distributed.barrier(world)
    fit.metrics.close()
    return record


def _checkpoint(fit: Fit, config: FinetuneConfig, world: World, device) -> None:
    info = CheckpointInfo(
        step=fit.step,
        train_seconds=fit.spent,
        skipped_steps=fit.tally.skipped,
        device_type=device.type,
        world_size=world.size,
        global_batch=config.batch_size * world.size,
        strategy="ddp" if world.distributed else "none",
        extra={"seed": fit.seed},
    )
    write_checkpoint(fit.run, info, fit.inner, fit.optimizer, world, keep=1)


# ---------------------------------------------------------------- all seeds


def spread(values: list[float]) -> dict:
    """Median, mean, standard deviation (0 for one value), min and max."""
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(config: FinetuneConfig, task: TaskData, results: list[dict], source) -> dict:
    names = list(results[0]["metrics"])
    metrics = {n: spread([r["metrics"][n] for r in results]) for n in names}
    return {
        "task": task.spec.kind,
        "model": config.model,
        "step": source.step,
        "score_metric": task.spec.metrics[0],
        "score": metrics[task.spec.metrics[0]]["median"],
        "metrics": metrics,
        "seeds": results,
        "labels": list(task.labels.names) if task.labels else None,
        "train_examples": len(task.train),
        "eval_examples": {name: len(x) for name, (x, _) in task.evals.items()},
        "examples_per_s": statistics.median(r["examples_per_s"] for r in results),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _check_out(out: RunDir, config: FinetuneConfig) -> None:
    if out.path.exists() and not out.path.is_dir():
        raise UnmaskError(f"--out {out.path}: is a file, not a folder")
    started = out.config.is_file()
    kind = out.kind()
    if started and kind != FINE_TUNING_RUN:
        what = "a pretraining run (`unmask train`)" if kind == PRETRAINING_RUN else f"a {out.config.name} that is not a fine-tuning's"
        raise UnmaskError(
            f"--out {out.path}: holds {what}; fine-tuning writes a folder of its own: choose another --out (a new folder, e.g. {out.path}-finetuned)"
        )
    if started and not config.resume:
        raise UnmaskError(
            f"{option('out', str(out.path))}: already holds a fine-tuning (pass {option('resume')} to continue it, or choose another {setting('out')})"
        )
    if started:
        changed = refused_resume_changes(to_dict(load_yaml(FinetuneConfig, out.config)), to_dict(config), FINETUNE_RESUMABLE)
        if changed:
            raise UnmaskError(f"--resume: settings differ from {out.config}: {', '.join(changed)}")


def finetune(config: FinetuneConfig, echo: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Fine-tune `config.model` on the task, once per seed; returns the summary (also OUT/summary.json)."""
    if config.deterministic:
        make_deterministic()
    world, device = distributed.join(config.device)
    refuse_unavailable(config.attention, device)
    echo = echo if world.is_main else (lambda _: None)
    out = RunDir(Path(config.out))
    if world.is_main:
        _check_out(out, config)
    # The data is read and checked before anything is written: bad input leaves no folder behind.
    source = resolve_model(config.model, config.step)
    tokenizer = load_tokenizer(source, config.trust_remote_code)
    task = load_task(config, tokenizer, echo)
    lock = FolderLock(out.lock, "unmask finetune") if world.is_main else None
    if lock is not None:
        lock.acquire()
    try:
        if world.is_main:
            out.path.mkdir(parents=True, exist_ok=True)
            save_yaml(dataclasses.replace(config, resume=False), out.config)  # what the run is, not how it was last launched
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        seeds = list(range(config.seed, config.seed + config.seeds))
        echo(
            f"fine-tuning '{config.model}'{f' (step {source.step})' if source.step is not None else ''} for {task.spec.kind}: "
            f"{len(task.train):,} training examples, {', '.join(f'{len(x):,} {n}' for n, (x, _) in task.evals.items())}, "
            f"{config.epochs:g} epoch(s), {len(seeds)} seed(s), on {device}"
        )
        echo(f"precision: {choose_precision(device, config.precision).reason}")
        results = []
        for seed in seeds:
            run = seed_dir(out, seed, seeds)
            done = run.result
            if done.is_file():
                results.append(json.loads(done.read_text(encoding="utf-8")))
                echo(f"seed {seed}: already done ({task.spec.metrics[0]} {score(task.spec, results[-1]['metrics']):.4f})")
                continue
            results.append(_fit(config, task, source, run, seed, world, device, pad_id, tokenizer, echo, progress))
            echo(f"seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in results[-1]["metrics"].items()))
        summary = summarize(config, task, results, source)
        if world.is_main:
            atomic_write_text(out.summary, json.dumps(summary, indent=2))
    except BaseException:
        if lock is not None:
            lock.release_after_failed_start()
        raise
    if lock is not None:
        lock.release()
    return summary
