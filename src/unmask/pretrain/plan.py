"""How big and how fast a run will be, before it runs: `unmask train ... --plan`.

Every run prints the estimate part at its start (`estimate_lines`): parameters, tokens and
model FLOPs per step, the memory a process will need. `--plan` then measures a few real steps
of the same run, in a scratch folder that is deleted afterwards (the run's --out is never
touched), and prints what they showed: peak memory against the estimate, tokens/s, MFU, and
the time to the end of the run.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unmask.config import TrainConfig
from unmask.errors import UnmaskError
from unmask.models.flops import TRAINING_PASSES, Shape
from unmask.pretrain.step import Run
from unmask.runtime.hardware import memory_in_use, peak_memory, reset_peak_memory
from unmask.runtime.preemption import StepDropped
from unmask.runtime.progress import Throughput, format_duration
from unmask.storage.files import readable_size

WARMUP_STEPS = 2
"""Plan steps not timed: the first pays for allocation, kernel choice and the optimizer's state."""
MEASURED_STEPS = 5
"""Plan steps timed for tokens/s and MFU."""

AUTOCAST_ACTIVATION_SCALE = 1.5
"""Activations under bf16 autocast against the all-16-bit count: the matrix products' outputs
are bf16, but autocast keeps layer norms, softmax and the residual sums in fp32."""
OPTIMIZER_BYTES = 16 + 8
"""fp32 weights, gradients and AdamW's two moments, 4 bytes each a parameter; and 8 more a
parameter at the step's height: the foreach AdamW's temporaries, autocast's 16-bit weight
copies, a tied embedding's second gradient before the two are summed."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one process needs to train: what lasts the whole run and what a micro-batch adds."""

    state: int
    """Weights, gradients, optimizer state and the update's temporaries (this process's shard under FSDP)."""
    activations: int
    """What a micro-batch keeps for the backward pass."""
    head: int
    """The MLM head's logits at the masked positions, their fp32 copy, log-softmax and gradient."""

    @property
    def total(self) -> int:
        return self.state + self.activations + self.head


def estimate_memory(run: Run) -> MemoryEstimate:
    """Korthikanti et al.'s (2022) activation count per layer and token (34 bytes a hidden unit
    at 16 bits, fp32 twice that, bf16 autocast `AUTOCAST_ACTIVATION_SCALE` times) plus 5 bytes a head and key pair where attention scores are
    materialised (CPU training's attention with dropout, eager attention); the state at
    `OPTIMIZER_BYTES` a parameter; the head's (N, V) logits at about 14 bytes an entry with bf16 autocast,
    12 in fp32."""
    c, config = run.config, run.lm.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 1)
    scale = AUTOCAST_ACTIVATION_SCALE if run.dtype is not None else 2
    materialised = config._attn_implementation == "eager" or (
        run.device.type == "cpu" and run.lm.architecture is not None and run.lm.architecture.plain_attention
    )
    per_window = layers * c.seq_len * hidden * 34 * scale + (layers * 5 * heads * c.seq_len**2 * scale if materialised else 0)
    if c.activation_checkpointing:  # each layer's input is kept, one layer's activations at a time are remade
        per_window = per_window / max(layers, 1) + layers * c.seq_len * hidden * 2 * scale
    if not c.attention_across_docs:  # the (T, T) mask of which documents see which
        per_window += c.seq_len * c.seq_len
    parameters = sum(p.numel() for p in run.lm.parameters())
    shards = run.world.size if run.strategy == "fsdp" else 1
    picked = c.mask_prob * c.batch_size * c.seq_len
    return MemoryEstimate(
        state=OPTIMIZER_BYTES * parameters // shards,
        activations=int(per_window * c.batch_size),
        head=int(picked * config.vocab_size * (14 if run.dtype is not None else 12)),
    )


SPEED_KEYS = ("tokens_per_s", "tokens_per_s_per_device", "flops_per_token", "mfu", "data_wait", "padding")


def speed_means(records: list[dict]) -> dict:
    """summary.json's view of the run's speed: the mean of each speed number over its log
    lines (`mean_mfu`, ...) and the highest memory any line saw (`peak_memory_gib`)."""
    lines = [r for r in records if "tokens_per_s" in r]
    means = {}
    for key in SPEED_KEYS:
        values = [r[key] for r in lines if isinstance(r.get(key), (int, float))]
        means[f"mean_{key}"] = sum(values) / len(values) if values else None
    memory = [r["memory_gib"] for r in lines if isinstance(r.get("memory_gib"), (int, float))]
    return {**means, "peak_memory_gib": max(memory) if memory else None}


def nominal_step_flops(run: Run) -> float:
    """Model FLOPs of a step of full windows with --mask-prob of their tokens masked."""
    c = run.config
    windows = run.global_batch
    shape = Shape(np.full(windows, c.seq_len), int(c.mask_prob * windows * (c.seq_len - 2)))
    return TRAINING_PASSES * run.lm.forward_flops(shape)


def estimate_lines(run: Run) -> list[str]:
    """The plan before any step: what the run is, per step and per process."""
    parameters = sum(p.numel() for p in run.lm.parameters())
    memory = estimate_memory(run)
    tokens = run.global_batch * run.config.seq_len
    flops = nominal_step_flops(run)
    return [
        f"plan: {parameters / 1e6:.1f}M parameters; a step of {tokens:,} tokens takes about {flops / 1e12:.3g} TFLOPs "
        f"({flops / tokens / 1e6:.1f} MFLOPs a token, backward counted twice)",
        f"plan: memory per process about {readable_size(memory.total)}: {readable_size(memory.state)} of weights, gradients and "
        f"optimizer state, {readable_size(memory.activations)} of activations a micro-batch of {run.config.batch_size} "
        f"(a window of {run.config.seq_len:,} tokens keeps {readable_size(memory.activations // run.config.batch_size)}), "
        f"{readable_size(memory.head)} for the head's logits",
        f"plan: MFU against {run.peak.source}",
    ]


def time_to_end(run: Run, seconds_per_step: float, start: int = 0) -> str:
    """How long the rest of the run takes at this pace (training time only)."""
    c = run.config
    if run.total_steps is not None:
        left = run.total_steps - start
        goal = f"--max-tokens {c.max_tokens:,}" if c.max_tokens and run.total_steps * run.global_batch * c.seq_len >= c.max_tokens else ""
        goal = goal or (f"--max-steps {c.max_steps:,}" if c.max_steps == run.total_steps else f"{run.total_steps:,} steps")
        line = f"{left:,} steps to {goal}: about {format_duration(left * seconds_per_step)} of training"
        if run.budget is not None and left * seconds_per_step > run.budget:
            line += f" (--time-budget {c.time_budget} ends it first)"
        return line
    steps = int(run.budget / seconds_per_step)
    return f"--time-budget {c.time_budget}: about {steps:,} steps, {steps * run.global_batch * c.seq_len:,} tokens"


def measured_lines(run: Run, measured: dict, memory_peak: int, estimate: MemoryEstimate, seconds_per_step: float) -> list[str]:
    """What measured steps showed, against the estimate."""
    off = memory_peak / max(estimate.total, 1) - 1
    mfu = f", MFU {measured['mfu']:.1%}" if measured.get("mfu") is not None else ""
    return [
        f"plan: peak memory {readable_size(memory_peak)} measured, {readable_size(estimate.total)} estimated ({off:+.0%})",
        f"plan: {measured['tokens_per_s']:,.0f} tokens/s ({measured['tokens_per_s_per_device']:,.0f} per device){mfu}, "
        f"{seconds_per_step:.3g} s a step, {measured['data_wait']:.0%} of it waiting for data"
        + (f", {measured['padding']:.0%} of window positions padding" if measured["padding"] else ""),
        f"plan: {time_to_end(run, seconds_per_step)} (evaluation and checkpoints not counted)",
    ]


def tensor_bytes(run: Run) -> int:
    """Bytes of the weights, gradients and optimizer state a step holds at once. Gradients
    freed after the last update count too: each step makes them again, in memory the CPU's
    allocator kept from the step before (so resident memory alone would not show them)."""
    parameters = list(run.lm.parameters())
    tensors = parameters + [p.grad for p in parameters if p.grad is not None]
    tensors += [t for state in run.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    local = [getattr(t, "to_local", lambda t=t: t)() for t in {id(t): t for t in tensors}.values()]  # FSDP2: this process's shard
    freed = sum(p.numel() * p.element_size() for p in local[: len(parameters)] if p.requires_grad) - sum(
        p.grad.numel() * p.grad.element_size() for p in parameters if p.grad is not None
    )
    # On a GPU the allocator's peak sees the gradients made again; a CPU's resident memory does not.
    return sum(t.numel() * t.element_size() for t in local) + (max(0, freed) if run.device.type == "cpu" else 0)


def measure_plan(config: TrainConfig, setup: Callable[..., Run], echo: Callable[[str], None] = print) -> dict:
    """Set the run up with `setup` (`train.setup`) in a scratch folder, run WARMUP_STEPS +
    MEASURED_STEPS steps, print and return the plan; nothing is written to --out."""
    from unmask.runtime import distributed
    from unmask.runtime.preemption import StopSignals

    with tempfile.TemporaryDirectory(prefix="unmask-plan-") as scratch:
        trial = dataclasses.replace(
            config, out=str(Path(scratch) / "run"), resume=False, plan=False, report_to=[], downstream=None, downstream_every=0
        )
        run = setup(trial, echo)
        run.config = dataclasses.replace(run.config, out=config.out)
        try:
            estimate = estimate_memory(run)
            speed = Throughput(run.world.size, run.peak.flops)
            with StopSignals(announce=run.world.is_main, launcher_death=distributed.launched_by_torchrun()) as signals:
                for number in range(WARMUP_STEPS + MEASURED_STEPS):
                    if number == WARMUP_STEPS:
                        # Measured from here: what the warm-up left (weights, optimizer state, the
                        # runtime's code and caches) is in use; the steps' peak over it is theirs.
                        run.settle()
                        kept, baseline = tensor_bytes(run), memory_in_use(run.device)
                        reset_peak_memory(run.device)
                        speed, started = Throughput(run.world.size, run.peak.flops), time.perf_counter()
                    run.begin_step()
                    drawn = run.draw_step(signals)
                    run.update(run.forward_backward(drawn, signals))
                    run.finish_step(drawn, signals)
                measured = speed.measure(run.settle())
                seconds_per_step = (time.perf_counter() - started) / MEASURED_STEPS
            memory_peak = kept + max(0, peak_memory(run.device) - baseline)
            for line in measured_lines(run, measured, memory_peak, estimate, seconds_per_step):
                echo(line)
        except StepDropped:
            raise UnmaskError("--plan: stopped by a signal before its steps were measured") from None
        finally:
            run.metrics.close()
            if run.lock is not None:
                run.lock.release()
    to_end = run.total_steps * seconds_per_step if run.total_steps is not None else None
    if run.budget is not None:
        to_end = min(to_end, run.budget) if to_end is not None else run.budget
    return {
        "parameters": sum(p.numel() for p in run.lm.parameters()),
        "tokens_per_step": run.global_batch * config.seq_len,
        "flops_per_step": nominal_step_flops(run),
        "memory_estimate": estimate.total,
        "memory_measured": memory_peak,
        "tokens_per_s": measured["tokens_per_s"],
        "tokens_per_s_per_device": measured["tokens_per_s_per_device"],
        "mfu": measured["mfu"],
        "data_wait": measured["data_wait"],
        "padding": measured["padding"],
        "seconds_per_step": seconds_per_step,
        "total_steps": run.total_steps,
        "seconds_to_end": to_end,
        "peak_tflops": run.peak.flops / 1e12,
        "peak_source": run.peak.source,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
