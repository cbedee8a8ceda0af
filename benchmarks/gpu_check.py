"""Everything about a GPU in one command: the CLI end to end on CUDA, determinism of two runs
and of a kill and resume, each architecture's tokens/s from scratch (documents apart or not;
ModernBERT unpadded where flash-attn is installed) and a context extension, throughput and
MFU of both sides at the bert-base shape (sequence length 128 batch 256, and 512 batch 64),
and memory. Then each attention
path (sdpa, torch's varlen, FlexAttention, flash-attn) at bert-base 128 and 512 and
ModernBERT-base 1,024, FlexAttention's kernel against SDPA's, and what --compile buys. Writes a
Markdown table that benchmarks/RESULTS.md can take as it is.

    bash benchmarks/gpu_check.sh                 # sets up, then runs this (about 6 minutes on an H200)
    python benchmarks/gpu_check.py --out benchmarks/gpu_results.md

Works from the bundled sample corpus (no network). `--dry-run` runs every section tiny on
the CPU, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def unmask(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "unmask", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"unmask {' '.join(args[:3])} failed:\n{result.stderr[-2000:]}")
    return result


def same_weights(a: Path, b: Path) -> float:
    """The largest absolute difference between two model folders' weights (0.0: bit for bit)."""
    from safetensors.torch import load_file

    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return max(float((x[k].float() - y[k].float()).abs().max()) for k in x)


def matmul_peak(device: str) -> float:
    """TFLOP/s of a large bf16 matrix product (fp32 on the CPU), the best of a few."""
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    size = 8192 if device == "cuda" else 512
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(10):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / 10)
    return 2 * size**3 / best / 1e12


ATTENTION_SHAPES = [("bert-base", "128", "128"), ("bert-base", "512", "32"), ("modernbert-base", "1024", "16")]
"""(--from-scratch, --seq-len, --batch-size) of the attention comparison."""


def median_of(lines: list[dict], key: str) -> float:
    values = sorted(line.get(key) or 0.0 for line in lines)
    return values[len(values) // 2] if values else float("nan")


def attention_paths(where: list[str], work: Path, device: str, dry_run: bool) -> list[str]:
    """One short run per (shape, attention path): median tokens/s, MFU and memory of its log lines."""
    rows = []
    shapes = [("mini", "64", "8"), ("modernbert-mini", "64", "8")] if dry_run else ATTENTION_SHAPES
    for model, seq_len, batch in shapes:
        for path in ("sdpa", "varlen", "flex", "flash"):
            out = work / f"attention-{model}-{seq_len}-{path}"
            result = unmask(
                "train", *where, "--from-scratch", model, "--seq-len", seq_len, "--batch-size", batch, "--dropout", "0",
                "--no-attention-across-docs", "--attention", path, "--max-steps", "6" if dry_run else "30", "--log-every", "2" if dry_run else "5",
                "--lr", "1e-4", "--out", str(out), check=False,
            )  # fmt: skip
            label = f"{model} at {seq_len} x {batch}, documents apart, --attention {path}"
            if result.returncode != 0:
                rows.append(f"| {label} | refused: {result.stderr.strip().splitlines()[-1][:200] if result.stderr.strip() else 'failed'} |")
                continue
            lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            logged = [line for line in lines if "tokens_per_s" in line][1:] or [line for line in lines if "tokens_per_s" in line]
            speed, mfu, memory = (median_of(logged, key) for key in ("tokens_per_s", "mfu", "memory_gib"))
            rows.append(f"| {label} | {speed:,.0f} tokens/s, MFU {mfu:.1%}, {memory:.2f} GiB, loss {logged[-1]['loss']:.3f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "gpu_results.md"))
    parser.add_argument("--dry-run", action="store_true", help="every section tiny, on the CPU")
    args = parser.parse_args()
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here (use --dry-run to check the script on the CPU)")
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU (dry run)"
    rows: list[str] = []
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="unmask-gpu-"))
    steps = 6 if args.dry_run else 60

    # 1. The CLI end to end on the device.
    store = work / "store"
    unmask("prepare", "sample:pydocs", "--out", str(store), "--doc-per", "blank-line", "--val-fraction", "0.1")
    # Where every run reads and runs; the short runs' schedule; then each section's shape.
    where = ["--data", str(store), "--device", device, "--progress", "none", "--eval-every", "0"]
    short = [*where, "--lr", "1e-3", "--warmup-steps", "2"]
    common = [*short, "--from-scratch", "mini", "--seq-len", "128", "--batch-size", "32", "--dropout", "0.1"]

    def mini_run(out: Path, *extra: str) -> list[str]:
        """`unmask train` of the mini model for `steps` steps, a checkpoint half way."""
        return ["train", *common, *extra, "--out", str(out), "--max-steps", str(steps), "--checkpoint-every", str(steps // 2)]

    e2e = time.time()
    unmask(*mini_run(work / "e2e"))
    unmask("eval", str(work / "e2e"), "--data", str(store), "--device", device, "--json")
    unmask("fill", str(work / "e2e"), "def [MASK](self):", "--device", device)
    unmask(
        "probe", str(work / "e2e"), "--train", "sample:pydocs-sections:train", "--eval", "sample:pydocs-sections:eval", "--device", device
    )
    rows.append(f"| CLI end to end on {device} (prepare, train {steps} steps, eval, fill, probe) | passed in {time.time() - e2e:.0f} s |")

    # 2. Determinism: two runs, and a run killed after its first checkpoint and resumed.
    for flag, label in (([], "default"), (["--deterministic"], "--deterministic")):
        runs = []
        for number in range(2):
            out = work / f"det-{label}-{number}"
            began = time.time()
            unmask(*mini_run(out, *flag))
            runs.append((out, time.time() - began))
        killed = work / f"det-{label}-killed"
        process = subprocess.Popen(
            [sys.executable, "-m", "unmask", *mini_run(killed, *flag)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while process.poll() is None and not list((killed / "checkpoints").glob("step-*")):
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        unmask("train", "--out", str(killed), "--resume")
        two = same_weights(runs[0][0] / "model", runs[1][0] / "model")
        resumed = same_weights(runs[0][0] / "model", killed / "model")
        summary = json.loads((runs[0][0] / "summary.json").read_text())
        rows.append(f"| {label}: two runs, max weight difference | {two:.3g}{' (bit for bit)' if two == 0 else ''} |")
        rows.append(f"| {label}: killed and resumed vs straight | {resumed:.3g}{' (bit for bit)' if resumed == 0 else ''} |")
        rows.append(f"| {label}: seconds for {steps} steps (mini, 32 x 128) | {runs[0][1]:.1f} (precision {summary['precision']}) |")

    # 3. Each architecture from scratch on the device, documents apart or not, and a
    # ModernBERT continued at four times its context with a larger RoPE base.
    import importlib.util

    flash = importlib.util.find_spec("flash_attn") is not None
    seq, longer = ("64", "256") if args.dry_run else ("512", "2048")
    arch_common = [*short, "--seq-len", seq, "--batch-size", "8" if args.dry_run else "32", "--log-every", "2"]
    for arch in ("bert", "roberta", "modernbert", "deberta-v2"):
        for apart in ([], ["--no-attention-across-docs"]) if arch == "modernbert" else ([],):
            out = work / f"arch-{arch}{'-apart' if apart else ''}"
            unmask("train", *arch_common, "--from-scratch", f"{arch}-mini", *apart, "--out", str(out), "--max-steps", str(steps))
            speeds = sorted(json.loads(line).get("tokens_per_s") or 0 for line in (out / "metrics.jsonl").read_text().splitlines())
            label = f"{arch}-mini{', documents apart' if apart else ''}{', flash attention' if flash and arch == 'modernbert' else ''}"
            rows.append(f"| {label}: tokens/s at {seq} tokens | {speeds[len(speeds) // 2]:,.0f} |")
    extended = work / "modernbert-long"
    unmask(
        "train",
        *where,
        *("--model", str(work / "arch-modernbert"), "--seq-len", longer, "--rope-theta", "160000"),
        *("--batch-size", "2" if args.dry_run else "8", "--max-steps", str(steps), "--out", str(extended)),
    )
    summary = json.loads((extended / "summary.json").read_text())
    rows.append(
        f"| modernbert-mini continued at {longer} tokens, RoPE base 160,000: eval loss at {longer} / at {seq} | "
        f"{summary['eval_loss']:.3f} / {summary[f'eval_loss@len{seq}']:.3f} |"
    )

    # 4. Throughput, MFU and memory of both sides at the bert-base shape.
    peak = matmul_peak(device)
    rows.append(f"| measured matmul peak ({'bf16' if device == 'cuda' else 'fp32'}) | {peak:.3g} TFLOP/s |")
    tables = []
    for seq_len, batch in ((128, 256), (512, 64)) if not args.dry_run else ((32, 4),):
        table = work / f"bench-{seq_len}.md"
        shapes = ["--shapes", "base", "--base-steps", "20" if not args.dry_run else "4", "--base-warmup", "5" if not args.dry_run else "2"]
        command = [
            sys.executable,
            str(HERE / "bench.py"),
            *shapes,
            "--base-dropouts",
            "0.1",
            "--batch-size",
            str(batch),
            "--seq-len",
            str(seq_len),
            "--skip",
            "prepare,formats,tokenizer,fill,profile",
            "--out",
            str(table),
            "--corpus",
            str(Path(__file__).resolve().parent.parent / "src" / "unmask" / "sample_corpus" / "pydocs"),
            "--curves",
            str(work / f"curves-{seq_len}.png"),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tables.append(f"bench.py at {seq_len} x {batch} failed:\n\n```\n{result.stderr[-1500:]}\n```")
        else:
            tables.append(f"### bert-base shape, sequence length {seq_len}, batch {batch}\n\n" + table.read_text())
    # 5. Each attention path at the shapes that matter: tokens/s, MFU and peak memory, from
    # the runs' own metrics lines; a path that cannot run here is the one line it is refused with.
    rows += attention_paths(where, work, device, args.dry_run)

    # 6. FlexAttention's kernel against SDPA's, and what --compile buys, on this device.
    for script, extra in (("attention_bench.py", ["--backward"] if device == "cuda" else []), ("compile_bench.py", [])):
        shape = ["--lengths", "128"] if args.dry_run and script == "attention_bench.py" else []
        shape += ["--steps", "4", "--log-every", "2", "--size", "tiny"] if args.dry_run and script == "compile_bench.py" else []
        shape += ["--size", "base", "--batch-size", "64", "--steps", "40"] if not args.dry_run and script == "compile_bench.py" else []
        result = subprocess.run([sys.executable, str(HERE / script), "--device", device, *extra, *shape], capture_output=True, text=True)
        tables.append(f"### {script}\n\n" + (result.stdout if result.returncode == 0 else f"failed:\n\n```\n{result.stderr[-1500:]}\n```"))

    lines = [
        f"## GPU check: {name} ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`python benchmarks/gpu_check.py{' --dry-run' if args.dry_run else ''}`, torch {torch.__version__}, {time.time() - started:.0f} s in all.",
        "",
        "| check | result |",
        "|---|---|",
        *rows,
        "",
        *tables,
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
