"""Checkpoint size and seconds: unmask's full-state checkpoint against a sharded one written
by `torch.distributed.checkpoint` (DCP), for models sharded by FSDP2.

    torchrun --standalone --nproc-per-node 2 benchmarks/checkpoint_bench.py --sizes base,large

For each size, a BERT of that shape (random weights) is sharded with FSDP2 over the processes,
the AdamW state made by one step, and then:

- full: what `unmask train` does at each checkpoint: every process gathers the unsharded
  weights and optimizer state to rank 0's CPU (`runtime.persist.full_state`), which writes them
  as safetensors with their SHA-256 (`storage.checkpoint.save_checkpoint`).
- sharded: each process writes its own shard with `torch.distributed.checkpoint.save`.

Prints a Markdown row per size: the state's bytes, seconds for each way (the slowest process),
and rank 0's resident memory before and after the full gather. Writes under --dir (default: a
temporary folder on the same disk as /tmp).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import BertConfig, BertForMaskedLM

from unmask.models.masked_lm import MaskedLM
from unmask.runtime import distributed
from unmask.runtime.persist import full_state
from unmask.storage.checkpoint import CheckpointInfo, save_checkpoint
from unmask.storage.rundir import RunDir

SHAPES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


def resident_gib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(action) -> float:
    dist.barrier()
    started = time.perf_counter()
    action()
    dist.barrier()
    return time.perf_counter() - started


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def measure(size: str, world, device, here: Path) -> str | None:
    """One size's row (rank 0), after both saves."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    lm = MaskedLM(BertForMaskedLM(BertConfig(vocab_size=30522, **SHAPES[size])))
    parameters = sum(p.numel() for p in lm.parameters())
    distributed.parallelize(lm, "fsdp", device, None)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-4)
    for p in lm.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # AdamW's two moments now exist, as in any checkpoint after step 1
    if world.is_main:
        shutil.rmtree(here, ignore_errors=True)
        (here / "full").mkdir(parents=True)
    dist.barrier()
    before = resident_gib()

    def save_full() -> None:
        weights, named = full_state(lm, optimizer, "fsdp")
        if world.is_main:
            info = CheckpointInfo(step=1, strategy="fsdp", world_size=world.size)
            save_checkpoint(RunDir(here / "full"), info, weights, named, keep=1)

    def save_sharded() -> None:
        weights, optimizer_state = get_state_dict(lm, optimizer)
        dcp.save({"model": weights, "optimizer": optimizer_state}, checkpoint_id=str(here / "sharded"))

    full_seconds = timed(save_full)
    after = resident_gib()
    sharded_seconds = timed(save_sharded)
    if not world.is_main:
        return None
    full_bytes, sharded_bytes = folder_bytes(here / "full"), folder_bytes(here / "sharded")
    shutil.rmtree(here, ignore_errors=True)
    return (
        f"| bert-{size} | {parameters / 1e6:,.0f}M | {world.size} | {full_bytes / 2**30:.2f} GiB | {full_seconds:.1f} s "
        f"({full_bytes / 2**20 / full_seconds:,.0f} MiB/s) | {sharded_bytes / 2**30:.2f} GiB | {sharded_seconds:.1f} s "
        f"({sharded_bytes / 2**20 / sharded_seconds:,.0f} MiB/s) | {before:.2f} -> {after:.2f} GiB |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="base,large")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    world, device = distributed.join("cpu")
    root = args.dir or Path(tempfile.gettempdir()) / "unmask-checkpoint-bench"
    rows = []
    for size in args.sizes.split(","):
        row = measure(size, world, device, root / size)
        if row:
            rows.append(row)
            print(row, flush=True)
    if world.is_main:
        from unmask.runtime.hardware import cpu_name

        print(f"\n{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, gloo; {world.size} processes")
        print(
            "| model | parameters | processes | full checkpoint | full: seconds | sharded (DCP) | sharded: seconds | rank 0 peak resident, before -> after the full gather |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    distributed.leave()
    distributed.end_process_if_it_made_the_group(0)


if __name__ == "__main__":
    main()
