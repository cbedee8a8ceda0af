"""FlexAttention with a document block mask against SDPA under the same (T x T) mask, on this
machine: forward time at 512 and 2,048 tokens, windows packed with documents of about 300
tokens (bert-base heads: 12 x 64, batch 8). Forward only: FlexAttention has no backward on a
CPU in torch 2.13. A length whose FlexAttention kernel fails to compile says so.

    python benchmarks/attention_bench.py
    python benchmarks/attention_bench.py --device cuda --backward   # on a GPU (gpu_check.py runs it)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def best_of(function, repeats: int, device: torch.device) -> float:
    function()  # warm up (and compile)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return min(times)


def measure(length: int, batch: int, document: int, device: torch.device, backward: bool, repeats: int) -> dict:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    generator = torch.Generator().manual_seed(0)
    documents = torch.cumsum((torch.rand(batch, length, generator=generator) < 1 / document).int(), 1).to(device)
    q, k, v = (torch.randn(batch, 12, length, 64, device=device, requires_grad=backward) for _ in range(3))
    block_mask = create_block_mask(lambda b, h, qi, ki: documents[b, qi] == documents[b, ki], batch, None, length, length, device=device)
    dense = (documents[:, :, None] == documents[:, None, :])[:, None]
    compiled = torch.compile(flex_attention, dynamic=False)

    def run(attend):
        def step():
            out = attend()
            if backward:
                out.sum().backward()

        return step

    result = {"tokens": length, "skipped_blocks": f"{block_mask.sparsity():.0f}%"}
    result["sdpa_ms"] = 1000 * best_of(run(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)), repeats, device)
    try:
        result["flex_ms"] = 1000 * best_of(run(lambda: compiled(q, k, v, block_mask=block_mask)), repeats, device)
    except Exception as error:  # inductor's CPU kernel fails to compile at some shapes in torch 2.13
        result["flex_ms"] = f"failed: {type(error).__name__}"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backward", action="store_true", help="time forward and backward (CUDA only for flex)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--document", type=int, default=300, help="mean document length in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, {device}; {'forward and backward' if args.backward else 'forward'}, batch {args.batch}, 12 heads of 64"
    )
    print("| tokens | blocks skipped by the mask | SDPA (dense mask) | FlexAttention |\n|---|---|---|---|")
    for length in args.lengths:
        r = measure(length, args.batch, args.document, device, args.backward, args.repeats)
        flex = f"{r['flex_ms']:.1f} ms" if isinstance(r["flex_ms"], float) else r["flex_ms"]
        print(f"| {length:,} | {r['skipped_blocks']} | {r['sdpa_ms']:.1f} ms | {flex} |", flush=True)


if __name__ == "__main__":
    main()
