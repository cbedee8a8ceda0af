"""Reports a person reads: base-vs-trained comparison and a run's training curves."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.config import UnmaskError
from unmask.evaluate import EVAL_MASK_PROB, EVAL_SEED, MlmMetrics, evaluate_model, held_out_windows
from unmask.files import atomic_write_text
from unmask.infer import LoadedModel
from unmask.tokenizer import fingerprint

CHART_HINT = "charts need matplotlib: pip install 'unmask[report]'"

ROWS = [
    ("loss", "loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("accuracy", "top-1 accuracy", "{:.2%}"),
    ("top5_accuracy", "top-5 accuracy", "{:.2%}"),
    ("whole_word_accuracy", "whole-word accuracy", "{:.2%}"),
    ("word_piece_accuracy", "word-piece accuracy", "{:.2%}"),
    ("masked_tokens", "masked tokens", "{:,}"),
]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnmaskError(CHART_HINT) from None
    return plt


@dataclass
class Disagreement:
    context: str
    truth: str
    base: str
    trained: str


def _format(value, pattern: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def metrics_table(names: list[str], results: list[MlmMetrics]) -> list[list[str]]:
    """Rows of strings: metric, one column per model, and the change from the first."""
    table = [["metric", *names, "change"]]
    for key, label, pattern in ROWS:
        values = [getattr(r, key) for r in results]
        change = ""
        if key != "masked_tokens" and all(isinstance(v, float) and math.isfinite(v) for v in values):
            delta = values[-1] - values[0]
            change = f"{delta:+.2%}" if "accuracy" in key else f"{delta:+.2f}" if key == "perplexity" else f"{delta:+.4f}"
        table.append([label, *(_format(v, pattern) for v in values), change])
    return table


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table[1:]])


def compare(
    base: str,
    trained: str,
    data: list[str],
    out: Path | None,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
    max_batches: int | None = None,
    examples: int = 8,
    device: str = "auto",
    echo=print,
) -> dict:
    """Score both models on the same masked positions; write report.md, report.json and chart.png to `out`
    (nothing is written when `out` is None: the web page shows the report itself)."""
    loaded = [LoadedModel(name, device=device, echo=echo) for name in (base, trained)]
    tokenizer = loaded[0].tokenizer
    if fingerprint(loaded[1].tokenizer) != fingerprint(tokenizer):
        raise UnmaskError(f"'{base}' and '{trained}' use different tokenizers: their masked positions cannot be compared")
    models, target = [m.lm for m in loaded], loaded[0].device
    seq_len = min(seq_len, *(m.max_len for m in loaded))
    windows = held_out_windows(data, tokenizer, seq_len)
    found: list[Disagreement] = []

    def collect(original: torch.Tensor, labels: torch.Tensor, top1s: list[torch.Tensor]) -> None:
        rows, positions = (labels != -100).nonzero(as_tuple=True)
        differ = (top1s[0] != top1s[1]).nonzero(as_tuple=True)[0]
        for k in differ[:2].tolist():  # at most two a batch, so the examples spread over the data
            if len(found) >= examples:
                return
            row, position = int(rows[k]), int(positions[k])
            left = tokenizer.decode(original[row, max(1, position - 12) : position]).strip()
            right = tokenizer.decode(original[row, position + 1 : position + 8]).strip()
            found.append(
                Disagreement(
                    f"{left} ___ {right}", tokenizer.decode([int(labels[row, position])]).strip(),
                    tokenizer.decode([int(top1s[0][k])]).strip(), tokenizer.decode([int(top1s[1][k])]).strip(),
                )
            )  # fmt: skip

    results = evaluate_model(models, windows, batch_size=batch_size, device=target, max_batches=max_batches, on_batch=collect, progress=True)
    table = metrics_table(["base", "trained"], results)
    report = {
        "base": base, "trained": trained, "data": data, "seq_len": seq_len, "windows": len(windows),
        "base_metrics": results[0].as_dict(), "trained_metrics": results[1].as_dict(),
        "disagreements": [d.__dict__ for d in found], "table": table,
    }  # fmt: skip
    if out is None:
        return report
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    try:
        _compare_chart(results, out / "chart.png")
        chart, image = f", chart: {out / 'chart.png'}", ["![metrics](chart.png)", ""]
    except UnmaskError as e:
        chart, image = f"\nno chart.png: {e}", []
    markdown = [
        "# Base vs trained", "", f"- base: `{base}`", f"- trained: `{trained}`", f"- data: `{' '.join(data)}`",
        f"- {len(windows)} windows of {seq_len} tokens; the same masked positions for both "
        f"({EVAL_MASK_PROB:.0%}, seed {EVAL_SEED})", "",
        _markdown_table(table), "", "## Where their top-1 predictions differ", "",
        "| context | true | base | trained |", "|---|---|---|---|",
        *(f"| {d.context.replace('|', '/')} | {d.truth} | {d.base} | {d.trained} |" for d in found), "", *image,
    ]  # fmt: skip
    atomic_write_text(out / "report.md", "\n".join(markdown))
    echo(text_table(table))
    if found:
        echo("\nwhere their top-1 predictions differ (true / base / trained):")
        for d in found:
            echo(f"  {d.context}\n      {d.truth} / {d.base} / {d.trained}")
    echo(f"\nreport: {out / 'report.md'}{chart}")
    return report


def _compare_chart(results: list[MlmMetrics], path: Path) -> None:
    plt = _pyplot()
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
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise UnmaskError(f"{run_dir}: no metrics.jsonl (is it a run folder?)")
    records = []
    for number, line in enumerate(metrics_path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise UnmaskError(f"{metrics_path}:{number}: not a JSON line") from None
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if r.get("eval_loss") is not None]
    if not train:
        raise UnmaskError(f"{metrics_path}: no training steps logged yet")
    plt = _pyplot()
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
    right.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    left.legend()
    figure.suptitle(run_dir.name)
    figure.tight_layout()
    target = out or run_dir / "curves.png"
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
