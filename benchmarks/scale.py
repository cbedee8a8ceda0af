"""A corpus of 10^9 to 10^12 tokens, simulated: does a training process grow with it?

    python benchmarks/scale.py --tokens 1e9,1e10,1e11,1e12 --processes 1,2
    python benchmarks/scale.py --layout padded --tokens 1e9,1e10,1e11 --processes 1,2
    python benchmarks/scale.py --layout shards --shards 1000,4000 --tokens 1e12 --processes 1,2

Makes a small real store from the bundled sample, then for each size a copy whose train split
claims that many tokens: its token and word-start files are extended as sparse files (no disk
used; the tokens past the real ones read as id 0). The layouts:

- `packed` (the default): one document of N tokens; training packs windows.
- `padded`: documents of --doc-tokens each (their offsets are a real file, 8 bytes a document),
  the window index for --seq-len 128 written by `unmask prepare --index` (timed), and training
  with `--packing padded`, windows that keep to documents.
- `shards`: a store of S shards of one group (as `prepare --shard I/S` on S machines would
  make), each a small real store whose train split claims N/S tokens; training packs windows.

Then it trains 2 steps of a tiny model on each, in one process or under torchrun, and prints a
Markdown table: each process's peak resident memory (summary.json's `peak_memory_gib`, the
highest of the processes) and the wall time of the whole command (start-up, the store opened
and checked, 2 steps, the final save). With --chart, a chart of the rows. Nothing else should
run on the machine meanwhile.
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

OFFSETS_CHUNK = 1 << 24


def sparse_store(real: Path, out: Path, tokens: int, documents: int = 1, shard: dict | None = None) -> None:
    """A copy of the store `real` whose train split claims `tokens` tokens in `documents`
    documents of equal length (the last takes the rest); its window indexes are left out."""
    out.mkdir(parents=True)
    for item in real.iterdir():
        if item.name == "tokenizer":  # the same files in every copy: linked, not copied
            shutil.copytree(item, out / item.name, copy_function=os.link)
        elif ".windows-" not in item.name:
            shutil.copyfile(item, out / item.name)
    dtype = np.dtype(json.loads((real / "meta.json").read_text())["dtype"])
    with open(out / "train.tokens", "r+b") as f:
        f.truncate(tokens * dtype.itemsize)  # sparse: only the real tokens at the front use the disk
    with open(out / "train.words", "r+b") as f:
        f.truncate((tokens + 7) // 8)
    each = tokens // documents
    with open(out / "train.offsets", "wb") as f:
        for first in range(0, documents + 1, OFFSETS_CHUNK):
            starts = np.arange(first, min(first + OFFSETS_CHUNK, documents + 1), dtype=np.int64) * each
            if first + OFFSETS_CHUNK > documents:
                starts[-1] = tokens
            f.write(starts.tobytes())
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["train"] = {"documents": documents, "tokens": tokens}
    meta.pop("window_index", None)
    if shard is not None:
        meta["shard"] = shard
        meta["store_id"] = os.urandom(16).hex()
    (out / "meta.json").write_text(json.dumps(meta))


def sharded_store(real: Path, out: Path, tokens: int, shards: int) -> None:
    """A store of `shards` shards of one group, each `real` with a train split of tokens/shards
    tokens in one document: shard i holds block i of the train split and of the held-out one."""
    held_out = json.loads((real / "meta.json").read_text())["splits"]["val"]["documents"]
    for index in range(shards):
        record = {"group": 0, "index": index, "count": shards, "doc_base": 0, "documents_read": shards * (1 + held_out)}
        folder = out / f"shard-000-{index:05d}-of-{shards:05d}"
        sparse_store(real, folder, tokens // shards, shard=record)
        np.array([[index, 1]], dtype=np.int64).tofile(folder / "train.blocks")
        np.array([[index, held_out]], dtype=np.int64).tofile(folder / "val.blocks")


def train_once(store: Path, run: Path, processes: int, packing: str) -> tuple[float, float]:
    """(seconds, peak resident GiB of the largest process) of 2 training steps."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        if processes > 1
        else [sys.executable]
    )
    command = [*launcher, "-m", "unmask", "train", "--data", str(store), "--out", str(run), "--from-scratch", "tiny"]
    command += ["--max-steps", "2", "--batch-size", "8", "--seq-len", "128", "--packing", packing]
    # The final held-out score reads 4 batches: a simulated store of shards holds every shard's real held-out split.
    command += ["--eval-every", "0", "--eval-max-batches", "4", "--checkpoint-every", "0", "--progress", "none"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads((run / "summary.json").read_text())["peak_memory_gib"]


def unmask(*arguments: str) -> float:
    """Seconds an `unmask` command takes."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unmask", *arguments], check=True, capture_output=True)
    return time.perf_counter() - started


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory, wall) = plt.subplots(1, 2, figsize=(10, 4))
    series = sorted({(r["layout"], r["shards"], r["processes"]) for r in rows})
    for layout, shards, processes in series:
        mine = sorted(
            (r for r in rows if (r["layout"], r["shards"], r["processes"]) == (layout, shards, processes)), key=lambda r: r["tokens"]
        )
        label = f"{layout}{f' ({shards} shards)' if shards > 1 else ''}, {processes} process{'es' if processes > 1 else ''}"
        style = dict(marker="o", linestyle="-" if processes == 1 else "--", label=label)
        memory.plot([r["tokens"] for r in mine], [r["memory_mib"] for r in mine], **style)
        wall.plot([r["tokens"] for r in mine], [r["seconds"] for r in mine], **style)
    for axes, title in ((memory, "peak resident memory per process (MiB)"), (wall, "wall time: start, 2 steps, save (s)")):
        axes.set_xscale("log")
        axes.set_xlabel("train tokens (simulated)")
        axes.set_title(title, fontsize=10)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
    memory.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="1e9,1e10,1e11,1e12", help="train-split sizes, comma-separated")
    parser.add_argument("--processes", default="1,2", help="process counts, comma-separated (2: torchrun on this machine)")
    parser.add_argument("--layout", choices=["packed", "padded", "shards"], default="packed")
    parser.add_argument("--doc-tokens", type=int, default=1000, help="tokens a document (--layout padded)")
    parser.add_argument("--shards", default="1000", help="shard counts, comma-separated (--layout shards)")
    parser.add_argument("--json", type=Path, help="append each row to this JSON-lines file")
    parser.add_argument("--chart", type=Path, help="draw the rows of --json (all layouts) into this PNG, and stop")
    args = parser.parse_args()
    if args.chart:
        chart([json.loads(line) for line in args.json.read_text().splitlines() if line.strip()], args.chart)
        return
    sizes = [int(float(t)) for t in args.tokens.split(",")]
    counts = [int(p) for p in args.processes.split(",")]
    shard_counts = [int(s) for s in args.shards.split(",")] if args.layout == "shards" else [1]
    from unmask.runtime.hardware import cpu_name

    with tempfile.TemporaryDirectory(prefix="unmask-scale-", dir=os.environ.get("UNMASK_SCALE_DIR")) as work:
        work = Path(work)
        real = work / "real"
        small = ["--max-docs", "40", "--val-fraction", "0.1"] if args.layout == "shards" else []
        unmask("prepare", "sample:pydocs", "--out", str(real), "--tokenizer", "minilm-l6", *small)
        rows = []
        for size in sizes:
            for shards in shard_counts:
                store = work / f"store-{size}-{shards}"
                documents = size // args.doc_tokens if args.layout == "padded" else 1
                made = time.perf_counter()
                if args.layout == "shards":
                    sharded_store(real, store, size, shards)
                else:
                    sparse_store(real, store, size, documents)
                made = time.perf_counter() - made
                indexed = unmask("prepare", "--index", str(store), "--padded-lengths", "128") if args.layout == "padded" else 0.0
                for processes in counts:
                    packing = "padded" if args.layout == "padded" else "packed"
                    seconds, peak = train_once(store, work / f"run-{size}-{shards}-{processes}", processes, packing)
                    row = dict(layout=args.layout, tokens=size, documents=documents * shards, shards=shards, processes=processes)
                    row.update(
                        memory_mib=round(peak * 1024),
                        seconds=round(seconds, 1),
                        index_seconds=round(indexed, 1),
                        made_seconds=round(made, 1),
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")
                shutil.rmtree(store)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores, {platform.python_version()}; 2 steps of --from-scratch tiny, 8 x 128 tokens")
    print(
        "| layout | train tokens | documents | shards | processes | peak resident memory per process | wall time | window index written in |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        index = f"{r['index_seconds']} s" if r["layout"] == "padded" else "-"
        print(
            f"| {r['layout']} | {r['tokens']:.0e} | {r['documents']:,} | {r['shards']:,} | {r['processes']} | "
            f"{r['memory_mib']:,} MiB | {r['seconds']} s | {index} |"
        )


if __name__ == "__main__":
    main()
