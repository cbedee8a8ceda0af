"""`unmask downstream`: a suite of tasks over several models, or over a run's checkpoints.

Every (task, model or checkpoint, seed) is fine-tuned (`finetune`) or probed (`probe`) as the
suite says, and its result appended to `results.jsonl` the moment it is known (fsynced);
a rerun skips what is there, so a killed suite continues where it stopped and a finished
one costs nothing to report again. The report gives, per task and per model or step, the
median over seeds with the spread, and the suite's average (the mean of the task scores,
as GLUE is averaged); a chart draws the scores against the pretraining step (or tokens),
one line per task and the average.

A run's results live in RUN/downstream/, where `unmask serve` finds them, and training with
`--downstream SUITE --downstream-every N` adds a point each time a checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unmask.config import DownstreamConfig, FinetuneConfig, ProbeConfig, Suite, SuiteTask, TrainConfig, load_suite
from unmask.errors import UnmaskError
from unmask.storage.files import append_json_line, atomic_write_text, read_json_lines
from unmask.storage.rundir import RunDir
from unmask.tables import markdown_table, text_table

SUITES = Path(__file__).resolve().parent / "suite_files"
RESULTS = "results.jsonl"


def resolve_suite(name: str) -> Path:
    """A suite file, or the name of a bundled one (`glue`, `pydocs`)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = SUITES / f"{name}.yaml"
    if bundled.is_file():
        return bundled
    names = ", ".join(sorted(p.stem for p in SUITES.glob("*.yaml")))
    raise UnmaskError(f"{name}: no such suite file (bundled suites: {names})")


@dataclass(frozen=True)
class Target:
    """One model to score: a name, and for a run's checkpoint its step and tokens seen."""

    label: str
    model: str
    step: int | None = None
    tokens: int | None = None


def run_targets(run: RunDir, steps: str) -> list[Target]:
    """The checkpoints of a run to score: `all`, `final`, or steps like `100,200`."""
    if not run.has_base():
        raise UnmaskError(f"--run {run.path}: not a run folder (no {run.base.name}/config.json)")
    found = run.checkpoint_steps()
    available = [step for step, _ in found]
    per_step = tokens_per_step(run, found[-1][1] if found else None)
    if steps == "final":
        if not run.has_model():
            raise UnmaskError(f"--steps final: {run.path} has no final model yet (checkpoints: {', '.join(map(str, available)) or 'none'})")
        chosen = [max(available)] if available else []
    elif steps == "all":
        chosen = available
    else:
        try:
            chosen = [int(s) for s in steps.split(",") if s.strip()]
        except ValueError:
            raise UnmaskError(f"--steps: '{steps}' is not all, final, or steps such as 100,200") from None
        missing = [s for s in chosen if s not in available]
        if missing:
            raise UnmaskError(
                f"--steps: {run.path} has no checkpoint at step(s) {', '.join(map(str, missing))} (steps: {', '.join(map(str, available)) or 'none'})"
            )
    if not chosen:
        raise UnmaskError(f"--run {run.path}: no checkpoints to score")
    return [Target(f"step {s}", str(run.path), s, s * per_step if per_step else None) for s in chosen]


def tokens_per_step(run: RunDir, newest: Path | None) -> int | None:
    """Training tokens a step of the run: its global batch (from a checkpoint) times its window length."""
    from unmask.storage.checkpoint import read_info

    seq_len = run.read_settings().get("seq_len")
    info = read_info(newest) if newest is not None else None
    return info.global_batch * seq_len if info is not None and info.global_batch and seq_len else None


def settings_key(task: SuiteTask, mode: str) -> str:
    """A short fingerprint of what decides a task's score in a mode: its data and scoring and
    the probe's or fine-tuning's settings. Results of other settings (a suite file edited since)
    are neither skipped as done nor mixed into the report."""
    # Not the seed list: each result carries its seed, and more seeds must not redo the others.
    settings = {"task": task.task_options(), mode: task.probe if mode == "probe" else task.finetune}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _key(task: str, target: str, mode: str, seed: int, settings: str | None) -> tuple:
    return (task, target, mode, seed, settings)


RESULT_KEYS = frozenset({"task", "target", "mode", "seed", "settings", "score"})
"""What every line of results.jsonl has; a line without them (cut short, or not unmask's) is not read."""


def _results(path: Path) -> list[dict]:
    return [r for r in read_json_lines(path)[0] if RESULT_KEYS <= set(r)]


def _record_key(record: dict) -> tuple:
    return _key(record["task"], record["target"], record["mode"], record["seed"], record["settings"])


class Results:
    """results.jsonl: one line a (task, target, mode, seed, settings), appended as each is known."""

    def __init__(self, folder: Path):
        self.path = folder / RESULTS
        self.records = _results(self.path)
        self.known = {_record_key(r) for r in self.records}

    def has(self, key: tuple) -> bool:
        return key in self.known

    def add(self, record: dict) -> None:
        append_json_line(self.path, record)
        self.records.append(record)
        self.known.add(_record_key(record))

    def current(self, suite: Suite) -> tuple[list[dict], int]:
        """The records made with the suite's present settings of their task and mode, and how
        many others were left out (other settings, or a task no longer in the suite)."""
        keys = {(t.name, mode): settings_key(t, mode) for t in suite.tasks for mode in ("probe", "finetune")}
        kept = [r for r in self.records if (r["task"], r["mode"]) in keys and r["settings"] == keys[(r["task"], r["mode"])]]
        return kept, len(self.records) - len(kept)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "model"


def score_one(task: SuiteTask, target: Target, mode: str, seed: int, work: Path, device: str, trust_remote_code: bool, echo) -> dict:
    """Fine-tune (one seed) or probe one target on one task; the result line."""
    shared = task.task_options()
    if mode == "probe":
        from unmask.tasks.probe import probe

        settings = ProbeConfig(
            model=target.model, step=target.step, device=device, trust_remote_code=trust_remote_code, **shared, **task.probe
        )
        result = probe(settings, echo=echo)
        metrics, extra = result["metrics"], {"seconds": result["seconds"]}
    else:
        from unmask.tasks.finetune import finetune

        folder = work / f"{_slug(task.name)}-{_slug(target.label)}-seed{seed}"
        settings = FinetuneConfig(
            model=target.model,
            step=target.step,
            device=device,
            trust_remote_code=trust_remote_code,
            out=str(folder),
            seeds=1,
            seed=seed,
            save_model=False,
            resume=True,
            progress="none",
            **shared,
            **task.finetune,
        )
        summary = finetune(settings, echo=echo, progress=False)
        shutil.rmtree(folder, ignore_errors=True)  # the result is the line; a killed fine-tuning would have resumed from here
        metrics = {name: value["median"] for name, value in summary["metrics"].items()}
        extra = {"seconds": summary["seeds"][0]["train_seconds"], "examples_per_s": summary["examples_per_s"]}
    score_metric = (task.metric or list(metrics))[0]
    return {
        "task": task.name,
        "target": target.label,
        "model": target.model,
        "step": target.step,
        "tokens": target.tokens,
        "mode": mode,
        "settings": settings_key(task, mode),
        "seed": seed,
        "metrics": metrics,
        "score_metric": score_metric,
        "score": metrics[score_metric],
        **extra,
    }


def score_targets(suite: Suite, targets: list[Target], out: Path, mode: str, device: str, trust_remote_code: bool, echo) -> Results:
    """Score every target on every task (skipping what results.jsonl already has)."""
    results = Results(out)
    for target in targets:
        for task in suite.tasks:
            task_mode = task.mode if mode == "suite" else mode
            for seed in task.seed_list() if task_mode == "finetune" else [0]:
                key = _key(task.name, target.label, task_mode, seed, settings_key(task, task_mode))
                if results.has(key):
                    continue
                echo(f"{task.name} / {target.label}: {task_mode}{f', seed {seed}' if task_mode == 'finetune' else ''}")
                record = score_one(task, target, task_mode, seed, out / "work", device, trust_remote_code, echo)
                results.add(record)
                echo(f"{task.name} / {target.label}: {record['score_metric']} {record['score']:.4f}")
    return results


# ---------------------------------------------------------------- the report


MODES = ("finetune", "probe")


def aggregate(records: list[dict], suite: Suite, targets: list[Target]) -> dict:
    """Per task, mode and target: the median score over seeds, its spread and the seed count
    (a probe and a fine-tuning of one checkpoint are never mixed); the averages per target (the
    mean of the task medians, where every task has one): one per mode, and `suite` (each task
    in its own mode) where the suite's tasks differ in mode."""
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for task in suite.tasks:
        for mode in MODES:
            for target in targets:
                scores = [r["score"] for r in records if r["task"] == task.name and r["mode"] == mode and r["target"] == target.label]
                if scores:
                    table.setdefault(task.name, {}).setdefault(mode, {})[target.label] = {
                        "median": statistics.median(scores),
                        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                        "min": min(scores),
                        "max": max(scores),
                        "seeds": len(scores),
                    }
    choices = {mode: {t.name: mode for t in suite.tasks} for mode in MODES}
    if len({t.mode for t in suite.tasks}) > 1:
        choices["suite"] = {t.name: t.mode for t in suite.tasks}
    average: dict[str, dict[str, float]] = {}
    for label, modes in choices.items():
        for target in targets:
            medians = [table.get(name, {}).get(mode, {}).get(target.label, {}).get("median") for name, mode in modes.items()]
            if all(m is not None for m in medians):
                average.setdefault(label, {})[target.label] = statistics.fmean(medians)
    return {"tasks": table, "average": average}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "n/a"
    spread = f" ± {entry['std']:.3f} ({entry['seeds']})" if entry["seeds"] > 1 else ""
    return f"{entry['median']:.4f}{spread}"


def report_rows(summary: dict, suite: Suite) -> list[tuple[str, str]]:
    """The (task, mode) pairs that have results, in suite order, each task's own mode first."""
    return [
        (task.name, mode)
        for task in suite.tasks
        for mode in sorted(MODES, key=lambda m: m != task.mode)
        if mode in summary["tasks"].get(task.name, {})
    ]


def report_table(summary: dict, suite: Suite, targets: list[Target]) -> list[list[str]]:
    metric = {t.name: (t.metric[0] if t.metric else "score") for t in suite.tasks}
    rows = [["task (metric), mode", *(t.label for t in targets)]]
    for name, mode in report_rows(summary, suite):
        entries = summary["tasks"][name][mode]
        rows.append([f"{name} ({metric[name]}), {mode}", *(_cell(entries.get(t.label)) for t in targets)])
    for label, values in summary["average"].items():
        rows.append([f"average, {label}", *(f"{values[t.label]:.4f}" if t.label in values else "n/a" for t in targets)])
    return rows


def score_limits(values: list[float], least_span: float = 0.1) -> tuple[float, float]:
    """The score axis: at least `least_span` high, so that a gap of 0.02 between two models is not
    drawn as a cliff; kept within [0, 1] when the scores are shares."""
    low, high = min(values), max(values)
    pad = max(least_span - (high - low), 0.0) / 2 + 0.01
    low, high = low - pad, high + pad
    if min(values) >= 0 and max(values) <= 1:
        if low < 0:
            low, high = 0.0, high - low
        if high > 1:
            low, high = max(0.0, low - (high - 1)), 1.0
    return low, high


def chart(summary: dict, suite: Suite, targets: list[Target], path: Path, title: str) -> Path | None:
    """Scores against the pretraining step (a run) or per model, one line per task and mode;
    None when matplotlib is missing."""
    from unmask.evaluation.charts import pyplot

    try:
        plt = pyplot()
    except UnmaskError:
        return None
    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    by_step = all(t.step is not None for t in targets)
    xs = [t.step for t in targets] if by_step else list(range(len(targets)))
    rows = report_rows(summary, suite)
    drawn: list[float] = []
    for number, (name, mode) in enumerate(rows):
        entries = summary["tasks"][name][mode]
        # Models side by side are separate points (a line between two models means nothing),
        # nudged apart so that their error bars do not hide each other; checkpoints are a curve.
        nudge = 0.0 if by_step else (number - (len(rows) - 1) / 2) * 0.08
        points = [(x + nudge, entries[t.label]) for x, t in zip(xs, targets) if t.label in entries]
        if points:
            where, cells = zip(*points)
            medians = [c["median"] for c in cells]
            spread = [c["std"] for c in cells]
            style = ("o-" if mode == "finetune" else "^:") if by_step else ("o" if mode == "finetune" else "^")
            axis.errorbar(where, medians, yerr=spread, fmt=style, capsize=3, label=f"{name}, {mode}", alpha=0.85)
            drawn += [m + s for m, s in zip(medians, spread)] + [m - s for m, s in zip(medians, spread)]
    for label, values in summary["average"].items() if len(suite.tasks) > 1 else ():  # one task: its average is itself
        average = [(x, values[t.label]) for x, t in zip(xs, targets) if t.label in values]
        if average:
            axis.plot(*zip(*average), "s--" if by_step else "s", color="black", label=f"average, {label}", linewidth=2)
            drawn += [v for _, v in average]
    if by_step:
        axis.set_xlabel("pretraining step")
    else:
        axis.set_xticks(xs, [t.label for t in targets], rotation=15, ha="right")
        axis.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    if drawn:
        axis.set_ylim(*score_limits(drawn))
    axis.set(title=title, ylabel="score: median over seeds, bars ± one std")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def scored_targets(records: list[dict], targets: list[Target]) -> list[Target]:
    """`targets` and every other target results.jsonl holds (a run's checkpoints scored
    earlier, since pruned), by pretraining step where all have one."""
    known = {t.label: t for t in targets}
    for r in records:
        known.setdefault(r["target"], Target(r["target"], r["model"], r.get("step"), r.get("tokens")))
    found = list(known.values())
    return sorted(found, key=lambda t: t.step) if all(t.step is not None for t in found) else found


def write_report(results: Results, suite: Suite, targets: list[Target], out: Path) -> dict:
    records, left_out = results.current(suite)
    targets = scored_targets(records, targets)
    summary = aggregate(records, suite, targets)
    rows = report_table(summary, suite, targets)
    report = {"suite": suite.name, "targets": [dataclasses.asdict(t) for t in targets], **summary, "table": rows, "left_out": left_out}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    drawn = chart(summary, suite, targets, out / "chart.png", f"{suite.name}: downstream scores")
    lines = [f"# {suite.name}: downstream scores", "", suite.description, "", markdown_table(rows), ""]
    lines += ["Cells: the median score over seeds, ± the standard deviation (seeds); average: the mean of the task medians.", ""]
    if left_out:
        lines += [
            f"{left_out} result(s) in {RESULTS} were made with other settings of their task (or a task no longer here) and are left out.",
            "",
        ]
    if drawn:
        lines.append("![scores](chart.png)")
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {**report, "table_text": text_table(rows), "markdown": str(out / "report.md"), "chart": str(drawn) if drawn else None}


def run_suite(config: DownstreamConfig, echo: Callable[[str], None] = print) -> dict:
    suite = load_suite(resolve_suite(config.suite))
    if config.run is not None:
        run = RunDir(Path(config.run))
        targets = run_targets(run, config.steps)
        out = Path(config.out) if config.out else run.downstream
    else:
        targets = [Target(name, name) for name in config.models]
        out = Path(config.out or "downstream")
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    results = score_targets(suite, targets, out, config.mode, config.device, config.trust_remote_code, echo)
    return write_report(results, suite, targets, out)


def read_run_results(run: RunDir) -> list[dict]:
    """A run's downstream results (for the web page and the curves)."""
    return _results(run.downstream / RESULTS)


def checkpoint_scorer(config: TrainConfig) -> Callable[[int, int, str], str]:
    """The hook that pretraining calls after each due checkpoint (--downstream SUITE): score
    the run's newest checkpoint on the suite, add it to RUN/downstream/ and its report, and
    return the line to show. The suite is read and checked here, before any training."""
    suite = load_suite(resolve_suite(config.downstream))
    run_dir = RunDir(config.out)

    def score(step: int, tokens: int, device: str) -> str:
        target = Target(f"step {step}", str(run_dir.path), step, tokens)
        results = score_targets(
            suite, [target], run_dir.downstream, config.downstream_mode, device, config.trust_remote_code, lambda _: None
        )
        write_report(results, suite, [target], run_dir.downstream)
        mine = [r for r in results.current(suite)[0] if r["target"] == target.label]
        return "downstream " + ", ".join(f"{r['task']} ({r['mode']}) {r['score_metric']} {r['score']:.4f}" for r in mine)

    return score
