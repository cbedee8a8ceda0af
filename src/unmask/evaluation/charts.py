"""Charts as PNG files (matplotlib, the `report` extra): a comparison's bars and a run's curves."""

from __future__ import annotations

import math
from pathlib import Path

from unmask.errors import UnmaskError, optional_import
from unmask.storage.rundir import RunDir


def percent_label(share: float) -> str:
    """An axis label for a share: as many decimals as the tick needs, up to two (37.5%, not 38%)."""
    text = f"{share * 100:.2f}".rstrip("0").rstrip(".")
    return f"{'0' if text in ('-0', '') else text}%"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend; one clear line when it is not installed."""
    optional_import("matplotlib", "drawing charts", "report").use("Agg")
    return optional_import("matplotlib.pyplot", "drawing charts", "report")


def compare_chart(results: list, path: Path) -> None:
    """Bars of held-out loss, top-1 and top-5 accuracy, base against trained (`MlmMetrics` each)."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    panels = [("loss", "held-out loss"), ("accuracy", "top-1 accuracy"), ("top5_accuracy", "top-5 accuracy")]
    for axis, (key, title) in zip(axes, panels):
        values = [getattr(r, key) for r in results]
        bars = axis.bar(["base", "trained"], values, color=["#9aa5b1", "#2f6fb0"])
        axis.bar_label(bars, labels=[f"{v:.3f}" if key == "loss" else f"{v:.1%}" for v in values])
        axis.set_title(title)
        finite = [v for v in values if math.isfinite(v)]
        axis.set_ylim(0, (max(finite) * 1.2 if finite else 0) or 1.0)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Training loss and evaluation curves of a run, as a PNG (default RUN/curves.png)."""
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        raise UnmaskError(f"{run_dir}: no {run.metrics.name} (is it a run folder?)")
    records, _ = run.read_metrics(strict=True)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("eval_loss") is not None]
    if not train:
        raise UnmaskError(f"{run.metrics}: no training steps logged yet")
    plt = pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", color="#9aa5b1")
    if evals:
        left.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out", color="#2f6fb0")
        right.plot([r["step"] for r in evals], [r["eval_accuracy"] for r in evals], "o-", label="top-1", color="#2f6fb0")
        if all(r.get("eval_top5_accuracy") is not None for r in evals):
            right.plot([r["step"] for r in evals], [r["eval_top5_accuracy"] for r in evals], "s--", label="top-5", color="#d08c2c")
        right.legend()
    left.set(title="MLM loss", xlabel="step")
    right.set(title="held-out masked-token accuracy", xlabel="step")
    right.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: percent_label(v)))
    left.legend()
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    target = out or RunDir(run_dir).curves
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
