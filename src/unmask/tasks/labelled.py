"""Downstream tasks: labelled data read and checked, label sets, encoding, and metrics.

Four kinds of task, the ones an encoder is fine-tuned for:
- `classification`: a text, a class (strings or integers; the set is read from the data);
- `pair-classification`: two texts encoded together (`[CLS] a [SEP] b [SEP]`), a class;
- `regression`: a text (or a pair, given `text_pair_field`), a number;
- `token-classification`: a list of words and a list of tags per record; the tag is
  predicted at each word's first sub-token (the other pieces get -100, as transformers
  does), and scored per word and per entity.

Metrics come from scikit-learn, scipy and seqeval (the `finetune` extra): accuracy,
macro-F1, binary F1, Matthews correlation, Pearson and Spearman correlation, and entity F1
(seqeval, the CoNLL definition) with per-word accuracy. The first metric of a task is its score.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from unmask.config.downstream import TaskKind
from unmask.data.masking import IGNORE_INDEX
from unmask.data.records import class_names, read_records
from unmask.data.sources import ReadOptions
from unmask.errors import UnmaskError, optional_import

TASK_KINDS: tuple[TaskKind, ...] = typing.get_args(TaskKind)

DEFAULT_FIELDS = {  # (text, text pair, label)
    "classification": ("text", None, "label"),
    "pair-classification": ("text", "text_pair", "label"),
    "regression": ("text", None, "label"),
    "token-classification": ("tokens", None, "tags"),
}
DEFAULT_METRICS = {
    "classification": ("accuracy", "macro_f1"),
    "pair-classification": ("accuracy", "macro_f1"),
    "regression": ("pearson", "spearman"),
    "token-classification": ("entity_f1", "word_accuracy"),
}
METRICS_FOR = {
    "classification": ("accuracy", "macro_f1", "f1", "mcc"),
    "pair-classification": ("accuracy", "macro_f1", "f1", "mcc"),
    "regression": ("pearson", "spearman"),
    "token-classification": ("entity_f1", "entity_precision", "entity_recall", "word_accuracy"),
}


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its kind, where its fields are, how it is scored."""

    kind: TaskKind
    text_field: str
    text_pair_field: str | None
    label_field: str
    metrics: tuple[str, ...]

    @classmethod
    def of(
        cls,
        kind: str,
        text_field: str | None = None,
        text_pair_field: str | None = None,
        label_field: str | None = None,
        metrics: Sequence[str] = (),
    ) -> TaskSpec:
        """Fill in the defaults of `kind`, and refuse a metric the kind cannot have."""
        if kind not in TASK_KINDS:
            raise UnmaskError(f"--task: '{kind}' is not one of {', '.join(TASK_KINDS)}")
        text, pair, label = DEFAULT_FIELDS[kind]
        pair = text_pair_field or pair
        if kind == "pair-classification" and not pair:
            raise UnmaskError("--text-pair-field: a pair-classification task needs the field of its second text")
        chosen = tuple(metrics) or DEFAULT_METRICS[kind]
        wrong = [m for m in chosen if m not in METRICS_FOR[kind]]
        if wrong:
            raise UnmaskError(f"--metric: {', '.join(wrong)} cannot score a {kind} task (choose from {', '.join(METRICS_FOR[kind])})")
        return cls(kind, text_field or text, pair if kind != "token-classification" else None, label_field or label, chosen)

    @property
    def is_regression(self) -> bool:
        return self.kind == "regression"

    @property
    def is_tokens(self) -> bool:
        return self.kind == "token-classification"

    def columns(self) -> dict[str, str]:
        found = {self.text_field: "--text-field", self.label_field: "--label-field"}
        if self.text_pair_field:
            found[self.text_pair_field] = "--text-pair-field"
        return found


@dataclass
class Examples:
    """One split of a task, as read: texts (or word lists), second texts, raw labels, where each came from."""

    texts: list = field(default_factory=list)
    pairs: list[str] | None = None
    labels: list = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def _check_words(value, where: str, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise UnmaskError(f"{where}: '{name}' must be a list of words, got {type(value).__name__}")
    return value


def read_examples(spec: TaskSpec, source: str, options: ReadOptions, limit: int | None = None, role: str = "--train") -> Examples:
    """Read and check one split; every problem names the record."""
    found = Examples(pairs=[] if spec.text_pair_field else None)
    for where, record in read_records(source, spec.columns(), options):
        if limit is not None and len(found) >= limit:
            break
        text, label = record[spec.text_field], record[spec.label_field]
        if label is None or (isinstance(label, str) and not label.strip()):
            raise UnmaskError(f"{where}: the label ('{spec.label_field}') is empty")
        if spec.is_tokens:
            words, tags = _check_words(text, where, spec.text_field), label
            if not isinstance(tags, list) or len(tags) != len(words):
                raise UnmaskError(f"{where}: '{spec.label_field}' must be a list of one tag per word ({len(words)} words)")
        elif not isinstance(text, str):
            raise UnmaskError(f"{where}: field '{spec.text_field}' is {type(text).__name__}, not a string")
        if spec.is_regression:
            label = _number(label, where, spec.label_field)
        found.texts.append(text)
        found.labels.append(label)
        found.wheres.append(where)
        if found.pairs is not None:
            pair = record[spec.text_pair_field]
            if not isinstance(pair, str):
                raise UnmaskError(f"{where}: field '{spec.text_pair_field}' is {type(pair).__name__}, not a string")
            found.pairs.append(pair)
    if not len(found):
        raise UnmaskError(f"{role} {source}: no records")
    return found


def _number(value, where: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UnmaskError(f"{where}: the regression label '{name}' is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise UnmaskError(f"{where}: the regression label '{name}' is {value!r}; it must be a finite number")
    return number


@dataclass(frozen=True)
class LabelSet:
    """Class names in id order; `id_of` maps a raw label (string or integer) to its id."""

    names: tuple[str, ...]
    raw: tuple

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def id_of(self, value) -> int:
        return self.raw.index(value)

    @classmethod
    def of(cls, train: Examples, spec: TaskSpec, declared: list[str] | None = None) -> LabelSet:
        """The labels of the training split: integers in numeric order (named as the dataset
        declares them, if it does), strings in sorted order. One class only is an error."""
        values = {tag for tags in train.labels for tag in tags} if spec.is_tokens else set(train.labels)
        if any(isinstance(v, bool) for v in values) or not all(isinstance(v, (int, str)) for v in values):
            kinds = sorted({type(v).__name__ for v in values})
            raise UnmaskError(f"--label-field {spec.label_field}: labels must be strings or integers, found {', '.join(kinds)}")
        if len({type(v) for v in values}) > 1:
            raise UnmaskError(f"--label-field {spec.label_field}: labels mix strings and integers; use one kind")
        if len(values) < 2:
            raise UnmaskError(f"--train: every label is {next(iter(values))!r}; a classifier needs at least two classes")
        raw = tuple(sorted(values))
        if declared and all(isinstance(v, int) and 0 <= v < len(declared) for v in raw):
            names = tuple(declared[v] for v in raw)
        else:
            names = tuple(str(v) for v in raw)
        return cls(names, raw)

    def check(self, examples: Examples, spec: TaskSpec) -> None:
        """An eval label the training split never had is an error: nothing could predict it."""
        known = set(self.raw)
        for where, label in zip(examples.wheres, examples.labels):
            for value in label if spec.is_tokens else [label]:
                if value not in known:
                    raise UnmaskError(f"{where}: label {value!r} does not occur in the training data ({', '.join(self.names[:10])})")


def declared_names(spec: TaskSpec, source: str, options: ReadOptions) -> list[str] | None:
    return None if spec.is_regression else class_names(source, spec.label_field, options)


# ---------------------------------------------------------------- encoding


@dataclass
class Encoded:
    """Token ids per example and their targets: a class id, a number, or a tag id per token (-100 off the first sub-tokens)."""

    input_ids: list[list[int]]
    targets: list
    word_ids: list[list[int | None]] | None = None
    """For token classification: the word of each token, to map predictions back to words."""
    truncated: int = 0
    """Examples longer than the maximum length, cut to fit."""

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self.input_ids))


def encode(tokenizer, examples: Examples, spec: TaskSpec, labels: LabelSet | None, max_length: int) -> Encoded:
    """Tokenize a split once (the fast tokenizer, in a batch) and attach the targets."""
    if spec.is_tokens:
        full = tokenizer(examples.texts, is_split_into_words=True, truncation=False)
        cut = tokenizer(examples.texts, is_split_into_words=True, truncation=True, max_length=max_length)
        word_ids = [cut.word_ids(i) for i in range(len(examples))]
        targets = []
        for words, tags in zip(word_ids, examples.labels):
            previous, row = None, []
            for word in words:
                row.append(IGNORE_INDEX if word is None or word == previous else labels.id_of(tags[word]))
                previous = word
            targets.append(row)
        truncated = sum(len(a) > len(b) for a, b in zip(full["input_ids"], cut["input_ids"]))
        return Encoded(cut["input_ids"], targets, word_ids, truncated)
    pairs = examples.pairs
    full = tokenizer(examples.texts, pairs, truncation=False)
    cut = tokenizer(examples.texts, pairs, truncation=True, max_length=max_length)
    targets = list(examples.labels) if spec.is_regression else [labels.id_of(v) for v in examples.labels]
    truncated = sum(len(a) > len(b) for a, b in zip(full["input_ids"], cut["input_ids"]))
    return Encoded(cut["input_ids"], targets, None, truncated)


def word_predictions(encoded: Encoded, token_predictions: list[list[int]], examples: Examples, fill: int) -> list[list[int]]:
    """Token classification: each word's predicted tag id, read at its first sub-token; a word
    cut off by truncation gets `fill` (the most frequent training tag)."""
    result = []
    for words, predicted, truth in zip(encoded.word_ids, token_predictions, examples.labels):
        row = [fill] * len(truth)
        previous = None
        for position, word in enumerate(words):
            if word is not None and word != previous:
                row[word] = predicted[position]
            previous = word
        result.append(row)
    return result


# ---------------------------------------------------------------- metrics


def _classification_metric(name: str) -> Callable:
    metrics = optional_import("sklearn.metrics", "scoring a classification task", "finetune")
    return {
        "accuracy": metrics.accuracy_score,
        "macro_f1": lambda y, p: metrics.f1_score(y, p, average="macro"),
        "f1": lambda y, p: metrics.f1_score(y, p, average="binary", pos_label=1),
        "mcc": metrics.matthews_corrcoef,
    }[name]


def compute_metrics(spec: TaskSpec, predictions: list, references: list, labels: LabelSet | None) -> dict[str, float]:
    """Every metric of the task, by name; predictions and references are class ids, numbers,
    or (token classification) lists of tag ids per word."""
    results: dict[str, float] = {}
    if spec.is_regression:
        stats = optional_import("scipy.stats", "scoring a regression task", "finetune")
        same = len(set(predictions)) <= 1 or len(set(references)) <= 1  # a constant has no correlation
        results["pearson"] = 0.0 if same else float(stats.pearsonr(predictions, references)[0])
        results["spearman"] = 0.0 if same else float(stats.spearmanr(predictions, references)[0])
    elif spec.is_tokens:
        seqeval = optional_import("seqeval.metrics", "scoring a token-classification task", "finetune")
        truth = [[labels.names[t] for t in row] for row in references]
        guess = [[labels.names[t] for t in row] for row in predictions]
        results["entity_f1"] = float(seqeval.f1_score(truth, guess, zero_division=0))
        results["entity_precision"] = float(seqeval.precision_score(truth, guess, zero_division=0))
        results["entity_recall"] = float(seqeval.recall_score(truth, guess, zero_division=0))
        flat_truth = [t for row in references for t in row]
        results["word_accuracy"] = float(np.mean(np.asarray([p for row in predictions for p in row]) == np.asarray(flat_truth)))
    else:
        binary = labels is not None and len(labels.names) == 2
        for name in METRICS_FOR[spec.kind]:
            if name == "f1" and not binary:
                continue
            results[name] = float(_classification_metric(name)(references, predictions))
    return {name: results[name] for name in (*spec.metrics, *[n for n in results if n not in spec.metrics]) if name in results}


def score(spec: TaskSpec, metrics: dict[str, float]) -> float:
    """A task's single number: its first metric."""
    return metrics[spec.metrics[0]]


# ---------------------------------------------------------------- a task, read and encoded


@dataclass
class TaskData:
    """Everything a fine-tuning or a probe needs of a task's data."""

    spec: TaskSpec
    labels: LabelSet | None
    """None for regression."""
    train: Examples
    train_encoded: Encoded
    evals: dict[str, tuple[Examples, Encoded]]
    """Evaluation split name -> its examples and their encoding."""
    fill: int = 0
    """Token classification: the most frequent training tag, for words cut off by truncation."""


def _is_dataset(source: str) -> bool:
    from pathlib import Path

    from unmask.data.sources import HUB_PREFIX, is_saved_dataset

    return source.startswith(HUB_PREFIX) or (Path(source).is_dir() and is_saved_dataset(Path(source)))


def load_task(options, tokenizer, echo: Callable[[str], None] = print) -> TaskData:
    """Read, check and encode a task's splits (`options`: a `config.TaskOptions`)."""
    spec = TaskSpec.of(options.task, options.text_field, options.text_pair_field, options.label_field, options.metric)
    reading = ReadOptions(hf_config=options.hf_config, hf_split=options.hf_split)
    train = read_examples(spec, options.train, reading, options.max_train_examples, "--train")
    labels = None if spec.is_regression else LabelSet.of(train, spec, declared_names(spec, options.train, reading))
    splits = options.hf_eval_split if _is_dataset(options.eval) else ["eval"]
    evals = {}
    for split in splits:
        eval_reading = ReadOptions(hf_config=options.hf_config, hf_split=split)
        examples = read_examples(spec, options.eval, eval_reading, options.max_eval_examples, "--eval")
        if labels is not None:
            labels.check(examples, spec)
        evals[split] = (examples, encode(tokenizer, examples, spec, labels, options.max_length))
    train_encoded = encode(tokenizer, train, spec, labels, options.max_length)
    cut = [(name, e.truncated, len(x)) for name, (x, e) in [("training", (train, train_encoded)), *evals.items()] if e.truncated]
    if cut:
        shown = ", ".join(f"{count:,} of {total:,} {name}" for name, count, total in cut)
        echo(f"note: {shown} examples are longer than --max-length {options.max_length} tokens and were cut to fit")
    fill = 0
    if spec.is_tokens:
        counts = np.bincount([labels.id_of(tag) for tags in train.labels for tag in tags], minlength=len(labels.names))
        fill = int(counts.argmax())
    return TaskData(spec, labels, train, train_encoded, evals, fill)
