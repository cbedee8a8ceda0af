"""The sections `unmask train`'s settings are made of: data, model, masking, optimizer,
schedule, evaluation, checkpoints, system, downstream. `TrainConfig` is all of them, flat: a
flag stays `--lr`, a YAML file may list the settings flat or under their section's name
(`optimizer: {lr: 1e-3}`), and `config.lr` is read as ever. `OptimizerSection` is fine-tuning's
too. Each section declares its fields' bounds once (`Settings.bounds` gathers them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from unmask.config.base import LOOP_BOUNDS, Bound, Settings, at_least, in_range, not_negative, positive
from unmask.config.pipeline import ArchitectureName

AttentionName = Literal["auto", "sdpa", "flex", "varlen", "flash"]
"""The attention paths (`models.attention`)."""


@dataclass(kw_only=True)
class DataSection(Settings):
    """The token stores and how their windows are cut and mixed."""

    SECTION: ClassVar[str] = "data"
    data: list[str]
    """Token store(s) made by `unmask prepare`: STORE, or several as NAME=STORE (web=runs/web code=runs/code), mixed by --mix."""
    packing: Literal["packed", "padded"] = "packed"
    """`packed`: documents back to back, no padding. `padded`: each document on its own windows, padded."""
    attention_across_docs: bool = True
    """Whether the documents packed into one window attend to each other; --no-attention-across-docs confines attention to each document and restarts positions at its start."""
    mix: str | None = None
    """With several --data stores: the share of each step drawn from each, NAME=WEIGHT,... (web=0.6,code=0.3,papers=0.1). Default: by size (--mix-temperature 1)."""
    mix_temperature: float | None = None
    """Weights by store size^(1/T): 1 by size, larger values even the stores out (as multilingual models sample languages)."""
    mix_end: str | None = None
    """Weights to reach by the end of the run (NAME=WEIGHT,...), with --mix-schedule; mmBERT anneals its mixture so."""
    mix_schedule: Literal["constant", "linear", "cosine", "step"] = "constant"
    """How the weights move from --mix to --mix-end: constant, linear, cosine, or a step at --mix-switch."""
    mix_switch: float = 0.5
    """With --mix-schedule step: the share of the run after which --mix-end's weights apply."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "mix_temperature": positive(),
        "mix_switch": in_range(0, 1, low_open=True, high_open=True),
    }


@dataclass(kw_only=True)
class ModelSection(Settings):
    """The model trained: loaded or built, its window length and how it runs."""

    SECTION: ClassVar[str] = "model"
    model: str | None = None
    """Hub id, local folder or alias (`minilm-l6`) of a masked LM to continue pretraining."""
    from_scratch: str | None = None
    """Build a fresh model instead of loading --model: a size (tiny, mini, small, base, large) of --arch, or ARCH-SIZE (modernbert-base, roberta-small, deberta-v2-mini)."""
    arch: ArchitectureName | None = None
    """Architecture of --from-scratch when its name carries none: bert (default, or the one --recipe names), roberta, modernbert, deberta-v2."""
    recipe: str | None = None
    """Start from a published recipe's settings instead of unmask's defaults (modernbert, mosaicbert, roberta, cramming, neobert, mmbert); --config and flags override them."""
    tokenizer: str | None = None
    """Tokenizer for --from-scratch; default: the one the store was made with."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own code."""
    seq_len: int = 128
    """Tokens per window, [CLS] and [SEP] included. Longer than --model embeds: its positions are extended (learned ones copied, rotary ones as they are)."""
    rope_theta: float | None = None
    """RoPE base of the global-attention layers (rotary architectures: modernbert). ModernBERT extended its context by raising it from 10,000 to 160,000."""
    dropout: float | None = None
    """Dropout of every dropout layer while training (default: the model's own); the saved model keeps its own setting."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of storing them: less memory for long sequences, about a third more compute."""
    compile: bool = False
    """torch.compile the encoder layers that run on every token (off: on a 2-core Xeon it cost 27 s of compiling and ran 7% slower, benchmarks/compile_bench.py; on a GPU, measure with the same script)."""
    attention: AttentionName = "auto"
    """Attention kernel: `auto` (torch's varlen on CUDA in bf16/fp16 without attention dropout, else flash-attn where installed, else sdpa), sdpa, flex (FlexAttention, document block masks), varlen (torch's unpadded attention, CUDA), flash (the flash-attn package). Packed documents and padding run unpadded under varlen and flash."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seq_len": at_least(8),
        "rope_theta": positive(),
        "dropout": LOOP_BOUNDS["dropout"],
    }


@dataclass(kw_only=True)
class MaskingSection(Settings):
    """Which tokens a step predicts, and what they are replaced by."""

    SECTION: ClassVar[str] = "masking"
    masking: Literal["token", "whole-word", "span"] = "token"
    """`token`: each token on its own (BERT). `whole-word`: every piece of a word shares its word's fate. `span`: SpanBERT's spans of whole words, geometric lengths up to 10 words, split per span."""
    mask_prob: float = 0.15
    """Share of maskable tokens picked for prediction in training (at the start, with --mask-schedule)."""
    mask_prob_end: float | None = None
    """Masking rate at the end of the run, reached by --mask-schedule linear or cosine (e.g. 0.3 -> 0.15)."""
    mask_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """How the training masking rate moves from --mask-prob to --mask-prob-end over the run."""
    mask_replace_prob: float = 0.8
    """Share of picked tokens replaced by the mask token."""
    random_replace_prob: float = 0.1
    """Share of picked tokens replaced by a random vocabulary token; the rest stay as they are."""


@dataclass(kw_only=True)
class OptimizerSection(Settings):
    """AdamW, clipping and the non-finite rule: the same for pretraining and fine-tuning."""

    SECTION: ClassVar[str] = "optimizer"
    lr: float = 3e-4
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay; biases and LayerNorm weights never decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss or gradient norm, caught before the update: `stop` with an error (earlier checkpoints intact), or `skip` that step's update and go on."""
    max_nonfinite: int = 5
    """With --on-nonfinite skip: stop after this many non-finite steps in a row."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "lr": positive(),
        "weight_decay": not_negative(),
        "beta1": in_range(0, 1, high_open=True),
        "beta2": in_range(0, 1, high_open=True),
        "adam_eps": positive(),
        "clip_grad_norm": not_negative(),
        "max_nonfinite": at_least(1),
    }


@dataclass(kw_only=True)
class ScheduleSection(Settings):
    """How long the run is, its batch, and how the learning rate moves."""

    SECTION: ClassVar[str] = "schedule"
    batch_size: int = 32
    """Windows per micro-batch, per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step; a step trains on batch-size x grad-accum x processes windows."""
    global_batch: int | None = None
    """Windows per optimizer step over all processes: sets --grad-accum to global-batch / (batch-size x processes), whatever the number of processes."""
    max_steps: int | None = None
    """Optimizer steps to run; with --epochs or --time-budget, whichever ends first."""
    epochs: float | None = None
    """Passes over the training windows; used when --max-steps is not set (default 1, none with --time-budget or --max-tokens)."""
    max_tokens: int | None = None
    """Train on this many tokens (windows x --seq-len, all processes): the steps it takes, rounded up; with --max-steps, --epochs or --time-budget whichever ends first."""
    time_budget: str | None = None
    """Train for this much time (`30m`, `2h`, `1d`, `1h30m`; evaluation and checkpoints not counted): the schedules run on the share of it spent, and the run ends there with a checkpoint and the model. Not bit-reproducible."""
    fresh_lr_scale: float = 1.0
    """Learning-rate multiplier for weights the checkpoint did not have (a fresh MLM head)."""
    warmup_fraction: float = 0.06
    """Share of the steps spent in linear warmup (ignored when --warmup-steps is set)."""
    warmup_steps: int | None = None
    """Warmup steps; overrides --warmup-fraction."""
    schedule: Literal["linear", "cosine", "constant", "wsd"] = "linear"
    """Decay after warmup; `wsd` holds the peak and decays with 1-sqrt over the last --decay-fraction of the run (ModernBERT's trapezoid)."""
    decay_fraction: float = 0.1
    """With --schedule wsd: the share of the run spent decaying."""
    warmup_start_ratio: float = 0.0
    """Learning rate the warmup starts from, as a share of --lr (Cramming's triangle starts at 0.25)."""
    min_lr_ratio: float = 0.0
    """Learning rate at the last step, as a share of --lr."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "batch_size": at_least(1),
        "grad_accum": at_least(1),
        "global_batch": at_least(1),
        "max_steps": at_least(1),
        "max_tokens": at_least(1),
        "epochs": positive(),
        "fresh_lr_scale": positive(),
        "warmup_fraction": LOOP_BOUNDS["warmup_fraction"],
        "warmup_steps": not_negative(),
        "warmup_start_ratio": in_range(0, 1),
        "min_lr_ratio": in_range(0, 1),
        "decay_fraction": in_range(0, 1, low_open=True),
    }


@dataclass(kw_only=True)
class EvaluationSection(Settings):
    """Held-out evaluation during the run."""

    SECTION: ClassVar[str] = "evaluation"
    eval_every: int = 100
    """Evaluate on the held-out split every N steps (0: only at the end)."""
    eval_max_batches: int | None = None
    """Cap on evaluation batches (default: the whole held-out split)."""
    eval_seq_len: list[int] = field(default_factory=list)
    """Also evaluate at these window lengths (eval_loss@len512, ...); extending a model's context adds the length it had."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "eval_every": not_negative(),
        "eval_max_batches": at_least(1),
    }


@dataclass(kw_only=True)
class CheckpointSection(Settings):
    """Where the run goes, and its checkpoints."""

    SECTION: ClassVar[str] = "checkpoints"
    out: str
    """Run folder: config.yaml, metrics.jsonl, checkpoints/ and the final model/."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""
    resume: bool = False
    """Continue the run in --out from its newest complete checkpoint."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "checkpoint_every": not_negative(),
        "keep_checkpoints": at_least(1),
    }


@dataclass(kw_only=True)
class SystemSection(Settings):
    """Where and how it runs: seed, device, precision, processes, logging."""

    SECTION: ClassVar[str] = "system"
    seed: int = 0
    """Seed of the model init, data order, masking and dropout."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast where it is faster (GPUs that support it; CPUs with AMX or AVX512-BF16, confirmed by a calibration cached per machine), fp32 elsewhere. Weights and optimizer state stay fp32."""
    deterministic: bool = False
    """Bit-identical runs and resumes on a GPU (deterministic algorithms, cuBLAS workspace, no TF32): slower. CPU runs are bit-identical without it."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Under torchrun: `ddp` replicates the model on every process, `fsdp` shards weights, gradients and optimizer state (FSDP2); `auto` is DDP. One process ignores it."""
    collective_timeout: float = 30.0
    """Under torchrun: minutes a process waits in a collective for the others before it gives up with an error (a process died or hung); long enough for a checkpoint write."""
    peak_tflops: str = "auto"
    """The peak MFU is measured against: `auto` (a known GPU's data sheet, else a measured matrix product, cached per device model), `measure`, a number of TFLOPS, or a GPU name (h200, h100-sxm, h100-pcie, a100, l40s, l4)."""
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    """`bar` in a terminal, `lines` (one plain line every --log-every steps) in a log file; `auto` picks by whether stderr is a terminal."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    report_to: list[str] = field(default_factory=list)
    """Also send the metrics to `tensorboard` (event files in RUN/tensorboard) and/or `wandb` (offline unless logged in); needs unmask[tracking]."""
    plan: bool = False
    """Print the plan (parameters, FLOPs and memory per step, then tokens/s, MFU and the time to the end measured over a few steps) and exit without a run folder."""
    json: bool = False
    """Print the run's summary (summary.json's numbers; with --plan, the plan's) as JSON on stdout instead of a few lines."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seed": LOOP_BOUNDS["seed"],
        "collective_timeout": positive(),
        "log_every": at_least(1),
    }


@dataclass(kw_only=True)
class DownstreamSection(Settings):
    """Scoring checkpoints on a downstream suite as they are written."""

    SECTION: ClassVar[str] = "downstream"
    downstream: str | None = None
    """A task suite (a file, or the bundled `pydocs` or `glue`) to score checkpoints on as they are written; results in RUN/downstream."""
    downstream_every: int = 0
    """Score the suite every N steps (a multiple of --checkpoint-every); 0: at the end only."""
    downstream_mode: Literal["probe", "suite"] = "probe"
    """`probe`: every task by a linear probe, seconds a checkpoint; `suite`: as the suite file says (fine-tuning costs minutes)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "downstream_every": not_negative(),
    }
