"""Peak memory of the MLM head, all logits at once against chunks, for a 30k and a 256k
vocabulary: in training (loss and backward, `masked_lm.chunked_cross_entropy`) and in
evaluation (loss and top-5 without gradients, `masked_lm.scored_in_chunks`). CPU, fp32; each case runs
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


def one_case(vocab: int, rows: int, width: int, chunked: bool, evaluation: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from unmask.models.masked_lm import best_ids, chunked_cross_entropy, head_chunk_rows, scored_in_chunks

    torch.manual_seed(0)
    head = torch.nn.Linear(width, vocab)
    hidden = torch.randn(rows, width, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    before = resident_bytes()
    began = time.perf_counter()
    chunk = head_chunk_rows(rows, vocab) if chunked else None
    if evaluation:  # no gradients: the loss and each position's five best ids, as held-out evaluation takes them
        with torch.no_grad():
            if chunk is None:
                logits = head(hidden).float()
                loss, _ = F.cross_entropy(logits, targets, reduction="sum"), best_ids(logits, 5)
            else:
                loss, _ = scored_in_chunks(hidden, head, targets, chunk, 5)
    else:
        loss = (
            F.cross_entropy(head(hidden).float(), targets, reduction="sum")
            if chunk is None
            else chunked_cross_entropy(hidden, head, targets, chunk)
        )
        loss.backward()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"vocab": vocab, "rows": rows, "chunk_rows": chunk, "peak_gib": (peak - before) / 2**30, "seconds": seconds, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="masked positions in the step")
    parser.add_argument("--width", type=int, default=768, help="hidden size (bert-base: 768)")
    parser.add_argument("--case", nargs=4, metavar=("VOCAB", "ROWS", "CHUNKED", "EVALUATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        vocab, rows, chunked, evaluation = int(args.case[0]), int(args.case[1]), args.case[2] == "1", args.case[3] == "1"
        print(json.dumps(one_case(vocab, rows, args.width, chunked, evaluation)))
        return
    print("| vocabulary | masked positions | pass | head | chunk | peak above inputs | seconds |\n|---|---|---|---|---|---|---|")
    for vocab in (30522, 262144):
        for evaluation in (False, True):
            for chunked in (False, True):
                case = [str(vocab), str(args.rows), "1" if chunked else "0", "1" if evaluation else "0"]
                out = subprocess.run(
                    [sys.executable, __file__, "--width", str(args.width), "--case", *case], capture_output=True, text=True, check=True
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                chunk = f"{r['chunk_rows']:,} rows" if r["chunk_rows"] else "one piece"
                what = "evaluation (no gradients)" if evaluation else "training (loss and backward)"
                how = "chunked" if chunked else "all at once"
                print(
                    f"| {vocab:,} | {r['rows']:,} | {what} | {how} | {chunk} | {r['peak_gib']:.2f} GiB | {r['seconds']:.2f} |", flush=True
                )


if __name__ == "__main__":
    main()
