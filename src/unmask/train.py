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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from unmask import checkpoint, distributed
from unmask.config import TrainConfig, UnmaskError, load_yaml, refused_resume_changes, save_yaml, to_dict
from unmask.data.store import TokenStore
from unmask.data.windows import DataPosition, WindowSampler, Windows, rank_share
from unmask.distributed import World
from unmask.evaluate import evaluate_model
from unmask.files import atomic_write_text, building_path, publish_folder, remove_tree
from unmask.masking import IGNORE_INDEX, MaskedBatch, Masker, mix32
from unmask.model import MaskedLM, autocast, autocast_dtype, build_mlm, load_mlm, max_positions, set_dropout
from unmask.preemption import StopSignals, Stopped
from unmask.progress import MetricsLog, Progress, Throughput
from unmask.schedule import learning_rate, learning_rate_at, mask_rate, run_progress
from unmask.tokenizer import Vocabulary, load_tokenizer

_HF_PREFIX = "model."  # MaskedLM keeps the transformers model as `.model`


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
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    step: int = 0
    spent: float = 0.0
    """Seconds spent training (evaluation and checkpoints not counted), agreed by all processes."""
    last_mask_prob: float = 0.0
    """The masking rate the schedule gave the last step drawn."""

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

    def full_state(self, with_optimizer: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
        """Unsharded model weights (Hugging Face names, tied aliases once) and optimizer state by
        name; under FSDP every process must call this (it gathers), and only rank 0 gets them."""
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = _strip(get_model_state_dict(self.lm, options=options))
            named = get_optimizer_state_dict(self.lm, self.optimizer, options=options) if with_optimizer else {}
            if named:
                named = {"state": _strip(named["state"]), "param_groups": [{**g, "params": list(_strip(dict.fromkeys(g["params"])))} for g in named["param_groups"]]}
        else:
            weights = self.lm.model.state_dict()
            named = checkpoint.named_optimizer_state(self.optimizer, _names(self.lm)) if with_optimizer else {}
        return {k: v for k, v in weights.items() if k not in self.tied_aliases}, named

    def save_checkpoint(self) -> Path:
        weights, named = self.full_state()
        path = self.out / "checkpoints" / f"step-{self.step:08d}"
        if self.world.is_main:
            info = {
                "device_type": self.device.type, "world_size": self.world.size, "global_batch": self.global_batch,
                "strategy": self.strategy, "train_seconds": self.spent,
            }  # fmt: skip
            path = checkpoint.save_checkpoint(
                self.out, self.step, weights, named, asdict(self.sampler.position), info, keep=self.config.keep_checkpoints
            )
        distributed.barrier(self.world)
        return path

    def load_checkpoint(self, saved: checkpoint.Checkpoint) -> None:
        weights = dict(saved.model)
        for alias, name in self.tied_aliases.items():
            if alias not in weights and name in weights:
                weights[alias] = weights[name]
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            options = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.lm, {_HF_PREFIX + k: v for k, v in weights.items()}, options=options)
            prefixed = {
                "state": {_HF_PREFIX + k: v for k, v in saved.optimizer["state"].items()},
                "param_groups": [{**g, "params": [_HF_PREFIX + n for n in g["params"]]} for g in saved.optimizer["param_groups"]],
            }
            set_optimizer_state_dict(self.lm, self.optimizer, prefixed, options=options)
        else:
            try:
                self.lm.model.load_state_dict(weights, strict=True)
            except RuntimeError as e:
                raise UnmaskError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
            self.optimizer.load_state_dict(checkpoint.indexed_optimizer_state(saved.optimizer, self.optimizer, _names(self.lm)))


def _total_norm(norm: torch.Tensor) -> float:
    """A gradient norm as a number (under FSDP it is a replicated DTensor)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def _names(lm: MaskedLM) -> dict[int, str]:
    return {id(p): name for name, p in lm.model.named_parameters()}


def _strip(state: dict) -> dict:
    return {(k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k): v for k, v in state.items()}


def _check_run_dir(out: Path, config: TrainConfig) -> None:
    saved = out / "config.yaml"
    if not config.resume:
        if saved.exists() or (out / "checkpoints").exists():
            raise UnmaskError(f"--out {out}: already holds a run (pass --resume to continue it, or choose another --out)")
        return
    if saved.exists():
        changed = refused_resume_changes(to_dict(load_yaml(TrainConfig, saved)), to_dict(config))
        if changed:
            raise UnmaskError(f"--resume: settings differ from {saved}: {', '.join(changed)}")


def _load_model_and_tokenizer(config: TrainConfig, store: TokenStore, vocab: Vocabulary, echo: Callable[[str], None]):
    if config.model is not None:
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


def _restore(run: Run, echo: Callable[[str], None]) -> None:
    """Continue from the newest checkpoint that verifies (rank 0 checks, everyone loads it)."""
    latest = checkpoint.latest_checkpoint(run.out, warn=echo) if run.world.is_main else None
    step, = distributed.max_across([float(int(latest.name.split("-")[1]) if latest else -1)], run.world, run.device)
    if step < 0:
        echo(f"note: no checkpoint in {run.out}; starting from step 0")
        return
    path = run.out / "checkpoints" / f"step-{int(step):08d}"
    names = _names(run.lm)
    saved = checkpoint.read_checkpoint(path, [names[id(p)] for group in run.optimizer.param_groups for p in group["params"]])
    trained_on = saved.info.get("device_type", run.device.type)
    if trained_on != run.device.type:
        raise UnmaskError(
            f"--resume: {path} was trained on {trained_on}, this run would continue on {run.device.type}; "
            f"its precision lives on the device, so continue on {trained_on} (--device {trained_on})"
        )
    was = saved.info.get("global_batch", run.global_batch)
    if was != run.global_batch:
        raise UnmaskError(
            f"--resume: {path} trained on {was} windows a step (batch-size x grad-accum x processes), this run would take "
            f"{run.global_batch}; keep the global batch, e.g. --grad-accum {max(1, was // (run.config.batch_size * run.world.size))} "
            f"with --batch-size {run.config.batch_size} on {run.world.size} process(es)"
        )
    run.load_checkpoint(saved)
    run.step = saved.step
    run.spent = float(saved.info.get("train_seconds", 0.0))
    run.sampler.position = DataPosition(**saved.data)
    echo(f"resumed from {path} at step {run.step}")


def setup(config: TrainConfig, echo: Callable[[str], None] = print) -> Run:
    """Join the process group, check the run folder, load the data and the model, wrap it,
    build the optimizer and the sampler, and restore the newest checkpoint when resuming."""
    world, device = distributed.join(config.device)
    echo = echo if world.is_main else (lambda _: None)
    out = Path(config.out)
    _check_run_dir(out, config)
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
        _restore(run, echo)
    distributed.barrier(world)  # every process has checked the folder before rank 0 writes into it
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_base(lm, tokenizer, out / BASE_DIR)
        save_yaml(config, out / "config.yaml")
    run.metrics = MetricsLog(out / "metrics.jsonl", resume_step=run.step, enabled=world.is_main)
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
    run.clock = clock
    lm, model, optimizer, device = run.lm, run.model, run.optimizer, run.device
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
            if not (math.isfinite(train_loss) and math.isfinite(grad_norm)):
                raise UnmaskError(
                    f"step {run.step + 1}: training loss is {train_loss}, gradient norm {grad_norm}; stopped before applying it "
                    f"(checkpoints so far are intact). Try a lower --lr or --precision fp32"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.step += 1
            stop_signal = run.end_step(clock() - began, signals)

            speed.add(counts.tokens)
            logged = None
            if run.step % config.log_every == 0 or run.finished():
                logged = {"step": run.step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm, "mask_rate": counts.picked / max(counts.maskable, 1),
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


BASE_DIR = "base"


def save_base(lm: MaskedLM, tokenizer, target: Path) -> None:
    """The model's config.json and tokenizer, without weights: with any checkpoint's weights
    it makes a model folder (`unmask export`), even of a run that never finished."""
    if (target / "config.json").is_file():
        return
    building = building_path(target, "partial")
    remove_tree(building)
    try:
        lm.model.config.save_pretrained(building)
        tokenizer.save_pretrained(building)
        publish_folder(building, target)
    except BaseException:
        remove_tree(building)
        raise


def export_checkpoint(run_dir: Path, out: Path, step: int | None = None, echo: Callable[[str], None] = print) -> Path:
    """Write the save_pretrained folder of a complete checkpoint of `run_dir` to `out`."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if out.exists():
        raise UnmaskError(f"--out {out}: already exists; choose a new folder")
    base = run_dir / BASE_DIR
    if not (base / "config.json").is_file():
        raise UnmaskError(f"{run_dir}: not a run folder unmask can export from (no {BASE_DIR}/config.json)")
    if step is None:
        path = checkpoint.latest_checkpoint(run_dir, warn=echo)
        if path is None:
            raise UnmaskError(f"{run_dir}: no complete checkpoint to export")
    else:
        path = run_dir / "checkpoints" / f"step-{step:08d}"
        if not path.is_dir():
            steps = ", ".join(str(int(p.name.split("-")[1])) for p in checkpoint.complete_step_dirs(run_dir / "checkpoints")) or "none"
            raise UnmaskError(f"--step {step}: {run_dir} has no checkpoint at that step (steps: {steps})")
        problem = checkpoint.verify(path)
        if problem:
            raise UnmaskError(f"{path}: damaged checkpoint ({problem})")
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(base))
    lm = MaskedLM(model)
    weights = load_file(str(path / checkpoint.MODEL_FILE))
    for alias, name in lm.tied_aliases().items():
        weights.setdefault(alias, weights.get(name))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UnmaskError(f"{path}: the weights do not fit {base}/config.json: {str(e).splitlines()[0]}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    building = building_path(out, "partial")
    remove_tree(building)
    try:
        model.save_pretrained(building)
        AutoTokenizer.from_pretrained(base).save_pretrained(building)
        publish_folder(building, out)
    except BaseException:
        remove_tree(building)
        raise
    return path


def save_final_model(run: Run, target: Path) -> None:
    """save_pretrained into a folder of its own, then publish it: `target` is always whole.

    Under FSDP the weights are gathered first (every process takes part; rank 0 writes).
    """
    weights = run.full_state(with_optimizer=False)[0] if run.strategy == "fsdp" else None
    if not run.world.is_main:
        return
    building = building_path(target, "partial")
    remove_tree(building)
    try:
        run.lm.model.save_pretrained(building, state_dict=weights)
        run.tokenizer.save_pretrained(building)
        publish_folder(building, target)
    except BaseException:
        remove_tree(building)
        raise


def finish(run: Run, last_eval: dict, display: Progress) -> dict:
    """Final evaluation, checkpoint, model and summary."""
    last_eval = run.evaluate(display) or last_eval
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
