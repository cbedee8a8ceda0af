"""Peak memory of the MLM head's loss and backward, all logits at once against chunks
(`masked_lm.chunked_cross_entropy`), for a 30k and a 256k vocabulary. CPU, fp32; each case runs
in a fresh process, and its figure is the peak resident memory it reached above what it held
once the head, the hidden states and the targets were made (the head's weight gradient, the
same in both, included).

    python benchmarks/head_memory.py                 # the table
    python benchmarks/head_memory.py --rows 1024     # fewer masked positions
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def one_case(vocab: int, rows: int, width: int, chunked: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from unmask.models.masked_lm import chunked_cross_entropy, head_chunk_rows

    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab)
    hidden = torch.randn(rows, width, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    before = resident_bytes()
    began = time.perf_counter()
    chunk = head_chunk_rows(rows, vocab) if chunked else None
    if chunk is None:
        loss = F.cross_entropy(head(hidden).float(), targets, reduction="sum")
    else:
        loss = chunked_cross_entropy(hidden, head, targets, chunk)
    loss.backward()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"vocab": vocab, "rows": rows, "chunk_rows": chunk, "peak_gib": (peak - before) / 2**30, "seconds": seconds, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="masked positions in the step")
    parser.add_argument("--width", type=int, default=768, help="hidden size (bert-base: 768)")
    parser.add_argument("--case", nargs=3, metavar=("VOCAB", "ROWS", "CHUNKED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        vocab, rows, chunked = int(args.case[0]), int(args.case[1]), args.case[2] == "1"
        print(json.dumps(one_case(vocab, rows, args.width, chunked)))
        return
    print("| vocabulary | masked positions | head | chunk | peak above inputs | seconds |\n|---|---|---|---|---|---|")
    for vocab in (30522, 262144):
        for chunked in (False, True):
            out = subprocess.run(
                [sys.executable, __file__, "--width", str(args.width), "--case", str(vocab), str(args.rows), "1" if chunked else "0"],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            how = "chunked" if chunked else "all at once"
            chunk = f"{r['chunk_rows']:,} rows" if r["chunk_rows"] else "one piece"
            print(f"| {vocab:,} | {rows_text(r['rows'])} | {how} | {chunk} | {r['peak_gib']:.2f} GiB | {r['seconds']:.2f} |", flush=True)


def rows_text(rows: int) -> str:
    return f"{rows:,}"


if __name__ == "__main__":
    main()
