"""Settings of the commands that use a model: fill, inspect, eval, score, embed, compare, plot.

As for training, each field's docstring is its `--help` text, and `POSITIONAL` names the
fields given without a flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

from unmask.config.base import Bound, Settings, at_least, check_fields, check_masking_probabilities, check_setting, not_negative


@dataclass(kw_only=True)
class DeviceOptions(Settings):
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32 (the same numbers on every machine) or bf16 autocast (faster on GPUs and CPUs with AMX; the numbers move slightly)."""


@dataclass(kw_only=True)
class ModelOptions(DeviceOptions):
    model: str
    """Run folder, model folder, checkpoint folder, hub id or alias (minilm-l6)."""
    step: int | None = None
    """With a run folder as the model: its checkpoint of this step instead of its final model."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own code."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "step": not_negative(),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.bounds())
        later = getattr(super(), "__post_init__", None)  # the other option groups' checks
        if later is not None:
            later()


@dataclass(kw_only=True)
class HeldOutOptions(Settings):
    data: list[str]
    """A token store (its held-out split) or text files, folders, globs."""
    seq_len: int = 128
    """Tokens per window."""
    batch_size: int = 32
    """Windows per batch."""
    max_batches: int | None = None
    """Score only this many batches."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seq_len": at_least(8),
        "batch_size": at_least(1),
        "max_batches": at_least(1),
    }

    def __post_init__(self) -> None:
        check_setting(len(self.data) > 0, "data", "give a token store or text files")
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class TextsOptions(Settings):
    texts: list[str] = field(default_factory=list)
    """Texts; `-` (or none, with --file unset) reads stdin, one per line."""
    file: str | None = None
    """File of texts, one per line."""


@dataclass(kw_only=True)
class FillConfig(ModelOptions, TextsOptions):
    """Settings of `unmask fill`: the top-k candidates of every mask."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model", "texts")
    texts: list[str] = field(default_factory=list)
    """Texts with [MASK] or <mask>; `-` (or none, with --file unset) reads stdin, one per line."""
    top_k: int = 5
    """Candidates per mask."""
    against: str | None = None
    """A second model (e.g. the base a run started from) to fill the same masks, printed side by side."""
    json: bool = False
    """Print one JSON object per text (JSON Lines)."""
    batch_size: int = 32
    """Texts per forward pass."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "top_k": at_least(1),
        "batch_size": at_least(1),
    }

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class InspectConfig(Settings):
    """Settings of `unmask inspect`: one masking draw on one sentence."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("text",)
    text: str
    """Any sentence."""
    model: str = "minilm-l6"
    """Tokenizer to use: run folder, model folder, hub id or alias."""
    seed: int = 0
    """Seed of the draw; the same seed gives the same draw."""
    masking: Literal["token", "whole-word", "span"] = "token"
    """Masking strategy, as in training."""
    mask_prob: float = 0.15
    """Share of maskable tokens picked."""
    mask_replace_prob: float = 0.8
    """Share of picked tokens replaced by the mask token."""
    random_replace_prob: float = 0.1
    """Share of picked tokens replaced by a random token."""
    json: bool = False
    """Print the rows as JSON."""
    trust_remote_code: bool = False
    """Allow a hub tokenizer to run its own code."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "seed": not_negative(),
    }

    def __post_init__(self) -> None:
        check_masking_probabilities(self.mask_prob, self.mask_replace_prob, self.random_replace_prob)
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class EvalConfig(ModelOptions, HeldOutOptions):
    """Settings of `unmask eval`: held-out metrics on fixed masked positions."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)
    split: Literal["val", "train"] = "val"
    """Split of a store to score: val or train."""
    attention_across_docs: bool = True
    """Whether a window's documents attend to each other; --no-attention-across-docs scores a model as a run with that flag trained it."""
    json: bool = False
    """Print the metrics as JSON."""


@dataclass(kw_only=True)
class ScoreConfig(ModelOptions, TextsOptions):
    """Settings of `unmask score`: pseudo-log-likelihood of sentences."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model", "texts")
    texts: list[str] = field(default_factory=list)
    """Sentences; `-` (or none, with --file unset) reads stdin, one per line."""
    file: str | None = None
    """File of sentences, one per line."""
    batch_size: int = 64
    """Masked copies per forward pass."""
    json: bool = False
    """Print one JSON object per sentence, with per-token scores."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "batch_size": at_least(1),
    }

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class EmbedConfig(ModelOptions):
    """Settings of `unmask embed`: sentence or token embeddings."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)
    file: str | None = None
    """File of texts, one per line; row i of the output is line i."""
    out: str | None = None
    """Where to save the array: a .npy file (or .npz, the array under `embeddings`), written as named."""
    pooling: Literal["mean", "cls"] = "mean"
    """mean (over the attention mask) or cls."""
    normalize: bool = False
    """Scale each sentence vector to unit length."""
    batch_size: int = 32
    """Texts per forward pass (batches are formed by length)."""
    tokens: str | None = None
    """Show the contextual embedding of every token of this text."""
    texts: list[str] = field(default_factory=list)
    """Texts to embed, in order (instead of --file)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "batch_size": at_least(1),
    }

    def __post_init__(self) -> None:
        ModelOptions.__post_init__(self)
        check_fields(self, self.bounds())
        given = (self.file is not None) + (self.tokens is not None) + bool(self.texts)
        check_setting(given == 1, "file", "give --file F or --texts (sentence embeddings), or --tokens TEXT (token embeddings)")
        if self.out is not None:
            suffix = Path(self.out).suffix
            check_setting(
                suffix in (".npy", ".npz"),
                "out",
                f"{self.out}: embeddings are written as .npy (or .npz), not {suffix or 'a file without an extension'}; "
                f"name it {Path(self.out).with_suffix('.npy')}",
            )


@dataclass(kw_only=True)
class CompareConfig(DeviceOptions, HeldOutOptions):
    """Settings of `unmask compare`: a base and a trained model on the same masked positions."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("base", "trained")
    base: str
    """The model before training."""
    trained: str
    """The model after training (a run folder works)."""
    out: str | None = None
    """Folder for report.md, report.json and chart.png; default: TRAINED/compare where the trained model is a run folder (give it otherwise)."""
    examples: int = 8
    """Positions to show where the two top-1 predictions differ."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "examples": not_negative(),
    }

    def __post_init__(self) -> None:
        HeldOutOptions.__post_init__(self)
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class PlotConfig(Settings):
    """Settings of `unmask plot`: a run's curves as a PNG."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("run",)
    run: str
    """Run folder (with metrics.jsonl)."""
    out: str | None = None
    """PNG to write (default RUN/curves.png)."""


@dataclass(kw_only=True)
class PairsConfig(DeviceOptions):
    """Settings of `unmask pairs`: minimal-pair accuracy by pseudo-log-likelihood."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model", "pairs", "models")
    model: str
    """Model to score: run folder, model folder, hub id or alias."""
    pairs: str
    """JSON Lines file of minimal pairs, one pair a line (BLiMP's format)."""
    models: list[str] = field(default_factory=list)
    """More models to score on the same pairs, one column each."""
    scoring: Literal["pll", "pll-word-l2r"] = "pll-word-l2r"
    """`pll` masks one token at a time (Salazar et al., 2020); `pll-word-l2r` also masks the later pieces of its word (Kauf and Ivanova, 2023), which rates multi-piece words fairly."""
    good_field: str = "sentence_good"
    """Field holding the acceptable sentence."""
    bad_field: str = "sentence_bad"
    """Field holding the unacceptable sentence."""
    group_field: str = "UID"
    """Field to report accuracy by (BLiMP's paradigm); empty for none."""
    batch_size: int = 64
    """Masked copies per forward pass."""
    json: bool = False
    """Print the results as JSON instead of a table."""
    out: str | None = None
    """Also write the results, with every pair's scores, to this JSON file."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own code."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "batch_size": at_least(1),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.bounds())
        check_setting(bool(self.good_field) and bool(self.bad_field), "good_field", "the good and bad fields must be named")


@dataclass(kw_only=True)
class ExportConfig(Settings):
    """Settings of `unmask export`: a checkpoint as a Hugging Face model folder."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("run",)
    run: str
    """Run folder (with checkpoints/)."""
    out: str
    """Folder to write the model to (save_pretrained format, with the tokenizer); must not exist."""
    step: int | None = None
    """Checkpoint step to export (default: the newest complete one)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "step": not_negative(),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class ServeConfig(DeviceOptions):
    """Settings of `unmask serve`: the local web page for runs and models."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("paths",)
    paths: list[str] = field(default_factory=lambda: ["runs"])
    """Run folders, or folders that hold runs (looked through two levels deep). Only these are served."""
    models: list[str] = field(default_factory=list)
    """More models to offer beside the runs' own (model folders, hub ids, minilm-l6), e.g. the base a run started from."""
    host: str = "127.0.0.1"
    """Address to listen on; the default serves this machine only. 0.0.0.0 shows the page to the network."""
    port: int = 8000
    """Port to listen on."""
    compare_batches: int = 20
    """Held-out batches the compare page scores (of 32 windows of 128 tokens)."""
    trust_remote_code: bool = False
    """Allow a hub model given with --models to run its own code (never a request's choice)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "compare_batches": at_least(1),
    }

    def __post_init__(self) -> None:
        check_setting(len(self.paths) > 0, "paths", "give at least one run folder or folder of runs")
        check_setting(1 <= self.port <= 65535, "port", f"must be between 1 and 65535, got {self.port}")
        check_fields(self, self.bounds())
