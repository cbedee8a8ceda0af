"""The host's side of a training step, per CPU core: can it keep a GPU fed?

    python benchmarks/host_bench.py --data runs/pydocs

Sets a run up (a tiny model: the host's work does not depend on it) and times `draw_or_drop` (the `Drawer`)
alone, on one thread: taking the step's windows in the epoch's order, reading and framing
them, masking them (token, whole-word, span), planning where the masked positions fall, and
the documents of each window where they attend apart. Prints tokens/s per core for each
strategy and window length. One H100 at 50% MFU consumes about 700,000 tokens/s of bert-base
at 128 tokens a window. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def tokens_per_second(data: str, seq_len: int, masking: str, attention_across_docs: bool, seconds: float) -> float:
    from unmask.api import train_settings
    from unmask.pretrain.step import draw_or_drop
    from unmask.pretrain.train import setup
    from unmask.runtime.preemption import StopSignals

    with tempfile.TemporaryDirectory(prefix="unmask-host-") as work:
        config = train_settings(
            data=data,
            out=f"{work}/run",
            from_scratch="tiny",
            seq_len=seq_len,
            batch_size=max(1, 32768 // seq_len),  # 32,768 tokens a step
            masking=masking,
            attention_across_docs=attention_across_docs,
            max_steps=10**9,
            progress="none",
        )
        run = setup(config, echo=lambda _: None)
        try:
            signals = StopSignals()  # not entered: never receives one
            draw_or_drop(run, signals)  # the first pays for page faults of the store
            tokens, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                drawn = draw_or_drop(run, signals)
                tokens += drawn.slots
                run.state.step += 1
            return tokens / (time.perf_counter() - started)
        finally:
            run.lock.release()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a token store (unmask prepare)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from unmask.runtime.hardware import cpu_name

    print(f"{cpu_name()}, one thread; window positions drawn a second (padding included)")
    print("| window | masking | documents | tokens/s per core |")
    print("|---|---|---|---|")
    for seq_len in (128, 512):
        for masking in ("token", "whole-word", "span"):
            for apart in (False, True):
                rate = tokens_per_second(args.data, seq_len, masking, not apart, args.seconds)
                print(f"| {seq_len} | {masking} | {'apart' if apart else 'packed'} | {rate:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
