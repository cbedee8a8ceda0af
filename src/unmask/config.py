"""Typed settings for every stage, validated on construction and saved as YAML.

Each field's docstring is its `--help` text (jsonargparse reads attribute docstrings).
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class UnmaskError(Exception):
    """An error caused by the user's input; the CLI prints it without a traceback."""


def _check(condition: bool, argument: str, message: str) -> None:
    if not condition:
        raise UnmaskError(f"--{argument.replace('_', '-')}: {message}")


def check_masking_probabilities(mask_prob: float, mask_replace_prob: float, random_replace_prob: float) -> None:
    """Refuse masking settings that cannot describe a BERT-style draw."""
    _check(0.0 < mask_prob < 1.0, "mask_prob", f"must be strictly between 0 and 1, got {mask_prob}")
    _check(0.0 <= mask_replace_prob <= 1.0, "mask_replace_prob", f"must be in [0, 1], got {mask_replace_prob}")
    _check(0.0 <= random_replace_prob <= 1.0, "random_replace_prob", f"must be in [0, 1], got {random_replace_prob}")
    _check(
        mask_replace_prob + random_replace_prob <= 1.0 + 1e-9,
        "random_replace_prob",
        f"mask_replace_prob + random_replace_prob must be at most 1, got {mask_replace_prob} + {random_replace_prob}",
    )


@dataclass
class PrepareConfig:
    """Settings of `unmask prepare`: text sources to a token store."""

    sources: list[str]
    """Text files (.txt, .jsonl), folders or globs; `sample:pydocs` is the bundled sample corpus."""
    out: str
    """Folder of the token store to create."""
    tokenizer: str = "minilm-l6"
    """Hub id, local folder or alias of the tokenizer. `minilm-l6` is the bert-base-uncased WordPiece vocabulary shipped with the starter checkpoint."""
    doc_per: Literal["file", "blank-line", "line"] = "file"
    """What one document is in a .txt file: the whole file, a block separated by blank lines, or one line."""
    text_field: str = "text"
    """Field of each .jsonl record that holds the text."""
    val_fraction: float = 0.01
    """Share of documents held out for evaluation (every k-th document, the first always; at least one when above 0)."""
    skip_bad_files: bool = False
    """Skip binary or non-UTF-8 files with a count instead of stopping with an error."""
    overwrite: bool = False
    """Replace an existing store at --out (the old one stays intact until the new one is complete)."""
    trust_remote_code: bool = False
    """Allow a hub tokenizer to run its own code."""

    def __post_init__(self) -> None:
        _check(len(self.sources) > 0, "sources", "give at least one file, folder or glob")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(bool(self.text_field), "text_field", "must not be empty")


PRESETS = ("tiny", "mini", "small", "base")


@dataclass
class TrainConfig:
    """Settings of `unmask train`."""

    data: str
    """Token store made by `unmask prepare`."""
    out: str
    """Run folder: config.yaml, metrics.jsonl, checkpoints/ and the final model/."""
    model: Optional[str] = None
    """Hub id, local folder or alias (`minilm-l6`) of a masked LM to continue pretraining."""
    from_scratch: Optional[Literal["tiny", "mini", "small", "base"]] = None
    """Build a fresh BERT of this size instead of loading --model."""
    tokenizer: Optional[str] = None
    """Tokenizer for --from-scratch; default: the one the store was made with."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own code."""
    seq_len: int = 128
    """Tokens per window, [CLS] and [SEP] included."""
    packing: Literal["packed", "padded"] = "packed"
    """`packed`: documents back to back, no padding. `padded`: each document on its own windows, padded."""
    batch_size: int = 32
    """Windows per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_steps: Optional[int] = None
    """Optimizer steps to run; with --epochs, whichever ends first."""
    epochs: Optional[float] = None
    """Passes over the training windows; used when --max-steps is not set (default 1)."""
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
    warmup_steps: Optional[int] = None
    """Warmup steps; overrides --warmup-fraction."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Decay after warmup."""
    min_lr_ratio: float = 0.0
    """Learning rate at the last step, as a share of --lr."""
    clip_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
    mask_prob: float = 0.15
    """Share of maskable tokens picked for prediction in training."""
    mask_replace_prob: float = 0.8
    """Share of picked tokens replaced by the mask token."""
    random_replace_prob: float = 0.1
    """Share of picked tokens replaced by a random vocabulary token; the rest stay as they are."""
    dropout: Optional[float] = None
    """Dropout of every dropout layer while training (default: the model's own); the saved model keeps its own setting."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast on a GPU that supports it, fp32 elsewhere."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    compile: bool = False
    """torch.compile the encoder layers that run on every token (off: on a 2-core CPU it cost 15-35 s of compiling and ran no faster)."""
    seed: int = 0
    """Seed of the model init, data order, masking and dropout."""
    eval_every: int = 100
    """Evaluate on the held-out split every N steps (0: only at the end)."""
    eval_max_batches: Optional[int] = None
    """Cap on evaluation batches (default: the whole held-out split)."""
    log_every: int = 10
    """Write a metrics line every N steps."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk; older ones are deleted once a newer one is complete."""
    resume: bool = False
    """Continue the run in --out from its newest complete checkpoint."""

    def __post_init__(self) -> None:
        _check((self.model is None) != (self.from_scratch is None), "model", "give exactly one of --model or --from-scratch")
        _check(self.seq_len >= 8, "seq_len", f"must be at least 8, got {self.seq_len}")
        _check(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be at least 1, got {self.grad_accum}")
        _check(self.max_steps is None or self.max_steps >= 1, "max_steps", f"must be at least 1, got {self.max_steps}")
        _check(self.epochs is None or self.epochs > 0, "epochs", f"must be positive, got {self.epochs}")
        _check(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _check(self.fresh_lr_scale > 0, "fresh_lr_scale", f"must be positive, got {self.fresh_lr_scale}")
        _check(self.weight_decay >= 0, "weight_decay", f"must not be negative, got {self.weight_decay}")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1", "beta1 and beta2 must be in [0, 1)")
        _check(0 <= self.warmup_fraction < 1, "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        _check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must not be negative")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        _check(self.clip_grad_norm >= 0, "clip_grad_norm", "must not be negative")
        _check(self.dropout is None or 0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check_masking_probabilities(self.mask_prob, self.mask_replace_prob, self.random_replace_prob)
        for name in ("eval_every", "log_every", "checkpoint_every"):
            _check(getattr(self, name) >= 0, name, "must not be negative")
        _check(self.keep_checkpoints >= 1, "keep_checkpoints", "must be at least 1")
        _check(self.eval_max_batches is None or self.eval_max_batches >= 1, "eval_max_batches", "must be at least 1")

    def windows_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def total_steps(self, train_windows: int) -> int:
        """Optimizer steps of the whole run, given the number of training windows."""
        steps_per_epoch = max(1, train_windows // self.windows_per_step())
        by_epochs = math.ceil((self.epochs or 1.0) * steps_per_epoch)
        if self.max_steps is None:
            return by_epochs
        return self.max_steps if self.epochs is None else min(self.max_steps, by_epochs)

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(self.warmup_fraction * total_steps)


# Fields that may change when a run is resumed: they change neither the data order, the
# masking, nor the arithmetic of a step.
RESUMABLE_CHANGES = frozenset({"resume", "device", "compile", "eval_every", "eval_max_batches", "log_every", "checkpoint_every", "keep_checkpoints"})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UnmaskError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    return cls(**values)


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and a rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_into_place(building: Path, target: Path) -> None:
    """Replace folder `target` by the finished folder `building`.

    The old folder is renamed aside first and deleted last: at every moment either the old
    or the new folder is whole at `target`'s path (or both exist, under different names).
    """
    if target.exists():
        retired = target.with_name(f".{target.name}.replaced")
        shutil.rmtree(retired, ignore_errors=True)
        target.rename(retired)
        building.rename(target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        building.rename(target)


def save_yaml(config: Any, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def load_yaml(cls: type, path: Path) -> Any:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UnmaskError(f"{path}: cannot read config: {e}") from None
    return from_dict(cls, values, str(path))
