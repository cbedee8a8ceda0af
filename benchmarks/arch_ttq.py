"""Time to quality from scratch, by architecture: BERT, RoBERTa, ModernBERT and DeBERTa-v2 of
the same size, trained for the same wall-clock budget on the same text.

Each `--from-scratch ARCH-SIZE` model is trained on the pydocs corpus (less every 20th file,
held out, and less the bundled sample's files, so that the downstream text is unseen) with
the same settings: the MiniLM (bert-base-uncased) vocabulary, windows of 128, batch 32, lr
1e-3 with 6% warmup and linear decay, 15% token masking, no dropout. Every saved point is
scored by `unmask eval` on the same held-out positions and by a linear probe on the offline
downstream task `sample:pydocs-sections`; with --finetune the last point is also fine-tuned.

    python benchmarks/arch_ttq.py --corpus ../shared/corpus/pydocs --budget 3 --sizes tiny,mini

Appends a table to benchmarks/RESULTS.md and writes a chart of both scores against training
minutes. Nothing else should run on the machine meanwhile: the budgets are wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import time_to_quality as ttq  # noqa: E402  (a sibling script, not a package)

ARCHS = ("bert", "roberta", "modernbert", "deberta-v2")
SETTINGS = {"model": None, "dropout": 0.0}


def chart(curves: dict[str, dict[str, list[tuple[float, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    for axis, (key, title) in zip(axes, (("top1", "held-out masked-token top-1"), ("probe", "probe accuracy (pydocs sections)"))):
        for label, points in curves.items():
            style = "--" if label.endswith("tiny") else "-"
            axis.plot([m for m, _ in points[key]], [v for _, v in points[key]], style, marker="o", label=label)
        axis.set(xlabel="training minutes (wall clock, evaluation not counted)", ylabel=title, title=title)
        axis.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle("From scratch on pydocs, the same budget for every architecture")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_facts(run: Path) -> dict:
    """Steps, parameters and tokens/s of a finished run, from its own files."""
    summary = json.loads((run / "summary.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = sorted(r["tokens_per_s"] for r in lines if r.get("tokens_per_s"))
    from safetensors import safe_open

    with safe_open(str(run / "model" / "model.safetensors"), "pt") as weights:
        parameters = sum(_count(weights.get_slice(k).get_shape()) for k in weights.keys())
    return {"steps": summary["steps"], "parameters": parameters, "tokens_per_s": speeds[len(speeds) // 2] if speeds else None}


def _count(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "corpus" / "pydocs"))
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--sizes", default="tiny,mini")
    parser.add_argument("--budget", type=float, default=3, help="training minutes of every run")
    parser.add_argument("--points", type=int, default=3, help="saved points per run (the last is the end of the budget)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-batches", type=int, default=40, help="held-out batches of 32 windows scored per point")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune every run's last point (about 2 minutes each here)")
    parser.add_argument("--reuse", help="a work folder of an earlier invocation (this script's or time_to_quality.py's)")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--chart", default=str(HERE / "arch_time_to_quality.png"))
    args = parser.parse_args()

    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="unmask-arch-ttq-"))
    if not (work / "store" / "meta.json").is_file():
        train_files, _ = ttq.split_corpus(Path(args.corpus), work)
        subprocess.run(
            [sys.executable, "-m", "unmask", "prepare", str(train_files), "--out", str(work / "store"), "--val-fraction", "0"],
            check=True,
            capture_output=True,
        )
    heldout, scores = work / "heldout", work / "scores.json"
    curves: dict[str, dict[str, list[tuple[float, float]]]] = {}
    finals: dict[str, dict] = {}
    for size in (s.strip() for s in args.sizes.split(",")):
        for arch in (a.strip() for a in args.archs.split(",")):
            label = f"{arch}-{size}"
            run = work / f"scratch-{label}"
            started = time.time()
            done = (run / "summary.json").is_file()
            if run.exists() and not done:
                shutil.rmtree(run)
            if not done:
                settings = {**SETTINGS, "from_scratch": label}
                ttq.run_worker(
                    "unmask",
                    store=work / "store",
                    run=run,
                    minutes=args.budget,
                    points=args.points,
                    lr=args.lr,
                    settings=json.dumps(settings),
                )
            points = ttq.unmask_points(run, work)
            scored = [(m, ttq.evaluate(f, heldout, args.eval_batches, scores), ttq.downstream(f, "probe", scores)) for m, f in points]
            curves[label] = {
                "top1": [(m, r["accuracy"]) for m, r, _ in scored],
                "probe": [(m, d["accuracy"]) for m, _, d in scored],
            }
            finetuned = ttq.downstream(points[-1][1], "finetune", scores)["accuracy"] if args.finetune else None
            last = scored[-1]
            finals[label] = {"minutes": last[0], **last[1], "probe": last[2]["accuracy"], "finetune": finetuned, **run_facts(run)}
            print(
                f"{label}: {last[1]['accuracy']:.2%} top-1, probe {last[2]['accuracy']:.2%}"
                + (f", fine-tuned {finetuned:.2%}" if finetuned is not None else "")
                + f" after {last[0]:.1f} min, {finals[label]['steps']} steps ({time.time() - started:.0f} s)",
                flush=True,
            )
    chart(curves, Path(args.chart))
    cell = lambda value: "n/a" if value is None else f"{value:.2%}"
    lines = [
        "",
        "---",
        "",
        "## From scratch, by architecture: the same budget, MLM accuracy and downstream",
        "",
        f"- command: `python benchmarks/arch_ttq.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; {ttq_machine()}",
        f"- every run: `unmask train --from-scratch ARCH-SIZE`, the MiniLM (bert-base-uncased) vocabulary, windows of 128, batch 32,"
        f" lr {args.lr} (6% warmup, linear decay over the {args.budget:g}-minute budget), 15% token masking, dropout 0, fp32",
        "- pydocs less every 20th file (held out) and less the bundled sample's files; top-1: `unmask eval` on the same held-out"
        f" positions ({args.eval_batches} batches of 32 x 128); probe: `unmask probe` on `sample:pydocs-sections`"
        " (majority class 44.8%)",
        "- one run each, not repeated: one eval paragraph is 0.75 points of the probe's accuracy",
        "",
        "| model | parameters | steps | tokens/s | top-1 | top-5 | loss | probe | fine-tuned |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {label} | {r['parameters'] / 1e6:.1f}M | {r['steps']} | {r['tokens_per_s'] or 0:,.0f} | {r['accuracy']:.2%} | "
            f"{r['top5_accuracy']:.2%} | {r['loss']:.3f} | {r['probe']:.2%} | {cell(r['finetune'])} |"
            for label, r in finals.items()
        ),
        "",
        f"![from scratch by architecture]({Path(args.chart).name})",
        "",
    ]
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def ttq_machine() -> str:
    import platform

    import torch

    from unmask.runtime.hardware import cpu_name

    return f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


if __name__ == "__main__":
    main()
