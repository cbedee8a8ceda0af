"""The Python API: one function per command, taking the same settings as the command.

    import unmask
    store = unmask.prepare(sources=["sample:pydocs"], out="runs/pydocs", tokenizer="minilm-l6")
    run = unmask.train(model="minilm-l6", data=[str(store.path)], out="runs/demo", max_steps=20)
    unmask.fill(run.path, texts=["The [MASK] statement leaves a loop early."])[0].best_guess()

Each function takes its command's settings as keyword arguments (their names are the flags'
with underscores: `--batch-size` is `batch_size`) or as the typed settings object
(`unmask.config.TrainConfig`, ...), with the same defaults and checks, recipe resolution
included, and raises `UnmaskError` with the one-line message the CLI prints. It returns a
typed result and prints nothing unless `verbose=True` (notes to stderr, progress bars).
The `unmask` command is a table over these functions (`unmask.cli`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from unmask import config as settings
from unmask.config.resolve import resolve, resume_file, split_positionals
from unmask.errors import UnmaskError, option, setting
from unmask.storage.rundir import RunDir
from unmask.tables import format_value

Settings = TypeVar("Settings")


def _quiet(_: str) -> None:
    pass


def _echo(verbose: bool) -> Callable[[str], None]:
    return (lambda line: print(line, file=sys.stderr)) if verbose else _quiet


def build_settings(cls: type[Settings], given: Settings | None, values: dict[str, Any], args: tuple = ()) -> Settings:
    """The settings object of a call, resolved as the command line resolves them
    (`config.resolve`): `args` as the command's positionals, `given` (a settings object; the
    fields its constructor was named count as chosen) with `values` (keyword arguments) on top."""
    given, positional = split_positionals(cls, args, given)
    return resolve(cls, given, {**positional, **values})


def train_settings(
    config: settings.TrainConfig | None = None, echo: Callable[[str], None] = _quiet, args: tuple = (), **values
) -> settings.TrainConfig:
    """TrainConfig for a call, as the CLI resolves it: `out=RUN, resume=True` alone reads the
    run's own config.yaml, and a recipe's values stand in for the defaults (what the caller
    named, as keyword arguments or in the settings object's constructor, wins, with a note)."""
    config, positional = split_positionals(settings.TrainConfig, args, config)
    values = {**positional, **values}
    from_file, file = {}, None
    if config is None and values.get("resume") and values.get("out"):
        file = resume_file(str(values["out"]), "data" in values)
        from_file = settings.load_partial_yaml(settings.TrainConfig, file) if file else {}
    return resolve(settings.TrainConfig, config, values, from_file=from_file, file=file, echo=echo)


@dataclass
class Store:
    """A token store written by `prepare`."""

    path: Path
    meta: dict
    """Its meta.json: splits with their documents and tokens, the tokenizer, what was skipped."""


@dataclass
class Tokenizer:
    """A vocabulary trained by `tokenizer`."""

    path: Path
    summary: dict


@dataclass
class TrainedRun:
    """A training run: its folder, its summary (summary.json) and its final model."""

    path: Path
    summary: dict

    @property
    def model(self) -> Path:
        """The save_pretrained folder (loads with plain transformers)."""
        return RunDir(self.path).model

    @property
    def metrics(self) -> list[dict]:
        """Every line of metrics.jsonl: training steps and evaluations."""
        return RunDir(self.path).read_metrics()[0]

    def _repr_html_(self) -> str:
        """In Jupyter: the run's loss curves as a small chart, and its held-out numbers."""
        from unmask.tables import html_table, svg_lines

        records = self.metrics
        curves = {
            "train loss": [(r["step"], r["loss"]) for r in records if r.get("loss") is not None],
            "held-out loss": [(r["step"], r["eval_loss"]) for r in records if r.get("eval_loss") is not None],
        }
        numbers = [["steps", str(self.summary.get("steps"))], ["training tokens", f"{self.summary.get('train_tokens', 0):,}"]]
        numbers += [
            [name, format_value(self.summary.get(key), "{:.2%}")]
            for name, key in (("held-out top-1", "eval_accuracy"), ("held-out top-5", "eval_top5_accuracy"))
        ]
        numbers += [["held-out loss", format_value(self.summary.get("eval_loss"), "{:.4f}")]]
        return svg_lines({k: v for k, v in curves.items() if v}, f"{self.path.name}: MLM loss by step") + html_table(
            [["", "value"], *numbers]
        )


@dataclass
class Evaluation:
    """Held-out masked-token metrics of one model (`metrics`), and of each store when several were given."""

    model: str
    data: list[str]
    windows: int
    metrics: Any
    """An `evaluate.heldout.MlmMetrics`: loss, perplexity, accuracy, top-5, whole words, word pieces."""
    sources: dict[str, Any] = field(default_factory=dict)

    def _repr_html_(self) -> str:
        """In Jupyter: the held-out numbers, one column per store where there are several."""
        from unmask.tables import html_table

        columns = {"all": self.metrics, **(self.sources if len(self.sources) > 1 else {})}
        rows = [["", *columns]]
        for name, key, pattern in (
            ("loss", "loss", "{:.4f}"),
            ("perplexity", "perplexity", "{:.2f}"),
            ("top-1", "accuracy", "{:.2%}"),
            ("top-5", "top5_accuracy", "{:.2%}"),
        ):
            rows.append([name, *(format_value(getattr(m, key), pattern) for m in columns.values())])
        return html_table(rows, f"{self.model} on {', '.join(self.data)}: {self.windows} held-out windows")

    def as_dict(self) -> dict:
        """The numbers as JSON would hold them (what `unmask eval --json` prints)."""
        per = {name: m.as_dict() for name, m in self.sources.items()} if len(self.sources) > 1 else None
        return {
            "model": self.model,
            "data": self.data,
            "windows": self.windows,
            **self.metrics.as_dict(),
            **({"sources": per} if per else {}),
        }


class Comparison(dict):
    """`compare`'s report (a dict, as report.json holds it), shown in Jupyter as its table, notes and chart."""

    def _repr_html_(self) -> str:
        import base64
        from html import escape

        from unmask.tables import html_table

        parts = [html_table(self["table"], f"{self['base']} against {self['trained']}")]
        parts += [f"<p>note: {escape(note)}</p>" for note in self.get("notes", [])]
        chart = self.get("chart")
        if chart and Path(chart).is_file():
            parts.append(
                f"<img src='data:image/png;base64,{base64.b64encode(Path(chart).read_bytes()).decode()}' style='max-width:640px'/>"
            )
        return "".join(parts)


class FineTuning(dict):
    """`finetune`'s summary (a dict, as summary.json holds it), shown in Jupyter as each metric over seeds."""

    def _repr_html_(self) -> str:
        from unmask.tables import html_table

        rows = [["metric", "median", "std", "min", "max"]]
        for name, value in self["metrics"].items():
            rows.append([name, *(format_value(value.get(k), "{:.4f}") for k in ("median", "std", "min", "max"))])
        return html_table(rows, f"fine-tuned {self.get('model', '')}: {len(self.get('seeds', []))} seed(s)")


@dataclass
class Embeddings:
    """Sentence embeddings (one row per text), or the token embeddings of one text (`tokens` set)."""

    vectors: Any
    """A numpy array: texts x dimensions, or tokens x dimensions."""
    tokens: list[str] | None = None
    token_ids: list[int] | None = None
    saved: Path | None = None


def prepare(*args, config: settings.PrepareConfig | None = None, verbose: bool = False, **values) -> Store:
    """`unmask prepare`: text sources to a token store."""
    from unmask.data.prepare import prepare as prepare_store

    config = build_settings(settings.PrepareConfig, config, values, args)
    meta = prepare_store(config, progress=verbose)
    return Store(Path(config.merge or config.index or config.out), meta)


def tokenizer(*args, config: settings.TokenizerConfig | None = None, verbose: bool = False, **values) -> Tokenizer:
    """`unmask tokenizer`: train a vocabulary of your own."""
    from unmask.data.tokenizer_training import train_tokenizer

    config = build_settings(settings.TokenizerConfig, config, values, args)
    return Tokenizer(Path(config.out), train_tokenizer(config, progress=verbose))


def train(*args, config: settings.TrainConfig | None = None, verbose: bool = False, **values) -> TrainedRun:
    """`unmask train`: train or continue pretraining; returns the run. Under torchrun every
    process calls it; rank 0's summary is the run's. A SIGTERM or Ctrl-C raises
    `runtime.preemption.Stopped` after the checkpoint is written. (The plan, `--plan`, is
    `unmask.plan`.)"""
    config = train_settings(config, _echo(verbose), args, **values)
    if config.plan:
        raise UnmaskError(f"{setting('plan')}: asks for the plan, which `unmask.plan` returns; `unmask.train` trains")
    hook = None
    if config.downstream:
        from unmask.tasks.suites import checkpoint_scorer

        hook = checkpoint_scorer(config)
    return TrainedRun(Path(config.out), _run_training(config, verbose, hook))


def plan(*args, config: settings.TrainConfig | None = None, verbose: bool = False, **values) -> dict:
    """`unmask train ... --plan`: parameters, FLOPs and memory per step, then tokens/s, MFU and
    the time to the end measured over a few steps of the run, which is not started (nothing is
    written to `out`). The same settings as `train`."""
    config = train_settings(config, _echo(verbose), args, **{**values, "plan": True})
    return _run_training(config, verbose, None)


def _run_training(config: settings.TrainConfig, verbose: bool, hook) -> dict:
    from unmask.pretrain.train import train as run_training

    return run_training(config, progress=verbose, echo=_echo(verbose), score_checkpoint=hook)


def read_texts(texts: list[str], file: str | None, purpose: str = "fill") -> tuple[list[str], list[str]]:
    """Texts and a label naming where each came from (file:line), for error messages; `-` reads stdin."""
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UnmaskError(f"--file {file}: cannot read: {e}") from None
        pairs = [(line.rstrip("\r"), f"{file}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    elif texts == ["-"]:
        pairs = [(line.rstrip("\r\n"), f"stdin:{n}") for n, line in enumerate(sys.stdin, 1) if line.strip()]
    elif texts:
        pairs = [(text, f"text {n}") for n, text in enumerate(texts, 1)]
    else:
        raise UnmaskError("give texts, --file F, or pipe texts on stdin")
    if not pairs:
        raise UnmaskError(f"no texts to {purpose}" + (f": {file} has no non-blank line" if file is not None else ""))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _model_and_texts(values: dict, model, texts) -> dict:
    """Let `fill(run, ["a [MASK]."])` and `fill(run, "a [MASK].")` stand for model=, texts=."""
    if model is not None:
        values["model"] = str(model)
    if texts is not None:
        values["texts"] = [texts] if isinstance(texts, str) else list(texts)
    return values


def fill(model=None, texts=None, /, config: settings.FillConfig | None = None, *, verbose: bool = False, **values) -> list:
    """`unmask fill`: the top-k candidates of every mask; a list of `infer.FillResult`, one per
    text. With `against` set, `fill_against` gives both models' fills of the same texts."""
    config = build_settings(settings.FillConfig, config, _model_and_texts(values, model, texts))
    return _fills(config, *read_texts(config.texts, config.file), _echo(verbose))[0]


def fill_against(
    model=None, texts=None, /, config: settings.FillConfig | None = None, *, verbose: bool = False, **values
) -> tuple[list, list]:
    """`unmask fill --against`: the same masks filled by `model` and by `against`, the texts read
    once (so stdin serves both)."""
    config = build_settings(settings.FillConfig, config, _model_and_texts(values, model, texts))
    if config.against is None:
        raise UnmaskError("--against: give the second model to fill the same masks with")
    return _fills(config, *read_texts(config.texts, config.file), _echo(verbose))


def _fills(config: settings.FillConfig, texts: list[str], labels: list[str], echo: Callable[[str], None]) -> tuple[list, list | None]:
    """The fills of `config.model` and, when set, of `config.against` (its final model, not --step)."""
    from unmask.infer import Filler

    filled = []
    for name, step in ((config.model, config.step), *(((config.against, None),) if config.against is not None else ())):
        filler = Filler(name, config.device, config.trust_remote_code, echo=echo, step=step, precision=config.precision)
        filled.append(filler.fill(texts, top_k=config.top_k, batch_size=config.batch_size, labels=labels))
    return filled[0], (filled[1] if len(filled) > 1 else None)


def inspect(text=None, /, config: settings.InspectConfig | None = None, **values) -> list:
    """`unmask inspect`: one masking draw on a sentence, as `infer.InspectedToken` rows."""
    from unmask.infer import inspect_masking

    if text is not None:
        values["text"] = text
    c = build_settings(settings.InspectConfig, config, values)
    return inspect_masking(
        c.text,
        c.model,
        c.seed,
        c.mask_prob,
        c.mask_replace_prob,
        c.random_replace_prob,
        trust_remote_code=c.trust_remote_code,
        masking=c.masking,
    )


def evaluate(model=None, /, config: settings.EvalConfig | None = None, *, verbose: bool = False, **values) -> Evaluation:
    """`unmask eval`: held-out loss, perplexity and accuracy on fixed masked positions (fp32 unless precision='bf16')."""
    from unmask.evaluation.heldout import combine, evaluate_model, held_out_sets
    from unmask.infer import LoadedModel

    c = build_settings(settings.EvalConfig, config, _model_and_texts(values, model, None))
    loaded = LoadedModel(c.model, c.device, c.trust_remote_code, echo=_echo(verbose), step=c.step, precision=c.precision)
    sets = held_out_sets(c.data, loaded.tokenizer, min(c.seq_len, loaded.max_len), c.split)
    results = {
        name: evaluate_model(
            loaded.lm,
            windows,
            batch_size=c.batch_size,
            device=loaded.device,
            dtype=loaded.dtype,
            max_batches=c.max_batches,
            progress=verbose,
            documents_apart=not c.attention_across_docs,
        )[0]
        for name, windows in sets.items()
    }
    return Evaluation(c.model, list(c.data), sum(len(w) for w in sets.values()), combine(list(results.values())), results)


def score(model=None, texts=None, /, config: settings.ScoreConfig | None = None, *, verbose: bool = False, **values) -> list:
    """`unmask score`: pseudo-log-likelihoods, a list of `infer.SentenceScore`."""
    from unmask.infer import Scorer

    c = build_settings(settings.ScoreConfig, config, _model_and_texts(values, model, texts))
    texts, labels = read_texts(c.texts, c.file, purpose="score")
    scorer = Scorer(c.model, c.device, c.trust_remote_code, echo=_echo(verbose), step=c.step, precision=c.precision)
    return scorer.score(texts, batch_size=c.batch_size, labels=labels)


def embed(model=None, texts=None, /, config: settings.EmbedConfig | None = None, *, verbose: bool = False, **values) -> Embeddings:
    """`unmask embed`: sentence embeddings of `texts` (or of `file`, a line each), or with
    `tokens="..."` the token embeddings of one text; also saved to `out` when given."""
    from unmask.infer import Embedder

    c = build_settings(settings.EmbedConfig, config, _model_and_texts(values, model, texts))
    if c.out is not None:
        check_output_file(c.out, "out")
    echo = _echo(verbose)
    embedder = Embedder(c.model, c.device, c.trust_remote_code, echo=echo, step=c.step, precision=c.precision)
    if c.tokens is not None:
        tokens, ids, vectors = embedder.token_embeddings(c.tokens)
        return Embeddings(vectors, tokens, ids, save_array(c.out, vectors) if c.out else None)
    texts = c.texts or _lines_of(c.file)
    vectors = embedder.embed(texts, pooling=c.pooling, batch_size=c.batch_size, normalize=c.normalize, progress=verbose, echo=echo)
    return Embeddings(vectors, saved=save_array(c.out, vectors) if c.out else None)


def _lines_of(file: str) -> list[str]:
    try:
        lines = Path(file).read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UnmaskError(f"--file {file}: cannot read: {e}") from None
    texts = [line.rstrip("\r") for line in (lines[:-1] if lines[-1] == "" else lines)]  # row i is line i, blank lines too
    if not texts:
        raise UnmaskError(f"--file {file}: empty, no text to embed")
    return texts


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    import os

    target = Path(path)
    named = option(flag.replace("-", "_"), path)
    if target.is_dir():
        raise UnmaskError(f"{named}: is a folder, not a file")
    if not target.parent.is_dir():
        raise UnmaskError(f"{named}: the folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise UnmaskError(f"{named}: cannot write into {target.parent}")


def save_array(path: str, array) -> Path:
    """np.save, but atomic: a crash never leaves half an array. `.npz` writes an npz archive
    with the array under `embeddings`; a name without `.npy` gets it added, as np.save adds it
    (`EmbedConfig` refuses any other extension, so the command writes what was named)."""
    import io

    import numpy as np

    from unmask.storage.files import atomic_write_bytes

    buffer = io.BytesIO()
    if path.endswith(".npz"):
        target = Path(path)
        np.savez(buffer, embeddings=array)
    else:
        target = Path(path if path.endswith(".npy") else f"{path}.npy")
        np.save(buffer, array)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def pairs(*args, config: settings.PairsConfig | None = None, verbose: bool = False, **values) -> dict:
    """`unmask pairs`: minimal-pair accuracy of each model; the report also written to `out` when given."""
    import json

    from unmask.evaluation.pairs import as_json, score_pairs
    from unmask.storage.files import atomic_write_text

    c = build_settings(settings.PairsConfig, config, values, args)
    if c.out is not None:
        check_output_file(c.out, "out")
    results = score_pairs(c, echo=_echo(verbose))
    report = as_json(c, results)
    if c.out is not None:
        atomic_write_text(Path(c.out), json.dumps(report, indent=2))
    return report


def compare(*args, config: settings.CompareConfig | None = None, verbose: bool = False, **values) -> Comparison:
    """`unmask compare`: a base and a trained model on the same masked positions; report.md,
    report.json and chart.png in `out` (default: the trained run's compare/); returns the
    report, with the folder it is in as `folder`."""
    from unmask.evaluation.compare import compare as compare_models

    c = build_settings(settings.CompareConfig, config, values, args)
    if c.out is None and not RunDir(c.trained).is_run():
        raise UnmaskError(
            f"--out: {c.trained} is not a run folder to write the report into; give the folder for report.md, report.json and chart.png"
        )
    out = Path(c.out) if c.out is not None else RunDir(c.trained).compare
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file; give a folder for report.md, report.json and chart.png")
    report = compare_models(
        c.base,
        c.trained,
        c.data,
        out,
        seq_len=c.seq_len,
        batch_size=c.batch_size,
        max_batches=c.max_batches,
        examples=c.examples,
        device=c.device,
        precision=c.precision,
        echo=_echo(verbose),
        progress=verbose,
    )
    return Comparison({**report, "folder": str(out)})


def export(*args, config: settings.ExportConfig | None = None, verbose: bool = False, **values) -> Path:
    """`unmask export`: a complete checkpoint of a run as a save_pretrained folder; returns the checkpoint exported."""
    from unmask.runtime.export import export_checkpoint

    c = build_settings(settings.ExportConfig, config, values, args)
    return export_checkpoint(Path(c.run), Path(c.out), c.step, echo=_echo(verbose))


def finetune(*args, config: settings.FinetuneConfig | None = None, verbose: bool = False, **values) -> FineTuning:
    """`unmask finetune`: an encoder with a fresh task head; the summary (metrics over seeds)."""
    from unmask.tasks.finetune import finetune as run_finetune

    c = build_settings(settings.FinetuneConfig, config, values, args)
    return FineTuning(run_finetune(c, echo=_echo(verbose), progress=verbose))


def probe(*args, config: settings.ProbeConfig | None = None, verbose: bool = False, **values) -> dict:
    """`unmask probe`: a linear model on frozen embeddings; the result, also written to `out` when given."""
    import json

    from unmask.storage.files import atomic_write_text
    from unmask.tasks.probe import probe as run_probe

    c = build_settings(settings.ProbeConfig, config, values, args)
    if c.out is not None:
        check_output_file(c.out, "out")
    result = run_probe(c, echo=_echo(verbose))
    if c.out is not None:
        atomic_write_text(Path(c.out), json.dumps(result, indent=2))
    return result


def downstream(*args, config: settings.DownstreamConfig | None = None, verbose: bool = False, **values) -> dict:
    """`unmask downstream`: a suite over models or a run's checkpoints; the report."""
    from unmask.tasks.suites import run_suite

    c = build_settings(settings.DownstreamConfig, config, values, args)
    return run_suite(c, echo=_echo(verbose))
