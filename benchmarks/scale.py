"""A corpus of 10^9 to 10^12 tokens, simulated: does a training process grow with it?

    python benchmarks/scale.py --tokens 1e9,1e10,1e11,1e12 --processes 1,2

Makes a small real store from the bundled sample, then for each size a copy whose train split
claims that many tokens: its token and word-start files are extended as sparse files (no disk
used; the tokens past the real ones read as id 0), one document. Then trains 2 steps of a tiny
model on each, in one process or under torchrun, and prints a Markdown table: each process's
peak resident memory (summary.json's `peak_memory_gib`, the highest of the processes) and the
wall time of the whole command (start-up, 2 steps, the final save). Nothing else should run on
the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def sparse_store(real: Path, out: Path, tokens: int) -> None:
    """A copy of the store `real` whose train split claims `tokens` tokens in one document."""
    shutil.copytree(real, out)
    dtype = np.dtype(json.loads((real / "meta.json").read_text())["dtype"])
    with open(out / "train.tokens", "r+b") as f:
        f.truncate(tokens * dtype.itemsize)  # sparse: only the real tokens at the front use the disk
    with open(out / "train.words", "r+b") as f:
        f.truncate((tokens + 7) // 8)
    (out / "train.offsets").write_bytes(np.array([0, tokens], dtype=np.int64).tobytes())
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["train"] = {"documents": 1, "tokens": tokens}
    (out / "meta.json").write_text(json.dumps(meta))


def train_once(store: Path, run: Path, processes: int) -> tuple[float, float]:
    """(seconds, peak resident GiB of the largest process) of 2 training steps."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "unmask", "train", "--data", str(store), "--out", str(run), "--from-scratch", "tiny"]
    command += [
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--seq-len",
        "128",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "0",
        "--progress",
        "none",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((run / "summary.json").read_text())["peak_memory_gib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1e9,1e10,1e11,1e12", help="train-split sizes, comma-separated")
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated (2: torchrun on this machine)")
    args = parser.parse_args()
    sizes = [int(float(t)) for t in args.tokens.split(",")]
    counts = [int(p) for p in args.processes.split(",")]
    from unmask.runtime.hardware import cpu_name

    with tempfile.TemporaryDirectory(prefix="unmask-scale-") as work:
        work = Path(work)
        real = work / "real"
        subprocess.run(
            [sys.executable, "-m", "unmask", "prepare", "sample:pydocs", "--out", str(real), "--tokenizer", "minilm-l6"],
            check=True,
            capture_output=True,
        )
        rows = []
        for size in sizes:
            store = work / f"store-{size}"
            sparse_store(real, store, size)
            for processes in counts:
                seconds, peak = train_once(store, work / f"run-{size}-{processes}", processes)
                rows.append(f"| {size:.0e} | {size // 126:,} | {processes} | {peak * 1024:,.0f} MiB | {seconds:.1f} s |")
                print(rows[-1], flush=True)
            shutil.rmtree(store)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}; 2 steps of --from-scratch tiny, 8 x 128 tokens")
    print("| train tokens | packed windows | processes | peak resident memory per process | wall time |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
