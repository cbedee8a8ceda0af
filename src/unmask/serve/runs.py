"""The runs a server was given: found on disk, described, read safely while they train.

Runs are addressed by an id the server made, never by a path from a request, so a request
can only ever reach the runs under the folders `unmask serve` was started with.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from unmask.storage.checkpoint import read_info
from unmask.storage.files import FolderLock
from unmask.storage.rundir import FINE_TUNING_RUN, RunDir


@dataclass
class RunFolder:
    id: str
    path: Path
    label: str

    @property
    def dir(self) -> RunDir:
        return RunDir(self.path)


def _kind(path: Path) -> str | None:
    """`RunDir.kind`'s fine-tuning, `run` for a pretraining run (what the page shows: loss curves
    of MLM, fill-mask, compare), or None for a folder that is neither."""
    run = RunDir(path)
    if run.kind() == FINE_TUNING_RUN:
        return FINE_TUNING_RUN
    return "run" if run.is_run() else None


def scan(roots: list[str]) -> tuple[dict[str, RunFolder], list[Path]]:
    """The pretraining runs under `roots` (a run folder itself, or up to two levels below), by a
    stable id, and the fine-tuning folders found on the way, which the page leaves out: their
    loss is a task's, their head is not an MLM head. One walk serves both."""
    found: list[tuple[Path, Path]] = []
    fine_tuning: list[Path] = []

    def visit(path: Path, base: Path | None, depth: int) -> None:
        """`base`: the folder labels are relative to (None for a root: itself, or its parent
        where the root is a run)."""
        kind = _kind(path)
        if kind == "run":
            found.append((path, base or path.parent))
        elif kind == FINE_TUNING_RUN:
            fine_tuning.append(path)
        elif depth < 2 and path.is_dir():  # neither: look inside
            for child in sorted(path.iterdir()):
                if child.is_dir() and not child.name.startswith("."):
                    visit(child, base or path, depth + 1)

    for root in roots:
        visit(Path(root).resolve(), None, 0)
    runs: dict[str, RunFolder] = {}
    for path, base in dict.fromkeys(found):
        label = str(path.relative_to(base))
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "run"
        run_id, number = slug, 2
        while run_id in runs:
            run_id, number = f"{slug}-{number}", number + 1
        runs[run_id] = RunFolder(run_id, path, label)
    return runs, list(dict.fromkeys(fine_tuning))


def discover(roots: list[str]) -> dict[str, RunFolder]:
    """The pretraining runs under `roots`, by a stable id (`scan`)."""
    return scan(roots)[0]


def read_metrics(path: Path, after: int = 0) -> tuple[list[dict], int]:
    """Records of a run's metrics.jsonl from line `after` on, and the line count (`RunDir.read_metrics`)."""
    return RunDir(path).read_metrics(after)


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def is_training(path: Path) -> bool:
    """A live process holds the run's lock (its lock file names the process)."""
    return FolderLock.is_held(RunDir(path).lock)


def checkpoints(path: Path) -> list[dict]:
    found = []
    for step, folder in RunDir(path).checkpoint_steps():
        info = read_info(folder)
        found.append({"step": step, "train_seconds": info.train_seconds if info else None, "complete": info is not None})
    return found


def describe(run: RunFolder, detail: bool = False) -> dict:
    """What the runs page shows of a run: state, step, tokens, last held-out numbers."""
    folder = run.dir
    records, lines = folder.read_metrics()
    config = folder.read_settings()
    summary = _json(folder.summary)
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("eval_loss") is not None]
    finished = bool(summary) and folder.has_model()
    state = "training" if is_training(run.path) else "finished" if finished else "stopped" if steps else "new"
    step = steps[-1]["step"] if steps else 0
    described = {
        "id": run.id,
        "label": run.label,
        "state": state,
        "step": step,
        "max_steps": config.get("max_steps"),
        "time_budget": config.get("time_budget"),
        "tokens": (steps[-1].get("train_tokens") or 0) if steps else 0,  # counted by the run, all processes included
        "has_model": folder.has_model(),
        "last_eval": {k: evals[-1].get(f"eval_{k}") for k in ("loss", "accuracy", "top5_accuracy")} | {"step": evals[-1]["step"]}
        if evals
        else None,
        "metric_lines": lines,
    }
    if detail:
        described.update(config=config, summary=summary, checkpoints=checkpoints(run.path))
    return described


def downstream(path: Path) -> dict[str, dict]:
    """The run's downstream scores per task and mode ("sst2, probe"): its metric and [step,
    median over seeds] points. A probe and a fine-tuning of one checkpoint are separate
    curves, and so are results of a task's other settings (a suite edited since)."""
    from unmask.tasks.suites import read_run_results

    records = [r for r in read_run_results(RunDir(path)) if r.get("step") is not None]
    groups: dict[tuple, dict] = {}
    for record in records:
        key = (record["task"], record["mode"], record["settings"])
        group = groups.setdefault(key, {"metric": record.get("score_metric"), "scores": {}})
        group["scores"].setdefault(record["step"], []).append(record["score"])
    settings_per_task = {}
    for task, mode, settings in groups:
        settings_per_task.setdefault((task, mode), set()).add(settings)
    curves = {}
    for (task, mode, settings), group in groups.items():
        name = f"{task}, {mode}" + (f" [settings {settings}]" if len(settings_per_task[(task, mode)]) > 1 else "")
        curves[name] = {"metric": group["metric"], "points": [[step, float(median(s))] for step, s in sorted(group["scores"].items())]}
    return curves
