"""Settings of the pipeline stages: `unmask prepare` and `unmask train`.

Each field's docstring is its `--help` text; `__post_init__` refuses bad values and names
the flag; derived values are methods.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from unmask.config.base import (
    OPTIMIZATION_BOUNDS,
    Bound,
    Settings,
    at_least,
    check_fields,
    check_masking_probabilities,
    check_setting,
    flag,
    in_range,
    not_negative,
    positive,
)
from unmask.config.recipes import RECIPES, recipe_names
from unmask.config.schedule import parse_duration
from unmask.errors import UnmaskError, UsageError


@dataclass(kw_only=True)
class SourceOptions(Settings):
    """How documents are read from text sources (shared by prepare and tokenizer)."""

    doc_per: Literal["file", "blank-line", "line"] = "file"
    """What one document is in a text file: the whole file, a block separated by blank lines, or one line."""
    text_field: str = "text"
    """Field of .jsonl records, column of .csv/.tsv/.parquet/.arrow files and datasets, that holds the text."""
    hf_config: str | None = None
    """Configuration (subset) of an hf:NAME dataset, e.g. wikitext-103-raw-v1."""
    hf_split: str = "train"
    """Split of an hf:NAME dataset or of a saved DatasetDict folder."""
    max_docs: int | None = None
    """Read at most this many (non-empty) documents, then stop: useful on a streamed hub dataset."""
    skip_bad_files: bool = False
    """Skip binary, non-UTF-8 or corrupt files with a count instead of stopping with an error."""

    def __post_init__(self) -> None:
        check_setting(len(self.sources) > 0, "sources", "give at least one file, folder, glob or hf:NAME")
        check_setting(bool(self.text_field), "text_field", "must not be empty")
        check_setting(bool(self.hf_split), "hf_split", "must not be empty")
        check_setting(self.max_docs is None or self.max_docs >= 1, "max_docs", f"must be at least 1, got {self.max_docs}")


@dataclass(kw_only=True)
class PrepareConfig(SourceOptions):
    """Settings of `unmask prepare`: text sources to a token store."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("sources",)
    sources: list[str] = field(default_factory=list)
    """Text (.txt .md .rst), .jsonl, .csv, .tsv (each also .gz .bz2 .xz .zst), .parquet and .arrow files, folders, globs, saved datasets, hf:NAME; `sample:pydocs` is the bundled sample corpus."""
    out: str | None = None
    """Folder of the token store to create (with --shard or --append: the store folder the shard goes into)."""
    tokenizer: str = "minilm-l6"
    """Hub id, local folder or alias of the tokenizer. `minilm-l6` is the bert-base-uncased WordPiece vocabulary shipped with the starter checkpoint."""
    val_fraction: float = 0.01
    """Share of documents held out for evaluation (every k-th document, the first always; at least one when above 0)."""
    max_tokens: int | None = None
    """Stop once this many tokens are stored (whole documents: the last one is kept entire)."""
    workers: int | None = None
    """Tokenizing processes (default: this machine's cores); 1 tokenizes in this process. The store is the same with any number."""
    shard: str | None = None
    """Make shard I of N (`--shard 0/4`), one machine each: documents are dealt out in blocks by the order they are read, so the shards together are the store one prepare would make. Merge with --merge, or read the folder of shards directly."""
    shard_by: Literal["documents", "files"] = "documents"
    """How --shard deals the work out. `documents`: every machine reads every source and keeps its blocks of documents, so the shards together are exactly the store one prepare would make. `files`: shard I reads only the files I, I+N, ... of the sources (expanded and sorted; a hub dataset is one), N times less reading, the way at scale; the store holds the same documents, shard after shard, each shard holding out every k-th of its own."""
    append: bool = False
    """Add the sources to the existing store --out as a new shard, numbered after its documents; the store's shards stay untouched."""
    merge: str | None = None
    """Check that the folder of shards is complete and consistent, and write its manifest (no token is copied)."""
    padded_lengths: list[int] = field(default_factory=lambda: [128, 512, 1024])
    """Window lengths (--seq-len) to write the window index of, which `train --packing padded` memory-maps instead of reading every document's boundaries at start-up (8 bytes a document each). A split of over a million documents trains padded only at an indexed length."""
    index: str | None = None
    """Add the window indexes of --padded-lengths to this existing store (every shard of it), for a --seq-len it was not prepared with; no token is copied."""
    overwrite: bool = False
    """Replace an existing store (or shard) at --out (the old one stays intact until the new one is complete)."""
    trust_remote_code: bool = False
    """Allow a hub tokenizer to run its own code."""

    def __post_init__(self) -> None:
        for length in self.padded_lengths:
            check_setting(8 <= length <= MAX_CONTEXT, "padded_lengths", f"{length}: must be between 8 and {MAX_CONTEXT}")
        if self.merge is not None or self.index is not None:
            name = "merge" if self.merge is not None else "index"
            check_setting(not self.sources, name, "takes the store folder alone, no sources")
            check_setting(self.merge is None or self.index is None, "index", "one store task at a time: --merge, or --index")
            return
        SourceOptions.__post_init__(self)
        check_setting(self.out is not None, "out", "give the folder of the token store to create")
        check_setting(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        check_setting(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", f"must be at least 1, got {self.max_tokens}")
        check_setting(self.workers is None or self.workers >= 1, "workers", f"must be at least 1, got {self.workers}")
        if self.shard is not None:
            index, count = self.shard_index()
            check_setting(
                count >= 1 and 0 <= index < count,
                "shard",
                f"'{self.shard}': I/N needs 0 <= I < N (shards 0/{max(count, 1)} to {max(count, 1) - 1}/{max(count, 1)})",
            )
            check_setting(
                self.max_tokens is None,
                "max_tokens",
                "a shard cannot know the other shards' tokens; stop every shard at the same document with --max-docs",
            )
        check_setting(self.shard_by == "documents" or self.shard is not None, "shard_by", "deals out shards: give --shard I/N too")
        check_setting(not (self.overwrite and self.append), "append", "adds a shard; it never replaces the store (drop --overwrite)")

    def shard_index(self) -> tuple[int, int]:
        """(I, N) of --shard I/N; (0, 1) without it."""
        if self.shard is None:
            return 0, 1
        parts = self.shard.split("/")
        try:
            index, count = (int(p) for p in parts)
        except ValueError:
            check_setting(False, "shard", f"'{self.shard}' is not I/N, e.g. 0/4")
        return index, count

    def worker_count(self) -> int:
        import os

        return self.workers or os.cpu_count() or 1


@dataclass(kw_only=True)
class TokenizerConfig(SourceOptions):
    """Settings of `unmask tokenizer`: train a vocabulary on text sources."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("sources",)
    sources: list[str]
    """The same sources `unmask prepare` reads."""
    out: str
    """Folder to save the tokenizer to (loads with AutoTokenizer.from_pretrained)."""
    kind: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    """`wordpiece`: BERT-style [CLS] ... [SEP], [MASK]. `bpe`: RoBERTa-style byte-level BPE, <s> ... </s>, <mask>. `unigram`: SentencePiece-style unigram with ▁ word starts, <s> ... </s>, <mask>."""
    vocab_size: int = 30522
    """Size of the vocabulary, special tokens included."""
    lowercase: bool = False
    """Lowercase text before tokenizing (as bert-base-uncased does)."""
    min_frequency: int = 2
    """Least number of times a piece must occur to enter the vocabulary (WordPiece and BPE)."""
    overwrite: bool = False
    """Replace an existing tokenizer folder at --out."""
    mix: str | None = None
    """Learn from the sources in these shares of documents, NAME=WEIGHT,... with the sources given as NAME=SOURCE: a small source repeats rather than drowns, until every source has been read through."""

    def __post_init__(self) -> None:
        SourceOptions.__post_init__(self)
        if self.mix:
            parse_weights(self.mix, [name for name, _ in parse_sources(self.sources)])
        check_setting(self.vocab_size >= 100, "vocab_size", f"must be at least 100, got {self.vocab_size}")
        check_setting(self.min_frequency >= 1, "min_frequency", f"must be at least 1, got {self.min_frequency}")


def parse_sources(entries: list[str]) -> list[tuple[str, str]]:
    """`name=path` or `path` (named after its folder) -> [(name, path)], names unique."""
    found: list[tuple[str, str]] = []
    for entry in entries:
        name, _, path = entry.partition("=") if "=" in entry else (Path(entry.rstrip("/")).name, "", entry)
        if not name or not path:
            raise UnmaskError(f"--data {entry}: give NAME=STORE or a store folder")
        if name in {n for n, _ in found}:
            raise UnmaskError(f"--data: two sources are named '{name}'; name them NAME=STORE")
        found.append((name, path))
    for name, path in found if len(found) > 1 else ():  # a name is a metric key's suffix (eval_loss@NAME) only with several stores
        if "@" in name or re.fullmatch(r"len\d+", name):
            raise UnmaskError(
                f"--data {name}={path}: a source may not be named '{name}' ('@' and lenN tag the held-out loss at other window "
                "lengths, eval_loss@lenN); choose another NAME"
            )
    return found


def parse_weights(text: str, names: list[str], flag: str = "--mix") -> list[float]:
    """`web=0.6,code=0.3,papers=0.1` -> weights in the order of `names`, summing to 1."""
    given: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            raise UnmaskError(f"{flag} {text}: '{part}' is not NAME=WEIGHT") from None
        if name not in names:
            raise UnmaskError(f"{flag} {text}: '{name}' is not a source of --data ({', '.join(names)})")
        if not math.isfinite(weight) or weight < 0:
            raise UnmaskError(f"{flag} {text}: the weight of '{name}' is {value}; weights must be 0 or more")
        given[name] = weight
    missing = [n for n in names if n not in given]
    if missing:
        raise UnmaskError(f"{flag} {text}: no weight for {', '.join(missing)} (give every source of --data one, 0 to leave it out)")
    total = sum(given.values())
    if total <= 0:
        raise UnmaskError(f"{flag} {text}: every weight is 0; at least one source must be drawn from")
    return [given[n] / total for n in names]


SIZES = ("tiny", "mini", "small", "base", "large")
ArchitectureName = Literal["bert", "roberta", "modernbert", "deberta-v2"]
ARCHITECTURE_NAMES: tuple[str, ...] = typing.get_args(ArchitectureName)
PRESETS = SIZES + tuple(f"{arch}-{size}" for arch in ARCHITECTURE_NAMES for size in SIZES)
MAX_CONTEXT = 8192


def parse_preset(text: str) -> tuple[str | None, str]:
    """`base` -> (None, "base"); `modernbert-base` -> ("modernbert", "base")."""
    if text in SIZES:
        return None, text
    arch, _, size = text.rpartition("-")
    if arch in ARCHITECTURE_NAMES and size in SIZES:
        return arch, size
    raise UsageError(
        f"--from-scratch {text}: give a size ({', '.join(SIZES)}) or ARCH-SIZE with ARCH one of {', '.join(ARCHITECTURE_NAMES)} "
        "(e.g. modernbert-base)"
    )


@dataclass(kw_only=True)
class TrainConfig(Settings):
    """Settings of `unmask train`."""

    data: list[str]
    """Token store(s) made by `unmask prepare`: STORE, or several as NAME=STORE (web=runs/web code=runs/code), mixed by --mix."""
    out: str
    """Run folder: config.yaml, metrics.jsonl, checkpoints/ and the final model/."""
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
    eval_seq_len: list[int] = field(default_factory=list)
    """Also evaluate at these window lengths (eval_loss@len512, ...); extending a model's context adds the length it had."""
    packing: Literal["packed", "padded"] = "packed"
    """`packed`: documents back to back, no padding. `padded`: each document on its own windows, padded."""
    attention_across_docs: bool = True
    """Whether the documents packed into one window attend to each other; --no-attention-across-docs confines attention to each document and restarts positions at its start."""
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
    lr: float = 3e-4
    """Peak learning rate."""
    fresh_lr_scale: float = 1.0
    """Learning-rate multiplier for weights the checkpoint did not have (a fresh MLM head)."""
    weight_decay: float = 0.01
    """AdamW weight decay; biases and LayerNorm weights never decay."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.999
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
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
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or infinite loss or gradient norm, caught before the update: `stop` with an error (earlier checkpoints intact), or `skip` that step's update and go on."""
    max_nonfinite: int = 5
    """With --on-nonfinite skip: stop after this many non-finite steps in a row."""
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
    dropout: float | None = None
    """Dropout of every dropout layer while training (default: the model's own); the saved model keeps its own setting."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast where it is faster (GPUs that support it; CPUs with AMX or AVX512-BF16, confirmed by a calibration cached per machine), fp32 elsewhere. Weights and optimizer state stay fp32."""
    deterministic: bool = False
    """Bit-identical runs and resumes on a GPU (deterministic algorithms, cuBLAS workspace, no TF32): slower. CPU runs are bit-identical without it."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    compile: bool = False
    """torch.compile the encoder layers that run on every token (off: on a 2-core CPU it cost 15-35 s of compiling and ran no faster)."""
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    """Under torchrun: `ddp` replicates the model on every process, `fsdp` shards weights, gradients and optimizer state (FSDP2); `auto` is DDP. One process ignores it."""
    peak_tflops: str = "auto"
    """The peak MFU is measured against: `auto` (a known GPU's data sheet, else a measured matrix product, cached per device model), `measure`, a number of TFLOPS, or a GPU name (h200, h100-sxm, h100-pcie, a100, l40s, l4)."""
    plan: bool = False
    """Print the plan (parameters, FLOPs and memory per step, then tokens/s, MFU and the time to the end measured over a few steps) and exit without a run folder."""
    json: bool = False
    """Print the run's summary (summary.json's numbers; with --plan, the plan's) as JSON on stdout instead of a few lines."""
    collective_timeout: float = 30.0
    """Under torchrun: minutes a process waits in a collective for the others before it gives up with an error (a process died or hung); long enough for a checkpoint write."""
    activation_checkpointing: bool = False
    """Recompute each encoder layer's activations in the backward pass instead of storing them: less memory for long sequences, about a third more compute."""
    report_to: list[str] = field(default_factory=list)
    """Also send the metrics to `tensorboard` (event files in RUN/tensorboard) and/or `wandb` (offline unless logged in); needs unmask[tracking]."""
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    """`bar` in a terminal, `lines` (one plain line every --log-every steps) in a log file; `auto` picks by whether stderr is a terminal."""
    seed: int = 0
    """Seed of the model init, data order, masking and dropout."""
    eval_every: int = 100
    """Evaluate on the held-out split every N steps (0: only at the end)."""
    eval_max_batches: int | None = None
    """Cap on evaluation batches (default: the whole held-out split)."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""
    resume: bool = False
    """Continue the run in --out from its newest complete checkpoint."""
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
    downstream: str | None = None
    """A task suite (a file, or the bundled `pydocs` or `glue`) to score checkpoints on as they are written; results in RUN/downstream."""
    downstream_every: int = 0
    """Score the suite every N steps (a multiple of --checkpoint-every); 0: at the end only."""
    downstream_mode: Literal["probe", "suite"] = "probe"
    """`probe`: every task by a linear probe, seconds a checkpoint; `suite`: as the suite file says (fine-tuning costs minutes)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seq_len": at_least(8),
        "batch_size": at_least(1),
        "grad_accum": at_least(1),
        "global_batch": at_least(1),
        "max_steps": at_least(1),
        "max_tokens": at_least(1),
        "epochs": positive(),
        **OPTIMIZATION_BOUNDS,
        "fresh_lr_scale": positive(),
        "warmup_steps": not_negative(),
        "warmup_start_ratio": in_range(0, 1),
        "min_lr_ratio": in_range(0, 1),
        "decay_fraction": in_range(0, 1, low_open=True),
        "max_nonfinite": at_least(1),
        "rope_theta": positive(),
        "eval_every": not_negative(),
        "checkpoint_every": not_negative(),
        "log_every": at_least(1),
        "keep_checkpoints": at_least(1),
        "eval_max_batches": at_least(1),
        "downstream_every": not_negative(),
        "mix_temperature": positive(),
        "collective_timeout": positive(),
        "mix_switch": in_range(0, 1, low_open=True, high_open=True),
    }

    def __post_init__(self) -> None:
        if isinstance(self.data, str):  # one store, given from Python or a YAML scalar
            self.data = [self.data]
        check_setting(len(self.data) > 0, "data", "give the token store(s) to train on")
        check_fields(self, self.BOUNDS)
        names = [name for name, _ in parse_sources(self.data)]
        for name in ("mix", "mix_end", "mix_temperature"):
            check_setting(len(names) > 1 or not getattr(self, name), name, "mixes several --data stores; one was given")
        check_setting(not (self.mix and self.mix_temperature), "mix_temperature", "give --mix or --mix-temperature, not both")
        for name in ("mix", "mix_end"):
            if getattr(self, name):
                parse_weights(getattr(self, name), names, flag(name))
        check_setting(
            self.mix_schedule == "constant" or self.mix_end is not None,
            "mix_end",
            f"--mix-schedule {self.mix_schedule} needs the weights to end at",
        )
        check_setting((self.model is None) != (self.from_scratch is None), "model", "give exactly one of --model or --from-scratch")
        if self.recipe is not None:
            check_setting(self.recipe in RECIPES, "recipe", f"no recipe '{self.recipe}' (choose from {recipe_names()})")
        if self.from_scratch is not None:
            named, _ = parse_preset(self.from_scratch)
            check_setting(
                named is None or self.arch is None or named == self.arch,
                "arch",
                f"{self.arch}, but --from-scratch {self.from_scratch} names {named}",
            )
        check_setting(
            self.arch is None or self.from_scratch is not None, "arch", "chooses the architecture of --from-scratch; --model has its own"
        )
        for length in self.eval_seq_len:
            check_setting(8 <= length <= MAX_CONTEXT, "eval_seq_len", f"{length}: must be between 8 and {MAX_CONTEXT}")
        check_setting(
            self.seq_len <= MAX_CONTEXT,
            "seq_len",
            f"{self.seq_len} is more than the {MAX_CONTEXT} tokens unmask trains at (ModernBERT's context); attention over it would take "
            f"about {self.batch_size * 16 * self.seq_len**2 * 4 / 2**30:,.0f} GiB a layer for a batch of {self.batch_size} where it is materialised",
        )
        one_step = self.batch_size * self.grad_accum * self.seq_len if self.global_batch is None else self.global_batch * self.seq_len
        check_setting(
            self.max_tokens is None or self.max_tokens >= one_step,
            "max_tokens",
            f"{self.max_tokens}: less than one step's {one_step:,} tokens (the global batch x --seq-len {self.seq_len}); give more or a smaller batch",
        )
        check_masking_probabilities(self.mask_prob, self.mask_replace_prob, self.random_replace_prob)
        if self.mask_prob_end is not None:
            check_setting(0.0 < self.mask_prob_end < 1.0, "mask_prob_end", f"must be strictly between 0 and 1, got {self.mask_prob_end}")
        check_setting(
            (self.mask_schedule == "constant") or self.mask_prob_end is not None,
            "mask_prob_end",
            f"--mask-schedule {self.mask_schedule} needs the rate to end at, e.g. --mask-prob-end 0.15",
        )
        if self.time_budget is not None:
            try:
                parse_duration(self.time_budget)
            except ValueError as e:
                check_setting(False, "time_budget", str(e))
        unknown = sorted(set(self.report_to) - {"tensorboard", "wandb"})
        check_setting(not unknown, "report_to", f"{', '.join(unknown)}: choose from tensorboard, wandb")
        check_setting(
            not self.downstream_every or self.downstream is not None, "downstream_every", "give the suite to score with --downstream"
        )
        check_setting(
            not self.downstream_every or (self.checkpoint_every and self.downstream_every % self.checkpoint_every == 0),
            "downstream_every",
            f"scores checkpoints, so it must be a multiple of --checkpoint-every ({self.checkpoint_every})",
        )

    def windows_per_step(self, world_size: int = 1) -> int:
        """The global batch: windows of one optimizer step over all processes."""
        return self.batch_size * self.grad_accum * world_size

    def scratch_architecture(self) -> str:
        """The --arch of a --from-scratch model: the preset's, --arch, the recipe's, or bert."""
        named, _ = parse_preset(self.from_scratch or "base")
        return named or self.arch or (RECIPES[self.recipe].architecture if self.recipe else "bert")

    def with_global_batch(self, world_size: int) -> TrainConfig:
        """This config with --grad-accum set from --global-batch for `world_size` processes."""
        if self.global_batch is None:
            return self
        per_pass = self.batch_size * world_size
        if self.global_batch % per_pass:
            raise UnmaskError(
                f"--global-batch {self.global_batch}: not a multiple of --batch-size {self.batch_size} x {world_size} process(es) = {per_pass}; "
                "choose a --batch-size that divides it"
            )
        return dataclasses.replace(self, grad_accum=self.global_batch // per_pass)

    def budget_seconds(self) -> float | None:
        return parse_duration(self.time_budget) if self.time_budget else None

    def total_steps(self, train_windows: int, world_size: int = 1) -> int | None:
        """Optimizer steps of the whole run, given the number of training windows; None when
        only a time budget ends it."""
        per_step = self.windows_per_step(world_size) * self.seq_len
        if self.max_tokens is not None and self.max_tokens < per_step:
            raise UnmaskError(
                f"--max-tokens {self.max_tokens:,}: less than one step's {per_step:,} tokens "
                f"({self.windows_per_step(world_size)} windows x {self.seq_len}); give at least {per_step:,} or a smaller batch"
            )
        by_tokens = math.ceil(self.max_tokens / per_step) if self.max_tokens is not None else None
        if self.time_budget is not None and self.max_steps is None and self.epochs is None:
            return by_tokens
        steps_per_epoch = max(1, train_windows // self.windows_per_step(world_size))
        by_epochs = math.ceil((self.epochs or 1.0) * steps_per_epoch)
        if self.max_steps is None:
            steps = by_epochs if by_tokens is None or self.epochs is not None else by_tokens
        else:
            steps = self.max_steps if self.epochs is None else min(self.max_steps, by_epochs)
        return steps if by_tokens is None else min(steps, by_tokens)

    def warmup(self, total_steps: int | None) -> int:
        """Warmup steps (0 when a time budget alone ends the run: it warms up over --warmup-fraction of the time)."""
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_fraction * total_steps) if total_steps else 0


# Fields that may change when a run is resumed: they change neither the data order, the
# masking, nor the arithmetic of a step. Checked against the checkpoint instead: the device
# type ("auto" may resolve differently) and the global batch (batch-size and grad-accum may
# change with the number of processes as long as their product with it stays the same).
RESUMABLE_CHANGES = frozenset({
    "out", "resume", "device", "compile", "eval_every", "eval_max_batches", "log_every", "checkpoint_every", "keep_checkpoints",
    "strategy", "collective_timeout", "peak_tflops", "plan", "json", "activation_checkpointing", "progress", "batch_size", "grad_accum", "global_batch", "on_nonfinite", "max_nonfinite", "report_to",
    "eval_seq_len",
    *("max_steps", "max_tokens", "epochs", "time_budget"),  # a run may be extended; `length_changes` says what that does to the schedule
    *("downstream", "downstream_every", "downstream_mode"),
})  # fmt: skip
LENGTH_SETTINGS = ("max_steps", "max_tokens", "epochs", "time_budget")


def length_changes(saved: dict, now: dict) -> list[str]:
    """`field: old -> new` for the settings that set how long a run is."""
    return [f"{flag(k)} {saved.get(k)} -> {now[k]}" for k in LENGTH_SETTINGS if saved.get(k) != now.get(k)]


def refused_resume_changes(saved: dict, now: dict, allowed: frozenset[str] = RESUMABLE_CHANGES) -> list[str]:
    """`field: old -> new` for every setting that differs and may not change on resume."""
    changed = sorted(k for k, v in now.items() if k not in allowed and saved.get(k) != v)
    return [f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed]
