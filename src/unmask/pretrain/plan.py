"""How big and how fast a run will be, before it runs: `unmask train ... --plan`.

Every run prints the estimate part at its start (`estimate_lines`): parameters, tokens and
model FLOPs per step, the memory a process will need. `--plan` then measures a few real steps
of the same run, in a scratch folder that is deleted afterwards (the run's --out is never
touched), and prints what they showed: peak memory against the estimate, tokens/s, MFU, and
the time to the end of the run.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unmask.config import TrainConfig
from unmask.errors import UnmaskError
from unmask.models.attention import UNPADDED
from unmask.models.flops import TRAINING_PASSES, Shape
from unmask.models.masked_lm import head_chunk_rows
from unmask.pretrain.step import PICKED_ROWS_MULTIPLE, Run, settle_or_stop, train_step
from unmask.runtime.hardware import TensorMemory, memory_in_use, peak_memory, reset_peak_memory
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
KEPT_BYTES = 12
"""What lasts from step to step, per parameter: fp32 weights and AdamW's two moments (the
fused AdamW step makes no temporaries, and gradients are freed after it)."""
GRADIENT_BYTES = 4
"""An fp32 gradient per parameter, made during the backward pass."""
AUTOCAST_COPY_BYTES = 2
"""bf16 autocast's copy of each weight, kept from the forward pass for the backward."""
HEAD_BYTES = 14
"""Per entry of the head's (N, V) logits as the backward pass begins: the logits, their fp32
copy or log-softmax, and their gradient (measured: 14 in bf16 and in fp32, within a byte)."""
SCORE_BYTES = 2
"""Kept per head and (query, key) pair where attention scores are materialised: measured with
`TensorMemory` on BERT shapes of 2 to 4 layers, in bf16 and fp32, where Korthikanti's 5 bytes (at
16 bits) overcounted what torch's CPU attention keeps."""
DDP_BUCKET_BYTES = 4
"""DistributedDataParallel's gradient buckets, a second fp32 copy of the gradients."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes of tensors one process holds while it trains: the larger of the two moments a
    step peaks at (measured op by op, `plan.measure_step_memory`):

    - the backward pass begins: the kept state, autocast's weight copies, every activation the
      forward pass saved and the head's logits (gradients of earlier micro-batches too);
    - the backward pass ends: the kept state, every gradient, and the tied input embedding's
      gradient made twice (from the head and from the input) before the two are summed.
    """

    state: int
    """Weights and AdamW's moments, autocast's copies, earlier micro-batches' gradients, as the
    backward pass begins (this process's shard under FSDP)."""
    activations: int
    """What a micro-batch keeps for the backward pass."""
    head: int
    """The MLM head's logits at the masked positions, their log-softmax and gradient."""
    backward_end: int
    """Everything as the backward pass ends: the state, every gradient, the tied embedding's second gradient."""

    @property
    def backward_begin(self) -> int:
        return self.state + self.activations + self.head

    @property
    def total(self) -> int:
        return max(self.backward_begin, self.backward_end)


def estimate_memory(run: Run) -> MemoryEstimate:
    """The peak of tensor memory a step reaches (see `MemoryEstimate`). Activations: Korthikanti
    et al.'s (2022) count per layer and token (34 bytes a hidden unit at 16 bits, fp32 twice
    that, bf16 autocast `AUTOCAST_ACTIVATION_SCALE` times) plus `SCORE_BYTES` a head and key pair where
    attention scores are materialised (CPU training's attention with dropout, eager attention);
    the head's (N, V) logits at `HEAD_BYTES` an entry, N padded as the step pads it (one chunk's
    worth where the head is chunked, `masked_lm.head_chunk_rows`)."""
    c, config = run.config, run.lm.config
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 1)
    scale = AUTOCAST_ACTIVATION_SCALE if run.dtype is not None else 2
    materialised = config._attn_implementation == "eager" or (
        run.device.type == "cpu" and run.lm.architecture is not None and run.lm.architecture.plain_attention
    )
    per_window = layers * c.seq_len * hidden * 34 * scale + (layers * SCORE_BYTES * heads * c.seq_len**2 if materialised else 0)
    if c.activation_checkpointing:  # each layer's input is kept, one layer's activations at a time are remade
        per_window = per_window / max(layers, 1) + layers * c.seq_len * hidden * 2 * scale
    if not c.attention_across_docs and run.lm.attention not in UNPADDED:  # the (T, T) mask of which documents see which
        per_window += c.seq_len * c.seq_len
    parameters = sum(p.numel() for p in run.lm.parameters())
    embedding = run.lm.model.get_input_embeddings().weight.numel() if run.lm.tied_aliases() else 0
    shards = run.world.size if run.strategy == "fsdp" else 1
    kept = KEPT_BYTES + (AUTOCAST_COPY_BYTES if run.dtype is not None else 0)
    kept += DDP_BUCKET_BYTES if run.world.size > 1 and run.strategy != "fsdp" else 0
    accumulating = GRADIENT_BYTES if run.config.grad_accum > 1 else 0  # an earlier micro-batch's gradients are there already
    picked = math.ceil(c.mask_prob * c.batch_size * c.seq_len / PICKED_ROWS_MULTIPLE) * PICKED_ROWS_MULTIPLE  # as the step pads them
    activations = int(per_window * c.batch_size)
    chunk = head_chunk_rows(picked, config.vocab_size)  # past the budget, one chunk's logits at a time
    head = int((chunk or picked) * config.vocab_size * HEAD_BYTES)
    return MemoryEstimate(
        state=(kept + accumulating) * parameters // shards,
        activations=activations,
        head=head,
        backward_end=((kept + GRADIENT_BYTES) * parameters + 2 * GRADIENT_BYTES * embedding) // shards,
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
        f"plan: memory per process about {readable_size(memory.total)} of tensors at its peak, as the backward pass "
        f"{'begins' if memory.backward_begin >= memory.backward_end else 'ends'}: {readable_size(memory.state)} of weights and "
        f"optimizer state, {readable_size(memory.activations)} of activations a micro-batch of {run.config.batch_size} "
        f"(a window of {run.config.seq_len:,} tokens keeps {readable_size(memory.activations // run.config.batch_size)}) and "
        f"{readable_size(memory.head)} for the head's logits as it begins; {readable_size(memory.backward_end)} with every "
        "gradient as it ends" + runtime_note(run),
        f"plan: MFU against {run.peak.source}",
    ]


def runtime_note(run: Run) -> str:
    """On a CPU, what the process holds besides its tensors (Python, torch, the libraries, the
    data's maps): the log's `mem` is the two together."""
    if run.device.type != "cpu":
        return ""
    beside = memory_in_use(run.device) - state_bytes(run)
    return f"; the process holds about {readable_size(max(beside, 0))} besides (the log's mem counts both)"


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


def measured_lines(
    run: Run, measured: dict, memory_peak: int, estimate: MemoryEstimate, seconds_per_step: float, resident: int | None = None
) -> list[str]:
    """What measured steps showed, against the estimate."""
    off = memory_peak / max(estimate.total, 1) - 1
    mfu = f", MFU {measured['mfu']:.1%}" if measured.get("mfu") is not None else ""
    process = f"; the process's resident peak {readable_size(resident)}" if resident else ""
    return [
        f"plan: peak tensor memory {readable_size(memory_peak)} measured, {readable_size(estimate.total)} estimated ({off:+.0%}){process}",
        f"plan: {measured['tokens_per_s']:,.0f} tokens/s ({measured['tokens_per_s_per_device']:,.0f} per device){mfu}, "
        f"{seconds_per_step:.3g} s a step, {measured['data_wait']:.0%} of it waiting for data"
        + (f", {measured['padding']:.0%} of window positions padding" if measured["padding"] else ""),
        f"plan: {time_to_end(run, seconds_per_step)} (evaluation and checkpoints not counted)",
    ]


def state_tensors(run: Run) -> list[torch.Tensor]:
    """The tensors that last from step to step: weights, gradients kept, optimizer state, the
    model's buffers (this process's shard under FSDP2)."""
    parameters = list(run.lm.parameters())
    tensors = parameters + [p.grad for p in parameters if p.grad is not None]
    tensors += [t for state in run.optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
    tensors += list(run.lm.buffers())
    return [getattr(t, "to_local", lambda t=t: t)() for t in {id(t): t for t in tensors}.values()]


def state_bytes(run: Run) -> int:
    """Bytes of `state_tensors`."""
    return sum(t.numel() * t.element_size() for t in state_tensors(run))


def measure_step_memory(run: Run, step: Callable[[], None]) -> int:
    """Peak bytes of tensors during one step: CUDA's allocator peak on a GPU; elsewhere counted
    op by op (`TensorMemory`), since a CPU's resident memory hides what its allocator reuses.
    Under FSDP2 on a CPU the ops see sharded tensors torch's dispatch unwraps first, so the
    process's resident peak over the step, plus the state in use, stands in (a lower bound)."""
    if run.device.type == "cuda":
        reset_peak_memory(run.device)
        step()
        return peak_memory(run.device)
    if run.strategy == "fsdp":
        kept, baseline = state_bytes(run), memory_in_use(run.device)
        reset_peak_memory(run.device)
        step()
        return kept + max(0, peak_memory(run.device) - baseline)
    with TensorMemory(state_tensors(run)) as memory:
        step()
    return memory.peak


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
            with StopSignals(announce=run.world.is_main, launcher_death=distributed.launched_by_torchrun()) as signals:

                def step():
                    train_step(run, signals)

                for _ in range(WARMUP_STEPS):
                    step()
                # One step on its own for memory: what the warm-up left (weights, optimizer state)
                # is in use; the step's peak over it is its own.
                settle_or_stop(run)
                reset_peak_memory(run.device)
                memory_peak = measure_step_memory(run, step)
                reset_peak_memory(run.device)
                speed, started = Throughput(run.world.size, run.peak.flops, remeasure=run.peak_past), time.perf_counter()
                for _ in range(MEASURED_STEPS):
                    step()
                measured = speed.measure(settle_or_stop(run))
                seconds_per_step = (time.perf_counter() - started) / MEASURED_STEPS
                resident = peak_memory(run.device) if run.device.type == "cpu" else None
            for line in measured_lines(run, measured, memory_peak, estimate, seconds_per_step, resident):
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
        "resident_peak": resident,
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
