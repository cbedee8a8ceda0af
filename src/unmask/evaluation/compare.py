"""Base against trained: both models scored on the same held-out masked positions, as a
table, report.md / report.json and a chart."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from unmask.data.tokenizer import fingerprint
from unmask.errors import UnmaskError
from unmask.evaluation.charts import compare_chart
from unmask.evaluation.heldout import EVAL_MASK_PROB, EVAL_SEED, MlmMetrics, combine, evaluate_model, held_out_sets
from unmask.infer import LoadedModel
from unmask.storage.files import atomic_write_text
from unmask.tables import format_value, markdown_table

ROWS = [
    ("loss", "loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("accuracy", "top-1 accuracy", "{:.2%}"),
    ("top5_accuracy", "top-5 accuracy", "{:.2%}"),
    ("whole_word_accuracy", "whole-word accuracy", "{:.2%}"),
    ("word_piece_accuracy", "word-piece accuracy", "{:.2%}"),
    ("masked_tokens", "masked tokens", "{:,}"),
]


@dataclass
class Disagreement:
    context: str
    truth: str
    base: str
    trained: str


def metrics_table(names: list[str], results: list[MlmMetrics]) -> list[list[str]]:
    """Rows of strings: metric, one column per model, and the change from the first."""
    table = [["metric", *names, "change"]]
    for key, label, pattern in ROWS:
        values = [getattr(r, key) for r in results]
        change = ""
        if key != "masked_tokens" and all(isinstance(v, float) and math.isfinite(v) for v in values):
            delta = values[-1] - values[0]
            change = f"{delta:+.2%}" if "accuracy" in key else f"{delta:+.2f}" if key == "perplexity" else f"{delta:+.4f}"
        table.append([label, *(format_value(v, pattern) for v in values), change])
    return table


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
    precision: str = "fp32",
    echo=print,
    progress: bool = True,
) -> dict:
    """Score both models on the same masked positions; write report.md, report.json and chart.png to `out`
    (nothing is written when `out` is None: the web page shows the report itself)."""
    loaded = [LoadedModel(name, device=device, echo=echo, precision=precision) for name in (base, trained)]
    tokenizer = loaded[0].tokenizer
    if fingerprint(loaded[1].tokenizer) != fingerprint(tokenizer):
        raise UnmaskError(f"'{base}' and '{trained}' use different tokenizers: their masked positions cannot be compared")
    models, target = [m.lm for m in loaded], loaded[0].device
    seq_len = min(seq_len, *(m.max_len for m in loaded))
    sets = held_out_sets(data, tokenizer, seq_len)
    found: list[Disagreement] = []
    scored = {
        name: evaluate_model(
            models,
            windows,
            batch_size=batch_size,
            device=target,
            dtype=loaded[0].dtype,
            max_batches=max_batches,
            on_batch=_disagreements(tokenizer, found, examples),
            progress=progress,
        )
        for name, windows in sets.items()
    }
    results = [combine([per[k] for per in scored.values()]) for k in range(2)]
    notes = [
        f"{role} ({name}) has no trained MLM head: its numbers are those of a fresh, randomly initialised head "
        "(seeded, so repeatable), not of what the model knows"
        for role, name, model in (("base", base, loaded[0]), ("trained", trained, loaded[1]))
        if model.lm.has_fresh_head()
    ]
    report = {
        "base": base,
        "trained": trained,
        "data": data,
        "seq_len": seq_len,
        "windows": sum(len(w) for w in sets.values()),
        "base_metrics": results[0].as_dict(),
        "trained_metrics": results[1].as_dict(),
        "disagreements": [d.__dict__ for d in found],
        "table": metrics_table(["base", "trained"], results),
        "notes": notes,
    }
    if len(scored) > 1:
        report["sources"] = {name: {"base": per[0].as_dict(), "trained": per[1].as_dict()} for name, per in scored.items()}
    if out is not None:
        _write_report(report, results, found, out)
    return report


def _disagreements(tokenizer, found: list[Disagreement], examples: int):
    """An evaluation's `on_batch` that keeps up to `examples` positions where the two models'
    top-1 predictions differ, at most two a batch so that they spread over the data."""

    def collect(original: torch.Tensor, labels: torch.Tensor, top1s: list[torch.Tensor]) -> None:
        rows, positions = (labels != -100).nonzero(as_tuple=True)
        differ = (top1s[0] != top1s[1]).nonzero(as_tuple=True)[0]
        for k in differ[:2].tolist():
            if len(found) >= examples:
                return
            row, position = int(rows[k]), int(positions[k])
            left = tokenizer.decode(original[row, max(1, position - 12) : position]).strip()
            right = tokenizer.decode(original[row, position + 1 : position + 8]).strip()
            found.append(
                Disagreement(
                    f"{left} ___ {right}",
                    tokenizer.decode([int(labels[row, position])]).strip(),
                    tokenizer.decode([int(top1s[0][k])]).strip(),
                    tokenizer.decode([int(top1s[1][k])]).strip(),
                )
            )

    return collect


def _write_report(report: dict, results: list, found: list[Disagreement], out: Path) -> None:
    """report.json, chart.png (where matplotlib is there) and report.md into `out`; the report
    gains `chart` and `no_chart`."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    try:
        compare_chart(results, out / "chart.png")
        report["chart"], report["no_chart"], image = str(out / "chart.png"), None, ["![metrics](chart.png)", ""]
    except UnmaskError as e:
        report["chart"], report["no_chart"], image = None, str(e), []
    notes = report["notes"]
    markdown = [
        "# Base vs trained",
        "",
        f"- base: `{report['base']}`",
        f"- trained: `{report['trained']}`",
        f"- data: `{' '.join(report['data'])}`",
        f"- {report['windows']} windows of {report['seq_len']} tokens; the same masked positions for both ({EVAL_MASK_PROB:.0%}, seed {EVAL_SEED})",
        "",
        markdown_table(report["table"]),
        "",
        *(f"Note: {note}." for note in notes),
        *([""] if notes else []),
        "## Where their top-1 predictions differ",
        "",
        "| context | true | base | trained |",
        "|---|---|---|---|",
        *(f"| {d.context.replace('|', '/')} | {d.truth} | {d.base} | {d.trained} |" for d in found),
        "",
        *image,
    ]
    atomic_write_text(out / "report.md", "\n".join(markdown))
