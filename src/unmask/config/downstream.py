"""Settings of the downstream commands: `unmask finetune`, `unmask probe`, `unmask downstream`,
and the typed records of a suite file.

A suite file is YAML: a `name`, an optional `description`, and a list of `tasks`, each a
`SuiteTask` (data, fields, kind, metric, mode, seeds, and the fine-tuning or probe settings
that differ from the defaults). An unknown key anywhere is an error that names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import yaml

from unmask.config.base import LOOP_BOUNDS, Bound, Settings, at_least, check_fields, check_setting, not_negative, positive
from unmask.config.sections import AttentionName, OptimizerSection
from unmask.config.use import ModelOptions
from unmask.errors import UnmaskError

TaskKind = Literal["classification", "pair-classification", "regression", "token-classification"]


@dataclass(kw_only=True)
class TaskOptions(Settings):
    """The data of a task and how it is scored (shared by finetune and probe)."""

    task: TaskKind = "classification"
    """`classification` (a text, a class), `pair-classification` (two texts, a class), `regression` (a text or pair, a number), `token-classification` (words and a tag per word)."""
    train: str
    """Labelled training data: .jsonl/.csv/.tsv (also compressed), .parquet, .arrow, a folder or glob of them, a saved dataset, hf:NAME, or sample:pydocs-sections:train."""
    eval: str
    """Labelled evaluation data, as --train (sample:pydocs-sections:eval for the offline task)."""
    text_field: str | None = None
    """Field of the text (token classification: of the list of words); default `text` (`tokens`)."""
    text_pair_field: str | None = None
    """Field of the second text of a pair (default `text_pair` for pair-classification)."""
    label_field: str | None = None
    """Field of the label: a class (string or integer), a number (regression) or a list of tags; default `label` (`tags`)."""
    metric: list[str] = field(default_factory=list)
    """Metrics to report, the first being the task's score (default: accuracy, macro_f1 / pearson, spearman / entity_f1, word_accuracy)."""
    hf_config: str | None = None
    """Configuration of an hf:NAME dataset (e.g. `cola` of nyu-mll/glue)."""
    hf_split: str = "train"
    """Split of an hf:NAME or saved dataset to train on."""
    hf_eval_split: list[str] = field(default_factory=lambda: ["validation"])
    """Split(s) of an hf:NAME or saved dataset to evaluate on; several are each scored and averaged (MNLI's matched and mismatched)."""
    max_train_examples: int | None = None
    """Train on the first N training examples only (a quick look)."""
    max_eval_examples: int | None = None
    """Evaluate on the first N examples of each evaluation split only."""
    max_length: int = 128
    """Tokens per example; longer ones are cut (one line says how many)."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "max_train_examples": at_least(1),
        "max_eval_examples": at_least(1),
        "max_length": at_least(8),
    }

    def _check_task_options(self) -> None:
        check_setting(bool(self.train), "train", "give the labelled training data")
        check_setting(bool(self.eval), "eval", "give the labelled evaluation data")
        check_setting(len(self.hf_eval_split) > 0, "hf_eval_split", "give at least one split")
        check_fields(self, self.bounds())


@dataclass(kw_only=True)
class FinetuneConfig(OptimizerSection, ModelOptions, TaskOptions):
    """Settings of `unmask finetune`: an encoder with a fresh task head, trained on labelled data."""

    model: str
    """Run folder, model folder, checkpoint folder, hub id or alias (minilm-l6); a fresh task head is put on its encoder."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)
    out: str
    """Folder of the result: config.yaml, metrics.jsonl, summary.json, model/ (and seed-N/ with --seeds above 1)."""
    lr: float = 5e-5
    """Peak learning rate."""
    epochs: float = 3.0
    """Passes over the training data."""
    batch_size: int = 32
    """Examples per step, per process."""
    eval_batch_size: int = 64
    """Examples per evaluation batch."""
    warmup_fraction: float = 0.06
    """Share of the steps spent in linear warmup, then linear decay to 0."""
    dropout: float | None = None
    """Dropout of every dropout layer while fine-tuning (default: the model's own)."""
    seeds: int = 1
    """Fine-tune this many times, seeds --seed, --seed + 1, ...; the summary gives the median, mean and spread."""
    seed: int = 0
    """First seed (of the head's init, the data order and dropout)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding), in a seeded order."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast where it is faster (GPUs that support it, CPUs with AMX or AVX512-BF16), fp32 elsewhere."""
    deterministic: bool = False
    """Bit-identical runs and resumes on a GPU (deterministic algorithms, cuBLAS workspace, no TF32): slower."""
    attention: AttentionName = "auto"
    """Attention kernel: `auto` (torch's varlen on CUDA in bf16/fp16 without attention dropout, else flash-attn where installed, else sdpa), sdpa, flex, varlen (padded batches run unpadded, CUDA), flash."""
    eval_every_epoch: bool = False
    """Also evaluate at the end of every epoch, not only at the end."""
    save_model: bool = True
    """Save the fine-tuned model (save_pretrained, loads with transformers' pipeline)."""
    checkpoint_every: int = 0
    """Save a resumable checkpoint every N steps (0: at the end of every epoch)."""
    resume: bool = False
    """Continue in --out: finished seeds are kept, the one in progress continues from its newest checkpoint."""
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    """`bar` in a terminal, `lines` in a log file."""
    log_every: int = 10
    """Write a metrics line every N steps."""

    BOUNDS: ClassVar[dict[str, Bound]] = {
        "epochs": positive(),
        **{name: at_least(1) for name in ("batch_size", "eval_batch_size", "seeds", "log_every")},
        **LOOP_BOUNDS,
        "checkpoint_every": not_negative(),
    }

    def __post_init__(self) -> None:
        self._check_task_options()  # every bound of the class too


# What may change when a fine-tuning is resumed: nothing that changes its arithmetic.
FINETUNE_RESUMABLE = frozenset(
    {
        "out",
        "resume",
        "device",
        "progress",
        "log_every",
        "checkpoint_every",
        "eval_batch_size",
        "save_model",
        "on_nonfinite",
        "max_nonfinite",
    }
)


@dataclass(kw_only=True)
class ProbeConfig(ModelOptions, TaskOptions):
    """Settings of `unmask probe`: a linear model on frozen embeddings, a checkpoint's score in seconds."""

    model: str
    """Run folder, model folder, checkpoint folder, hub id or alias (minilm-l6): its frozen encoder's features are probed."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("model",)
    pooling: Literal["mean", "cls"] = "mean"
    """How a text's token vectors become one: the mean over the attention mask, or [CLS]."""
    batch_size: int = 64
    """Texts per forward pass."""
    regularization: float = 1.0
    """Inverse strength C of the logistic regression (classes); the strength alpha of the ridge regression (numbers)."""
    json: bool = False
    """Print the result as JSON."""
    out: str | None = None
    """Also write the result to this JSON file."""

    BOUNDS: ClassVar[dict[str, Bound]] = {"batch_size": at_least(1), "regularization": positive()}

    def __post_init__(self) -> None:
        self._check_task_options()  # every bound of the class too


@dataclass(kw_only=True)
class DownstreamConfig(Settings):
    """Settings of `unmask downstream`: a suite of tasks over models or over a run's checkpoints."""

    POSITIONAL: ClassVar[tuple[str, ...]] = ("suite",)
    suite: str
    """Suite YAML file (tasks, data, fields, metrics, settings, seeds); `glue` and `pydocs` are the bundled ones."""
    models: list[str] = field(default_factory=list)
    """Models to score (run folders, model folders, hub ids, minilm-l6), one column each."""
    run: str | None = None
    """A run folder: score its checkpoints (see --steps); results are kept in RUN/downstream."""
    steps: str = "all"
    """With --run: `all` checkpoints, `final` (its model), or steps such as `100,200`."""
    out: str | None = None
    """Folder for results.jsonl, report.md, report.json and chart.png (default RUN/downstream, or downstream/)."""
    mode: Literal["suite", "probe", "finetune"] = "suite"
    """`suite`: each task as its file says; `probe` or `finetune`: every task that way."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda` or `cuda:N`."""
    trust_remote_code: bool = False
    """Allow a hub model to run its own code."""

    def __post_init__(self) -> None:
        check_setting((self.run is None) != (not self.models), "models", "give --models A B ... or --run RUN (one of them)")


@dataclass(kw_only=True)
class SuiteTask(TaskOptions):
    """One task of a suite file: the task's data and scoring (`TaskOptions`, the same fields as
    `unmask finetune`'s and `unmask probe`'s), how it is run, and settings for that run."""

    name: str
    mode: Literal["finetune", "probe"] = "finetune"
    seeds: int | list[int] = 1
    finetune: dict = field(default_factory=dict)
    """Fine-tuning settings that differ from `unmask finetune`'s defaults (lr, epochs, batch_size, ...)."""
    probe: dict = field(default_factory=dict)
    """Probe settings that differ from `unmask probe`'s defaults (pooling, regularization, ...)."""
    source: str = ""
    """Where the settings come from (a paper, a repository), for the reader."""

    def seed_list(self) -> list[int]:
        return list(self.seeds) if isinstance(self.seeds, list) else list(range(self.seeds))

    def task_options(self) -> dict:
        """The fields this task shares with `TaskOptions`."""
        shared = {f.name for f in dataclasses.fields(TaskOptions)}
        return {k: v for k, v in dataclasses.asdict(self).items() if k in shared}


@dataclass(kw_only=True)
class Suite(Settings):
    name: str
    description: str = ""
    tasks: list[SuiteTask]


_NOT_PER_TASK = {
    "model",
    "step",
    "device",
    "trust_remote_code",
    "out",
    "resume",
    "seeds",
    "seed",
    "progress",
    *(f.name for f in dataclasses.fields(TaskOptions)),
}


def _settings_of(values, cls: type, where: str) -> dict:
    if not isinstance(values, dict):
        raise UnmaskError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)} - _NOT_PER_TASK
    unknown = sorted(set(values) - known)
    if unknown:
        raise UnmaskError(f"{where}: unknown setting(s) {', '.join(unknown)} (settings: {', '.join(sorted(known))})")
    return values


def misplaced_keys(wrong: list[str]) -> str:
    """What to say of a suite task's unknown keys: a fine-tuning or probe setting given at the
    task's top level belongs under `finetune:` or `probe:`; the rest are unknown."""
    per_mode = {
        mode: {f.name for f in dataclasses.fields(cls)} - _NOT_PER_TASK
        for mode, cls in (("finetune", FinetuneConfig), ("probe", ProbeConfig))
    }
    parts, placed = [], set()
    for mode, names in per_mode.items():  # a setting of both modes is named under fine-tuning, the default mode
        moved = [k for k in wrong if k in names and k not in placed]
        placed.update(moved)
        if moved:
            example = ", ".join(f"{k}: ..." for k in moved)
            parts.append(f"{', '.join(moved)}: {mode} setting(s), which go under `{mode}:` ({mode}: {{{example}}})")
    unknown = [k for k in wrong if k not in placed]
    if unknown:
        parts.append(f"unknown key(s) {', '.join(unknown)}")
    return "; ".join(parts)


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every problem names the task and the key."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UnmaskError(f"{path}: cannot read the suite: {e}") from None
    if not isinstance(values, dict) or not isinstance(values.get("tasks"), list) or not values["tasks"]:
        raise UnmaskError(f"{path}: a suite is a mapping with `name` and a non-empty list of `tasks`")
    unknown = sorted(set(values) - {"name", "description", "tasks"})
    if unknown:
        raise UnmaskError(f"{path}: unknown key(s) {', '.join(unknown)} (keys: name, description, tasks)")
    tasks, names = [], set()
    known = {f.name for f in dataclasses.fields(SuiteTask)}
    for number, entry in enumerate(values["tasks"], 1):
        where = f"{path}: task {number}"
        if not isinstance(entry, dict):
            raise UnmaskError(f"{where}: expected a mapping, got {type(entry).__name__}")
        where = f"{path}: task '{entry.get('name', number)}'"
        wrong = sorted(set(entry) - known)
        if wrong:
            raise UnmaskError(f"{where}: {misplaced_keys(wrong)}")
        missing = [k for k in ("name", "train", "eval") if not entry.get(k)]
        if missing:
            raise UnmaskError(f"{where}: needs {', '.join(missing)}")
        kind = entry.get("task", "classification")
        if kind not in TaskKind.__args__:
            raise UnmaskError(f"{where}: task type '{kind}' is not one of {', '.join(TaskKind.__args__)}")
        mode = entry.get("mode", "finetune")
        if mode not in ("finetune", "probe"):
            raise UnmaskError(f"{where}: mode '{mode}' is not finetune or probe")
        if entry["name"] in names:
            raise UnmaskError(f"{where}: a second task of that name")
        names.add(entry["name"])
        seeds = entry.get("seeds", 1)
        if not (isinstance(seeds, int) and seeds >= 1) and not (
            isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)
        ):
            raise UnmaskError(f"{where}: seeds must be a count (at least 1) or a list of integers, got {seeds!r}")
        if isinstance(entry.get("metric"), str):
            entry = {**entry, "metric": [entry["metric"]]}
        if isinstance(entry.get("hf_eval_split"), str):
            entry = {**entry, "hf_eval_split": [entry["hf_eval_split"]]}
        _settings_of(entry.get("finetune", {}), FinetuneConfig, f"{where}: finetune")
        _settings_of(entry.get("probe", {}), ProbeConfig, f"{where}: probe")
        try:
            tasks.append(SuiteTask(**entry))
        except TypeError as e:
            raise UnmaskError(f"{where}: {e}") from None
    return Suite(name=str(values.get("name") or path.stem), description=str(values.get("description") or ""), tasks=tasks)
