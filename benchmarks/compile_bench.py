"""What `--compile` (torch.compile of the encoder layers that see every token) buys on this
machine: the same short pretraining run with and without it, each in a process of its own,
from the bundled sample corpus. Prints the wall time of the whole run (compiling included) and
the training speed once warm (the median tokens/s of the log lines after the first).

    python benchmarks/compile_bench.py                         # mini BERT, 128 tokens, on the CPU
    python benchmarks/compile_bench.py --size base --device cuda --steps 60 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "unmask" / "sample_corpus" / "pydocs"


def unmask(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "unmask", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"unmask {args[0]} failed:\n{done.stderr[-2000:]}")


def one_run(store: Path, out: Path, args: argparse.Namespace, compiled: bool) -> dict:
    flags = ["--compile"] if compiled else ["--no-compile"]
    began = time.perf_counter()
    unmask(
        "train", "--data", str(store), "--from-scratch", args.size, "--out", str(out), "--max-steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--log-every", str(args.log_every),
        "--eval-every", "0", "--checkpoint-every", "0", "--device", args.device, "--progress", "none", *flags,
    )  # fmt: skip
    wall = time.perf_counter() - began
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [line["tokens_per_s"] for line in lines if "tokens_per_s" in line][1:]
    return {"compile": compiled, "wall_s": wall, "tokens_per_s": statistics.median(rates) if rates else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="mini")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--log-every", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        store = Path(work) / "store"
        unmask("prepare", str(SAMPLE), "--out", str(store))
        rows = [one_run(store, Path(work) / f"run-{compiled}", args, compiled) for compiled in (False, True)]
    print(f"{args.size}, {args.seq_len} tokens, batch {args.batch_size}, {args.steps} steps on {args.device}")
    print("| --compile | whole run (compiling included) | tokens/s once warm |\n|---|---|---|")
    for row in rows:
        print(f"| {'on' if row['compile'] else 'off'} | {row['wall_s']:.1f} s | {row['tokens_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
