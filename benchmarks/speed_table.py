"""Tokens/s and MFU per model shape on this machine, by `unmask.plan`, and the plan checked
against a real run: its tokens/s and memory against what the run then measured.

    python benchmarks/speed_table.py --corpus ../shared/corpus/pydocs

Appends a table to benchmarks/RESULTS.md. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# (label, settings): from-scratch shapes at 128 and 512 tokens, batch sized to a CPU.
SHAPES = [
    ("bert-tiny, 128 tokens", {"from_scratch": "bert-tiny", "seq_len": 128, "batch_size": 32}),
    ("bert-mini, 128 tokens", {"from_scratch": "bert-mini", "seq_len": 128, "batch_size": 32}),
    ("bert-small, 128 tokens", {"from_scratch": "bert-small", "seq_len": 128, "batch_size": 16}),
    ("bert-base, 128 tokens", {"from_scratch": "bert-base", "seq_len": 128, "batch_size": 8}),
    ("bert-base, 512 tokens", {"from_scratch": "bert-base", "seq_len": 512, "batch_size": 2}),
    ("modernbert-base, 128 tokens", {"from_scratch": "modernbert-base", "seq_len": 128, "batch_size": 8}),
    ("MiniLM-L6 starter, 128 tokens", {"model": "minilm-l6", "seq_len": 128, "batch_size": 32}),
]


def worker(settings: dict) -> None:
    import unmask

    print(json.dumps(unmask.plan(**settings)))


def run_worker(settings: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(settings)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "corpus" / "pydocs"))
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--check-steps", type=int, default=60, help="steps of the real run the tiny plan is checked against")
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    import torch

    from unmask.runtime.hardware import cpu_bf16_hardware, cpu_name

    work = Path(tempfile.mkdtemp(prefix="unmask-speed-"))
    subprocess.run([sys.executable, "-m", "unmask", "prepare", args.corpus, "--out", str(work / "store")], check=True, capture_output=True)
    rows = []
    for label, shape in SHAPES:
        plan = run_worker({"data": [str(work / "store")], "out": str(work / "never"), "max_steps": 1000, **shape})
        rows.append((label, plan))
        print(f"{label}: {plan['tokens_per_s']:,.0f} tokens/s, MFU {plan['mfu']:.1%}", flush=True)
    # The plan against a real run of the first shape.
    check_label, shape = SHAPES[0]
    settings = {"data": [str(work / "store")], "max_steps": args.check_steps, "log_every": 10, "eval_every": 0, **shape}
    planned = run_worker({**settings, "out": str(work / "never")})
    run = work / "check"
    subprocess.run(
        [sys.executable, "-c", f"import unmask, json; unmask.train(**json.loads({json.dumps(json.dumps({**settings, 'out': str(run)}))}))"],
        check=True,
        capture_output=True,
    )
    summary = json.loads((run / "summary.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"tokens_per_s"' in line][1:]
    real_speed = sum(r["tokens_per_s"] for r in lines) / len(lines)  # the first line pays for warm-up, as the plan's first steps
    device = f"{cpu_name()}, {os.cpu_count()} cores, bf16 units: {cpu_bf16_hardware() or 'none'}"
    out = [
        "",
        "---",
        "",
        "## Tokens/s and MFU per shape (`unmask.plan`)",
        "",
        f"- command: `python benchmarks/speed_table.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; torch {torch.__version__}",
        f"- device: {device}; the peak is {rows[0][1]['peak_source']}",
        "- every figure: 2 warm-up and 5 measured steps of `unmask train ... --plan` on pydocs, default precision (--precision auto), packed windows",
        "",
        "| device | shape | batch | tokens/s | MFU | peak TFLOPS | memory measured | memory estimated | data wait |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (label, plan), (_, shape) in zip(rows, SHAPES):
        out.append(
            f"| CPU ({cpu_name()}) | {label} | {shape['batch_size']} | {plan['tokens_per_s']:,.0f} | {plan['mfu']:.1%} | {plan['peak_tflops']:.3g} | "
            f"{plan['memory_measured'] / 2**20:,.0f} MiB | {plan['memory_estimate'] / 2**20:,.0f} MiB | {plan['data_wait']:.1%} |"
        )
    out += [
        "",
        f"The plan against a real run ({check_label}, {args.check_steps} steps): the plan said {planned['tokens_per_s']:,.0f} tokens/s, "
        f"the run's log lines after the first averaged {real_speed:,.0f} ({planned['tokens_per_s'] / real_speed - 1:+.0%}); "
        f"the plan said {planned['seconds_to_end']:.0f} s to --max-steps {args.check_steps}, the run trained for {lines[-1]['train_seconds']:.0f} s; "
        f"memory: {planned['memory_estimate'] / 2**20:,.0f} MiB estimated, {planned['memory_measured'] / 2**20:,.0f} MiB measured by the plan "
        f"({planned['memory_measured'] / planned['memory_estimate'] - 1:+.0%}); the run's resident peak, the Python process and all, "
        f"{summary['peak_memory_gib'] * 1024:,.0f} MiB.",
        "",
    ]
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n".join(out))
    print("\n".join(out))


if __name__ == "__main__":
    main()
