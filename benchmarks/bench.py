"""unmask against the Hugging Face recipe (run_mlm.py: datasets.map tokenize + group_texts,
DataCollatorForLanguageModeling(0.15), Trainer) on the same model shape, data, batch,
sequence length, learning rate, precision and machine.

    python benchmarks/bench.py --corpus ../shared/corpus/pydocs

Every measurement runs in a subprocess of its own (so peak RSS is that run's alone), the
two sides alternate, and the table, the command, the date and the machine go to
benchmarks/RESULTS.md, with both loss curves in benchmarks/loss_curves.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {
    "minilm": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12, intermediate_size=1536),
    "base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def tokenizer_path() -> str:
    from unmask.storage.names import starter_path

    return starter_path()


# ---------------------------------------------------------------- workers (one per subprocess)


def worker_prepare_unmask(args) -> dict:
    from unmask.config import PrepareConfig
    from unmask.data.prepare import prepare

    started = time.perf_counter()
    meta = prepare(
        PrepareConfig(sources=[args.corpus], out=args.store, tokenizer=tokenizer_path(), val_fraction=0.01, overwrite=True), progress=False
    )
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in meta["splits"].values())
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_rss_mb()}


def peer_dataset(files: list[str], seq_len: int, cache_dir: str):
    """run_mlm.py's preparation: the text loader (a record per line), tokenize, group_texts."""
    import datasets
    from transformers import AutoTokenizer

    datasets.disable_caching()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    raw = datasets.load_dataset("text", data_files={"train": files}, cache_dir=cache_dir)["train"]
    tokenized = raw.map(lambda batch: tokenizer(batch["text"], return_special_tokens_mask=True), batched=True, remove_columns=["text"])

    def group_texts(examples):
        # run_mlm.py's own concatenation; `sum(lists, [])` would be quadratic and slow the peer down.
        concatenated = {k: list(itertools.chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // seq_len) * seq_len
        return {k: [t[i : i + seq_len] for i in range(0, total, seq_len)] for k, t in concatenated.items()}

    return tokenized.map(group_texts, batched=True), tokenized


def convert_corpus(corpus: str, folder: Path, kind: str, copies: int) -> None:
    """The corpus (one document per file) as one .parquet or .jsonl.zst file per copy, to time those readers."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [p.read_text(encoding="utf-8") for p in sorted(Path(corpus).rglob("*")) if p.is_file()]
    folder.mkdir(parents=True, exist_ok=True)
    for copy in range(copies):
        if kind == "parquet":
            pq.write_table(pa.table({"text": texts}), folder / f"copy{copy}.parquet", row_group_size=256)
        else:
            with io.TextIOWrapper(
                zstandard.ZstdCompressor().stream_writer(open(folder / f"copy{copy}.jsonl.zst", "wb")), encoding="utf-8"
            ) as f:
                for text in texts:
                    f.write(json.dumps({"text": text}) + "\n")


def worker_tokenizer(args) -> dict:
    """Train a vocabulary on the corpus less every 20th file; fertility on those held-out files."""
    from transformers import AutoTokenizer

    from unmask.config import TokenizerConfig
    from unmask.data.tokenizer_training import train_tokenizer

    files = sorted(p for p in Path(args.corpus).rglob("*") if p.is_file())
    held_out = files[::20]
    train_dir = Path(args.run_dir) / "train-files"
    train_dir.mkdir(parents=True, exist_ok=True)
    for p in files:
        if p not in held_out:
            (train_dir / f"{len(list(train_dir.iterdir())):05d}{p.suffix or '.txt'}").write_bytes(p.read_bytes())
    started = time.perf_counter()
    summary = train_tokenizer(
        TokenizerConfig(sources=[str(train_dir)], out=str(Path(args.run_dir) / "tok"), kind=args.side, vocab_size=30522, lowercase=True),
        progress=False,
    )
    seconds = time.perf_counter() - started
    text = "\n".join(p.read_text(encoding="utf-8") for p in held_out)
    words = len(text.split())
    ours = AutoTokenizer.from_pretrained(Path(args.run_dir) / "tok")
    base = AutoTokenizer.from_pretrained(tokenizer_path())
    count = lambda t: len(t(text, add_special_tokens=False)["input_ids"])
    return {
        "seconds": seconds,
        "vocab": summary["vocab_size"],
        "megabytes": summary["characters"] / 1e6,
        "words": words,
        "fertility": count(ours) / words,
        "base_fertility": count(base) / words,
        "peak_rss_mb": peak_rss_mb(),
    }


def worker_prepare_peer(args) -> dict:
    files = sorted(str(p) for p in Path(args.corpus).rglob("*") if p.is_file())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as cache:
        grouped, tokenized = peer_dataset(files, 128, cache)
        tokens = sum(len(ids) for ids in tokenized["input_ids"])
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mb": peak_rss_mb(), "windows": len(grouped)}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def peak_gpu_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0


def build_model_folder(shape: str, dropout: float, folder: Path, seq_len: int = 128) -> None:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=max(512, seq_len),
        **SHAPES[shape],
    )
    BertForMaskedLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_path()).save_pretrained(folder)


def worker_train_unmask(args) -> dict | None:
    """One unmask training run; under torchrun (--nproc > 1) each process takes batch / nproc
    windows, so the global batch is the peer's. Rank 0 alone returns the numbers."""
    import torch

    from unmask.config import TrainConfig
    from unmask.pretrain.train import train
    from unmask.runtime import distributed

    times = []

    def tick(step: int) -> None:
        times.append(time.perf_counter())

    world = int(os.environ.get("WORLD_SIZE", "1"))
    out = Path(args.run_dir)
    if os.environ.get("RANK", "0") == "0":
        shutil.rmtree(out, ignore_errors=True)
    config = TrainConfig(
        data=args.store,
        out=str(out),
        model=args.model,
        seq_len=args.seq_len,
        batch_size=args.batch_size // world,
        max_steps=args.steps,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        weight_decay=0.01,
        # A step that logs waits for the device; the others do not (on a GPU the host runs ahead).
        # Logging at the end of the warmup and of the run makes both ends of the timed span settled.
        log_every=1 if not on_gpu() else args.warmup,
        eval_every=0,
        checkpoint_every=0,
        seed=0,
        strategy=args.strategy,
        precision=args.precision,
    )
    started = time.perf_counter()
    train(config, progress=False, echo=lambda _: None, on_step=tick)
    step_seconds = [b - a for a, b in zip([started] + times[:-1], times)]
    if on_gpu():  # single steps are host time; the mean over the settled span is the device's
        span = (times[-1] - times[args.warmup - 1]) / max(len(times) - args.warmup, 1)
        step_seconds = step_seconds[: args.warmup] + [span] * (len(times) - args.warmup)
    rss = [peak_rss_mb()]
    if world > 1:
        gathered = torch.zeros(world, dtype=torch.float64)
        gathered[int(os.environ["RANK"])] = rss[0]
        torch.distributed.all_reduce(gathered)
        rss = gathered.tolist()
    distributed.leave()
    if os.environ.get("RANK", "0") != "0":
        return None
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    return {"step_seconds": step_seconds, "losses": losses, "peak_rss_mb": max(rss), "rank_rss_mb": rss, "peak_gpu_mb": peak_gpu_mb()}


def worker_train_peer(args) -> dict:
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments

    files = sorted(str(p) for p in Path(args.corpus).rglob("*") if p.is_file())
    with tempfile.TemporaryDirectory() as cache:
        grouped, _ = peer_dataset(files, args.seq_len, cache)
        grouped = grouped.remove_columns(["token_type_ids"]) if "token_type_ids" in grouped.column_names else grouped
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = BertForMaskedLM.from_pretrained(args.model)
        times: list[float] = []

        class Clock(TrainerCallback):
            def on_step_end(self, *_, **__):
                times.append(time.perf_counter())

        training_args = TrainingArguments(
            output_dir=os.path.join(cache, "out"),
            per_device_train_batch_size=args.batch_size,
            max_steps=args.steps,
            learning_rate=args.lr,
            warmup_steps=args.warmup_steps,
            weight_decay=0.01,
            lr_scheduler_type="linear",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            use_cpu=not on_gpu(),
            bf16=(on_gpu() and torch.cuda.is_bf16_supported()) or args.precision == "bf16",
            seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            train_dataset=grouped,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            callbacks=[Clock()],
        )
        torch.manual_seed(0)
        started = time.perf_counter()
        trainer.train()
        step_seconds = [b - a for a, b in zip([started] + times[:-1], times)]
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"step_seconds": step_seconds, "losses": losses, "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": peak_gpu_mb()}


def worker_fill(args) -> dict:
    import torch
    from transformers import pipeline

    from unmask.infer import Filler

    texts = [f"The [MASK] statement number {i} leaves a loop early in Python code." for i in range(args.fill_texts)]
    if args.side == "unmask":
        filler = Filler(args.model, device="cuda" if on_gpu() else "cpu", echo=lambda _: None)
        filler.fill(texts[:8], top_k=5)
        started = time.perf_counter()
        filler.fill(texts, top_k=5, batch_size=32)
    else:
        fill = pipeline("fill-mask", model=args.model, top_k=5, device=0 if on_gpu() else -1)
        fill(texts[:8], batch_size=8)
        started = time.perf_counter()
        with torch.no_grad():
            fill(texts, batch_size=32)
    seconds = time.perf_counter() - started
    return {"texts_per_s": len(texts) / seconds, "peak_rss_mb": peak_rss_mb()}


def worker_matmul_peak(args) -> dict:
    """fp32 2048^2 on CPU; bf16 8192^2 on a GPU, the precision both sides train in there."""
    import torch

    size, device, dtype = (8192, "cuda", torch.bfloat16) if on_gpu() else (2048, "cpu", torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    runs = []
    for _ in range(10):
        if on_gpu():
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if on_gpu():
            torch.cuda.synchronize()
        runs.append(time.perf_counter() - started)
    return {"gflops": 2 * size**3 / min(runs) / 1e9, "what": f"{'bf16' if on_gpu() else 'fp32'} {size}x{size}"}


def worker_profile(args) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from unmask.config import TrainConfig
    from unmask.data.masking import Masker
    from unmask.data.tokenizer import Vocabulary, load_tokenizer
    from unmask.models.masked_lm import load_mlm
    from unmask.pretrain.train import build_optimizer

    device = torch.device("cuda" if on_gpu() else "cpu")
    lm = load_mlm(args.model, echo=lambda _: None).to(device)
    lm.train()
    optimizer = build_optimizer(lm, TrainConfig(data="-", out="-", model=args.model), device)
    ids = torch.randint(1000, 30000, (args.batch_size, args.seq_len), device=device)
    attention = torch.ones_like(ids)
    masker = Masker(Vocabulary.from_tokenizer(load_tokenizer(args.model)), seed=0, device=device)

    def step():
        batch = masker(ids, attention)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu()):
            loss, _ = lm.loss_sum(batch.input_ids, attention, batch.labels)
        (loss / (batch.labels != -100).sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    step()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if on_gpu() else [])]
    with profile(activities=activities) as prof:
        step()
        if on_gpu():
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if on_gpu() else "self_cpu_time_total"
    return {"table": prof.key_averages().table(sort_by=sort, row_limit=14)}


WORKERS = {
    "prepare-unmask": worker_prepare_unmask,
    "prepare-peer": worker_prepare_peer,
    "tokenizer": worker_tokenizer,
    "train-unmask": worker_train_unmask,
    "train-peer": worker_train_peer,
    "fill": worker_fill,
    "matmul-peak": worker_matmul_peak,
    "profile": worker_profile,
}


# ---------------------------------------------------------------- driver


def run_worker(name: str, nproc: int = 1, threads: int | None = None, **options) -> dict:
    """Run one worker in a process of its own, or under torchrun in `nproc` processes."""
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"] if nproc > 1 else [sys.executable]
    )
    command = [*launcher, __file__, "--worker", name]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "true"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def train_flops_per_token(shape: str, seq_len: int, masked_share: float = 1.0, vocab: int = 30522) -> float:
    """Training FLOPs per token: 6 x matmul parameters plus attention scores and values
    (12 x layers x seq_len x hidden), the dense model's count when `masked_share` is 1.

    With `masked_share` at the masking rate, the count of what unmask executes: the MLM head
    (transform and decoder) runs on that share of the tokens, and so do the last layer's
    query, attention, output projection and feed-forward; its keys and values run on all.
    """
    s = SHAPES[shape]
    h, layers, ffn = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"]
    layer, keys_values = 4 * h * h + 2 * h * ffn, 2 * h * h
    encoder = (layers - 1) * layer + keys_values + masked_share * (layer - keys_values)
    attention = 2 * seq_len * h * (layers - 1 + masked_share)
    head = h * h + h * vocab
    return 6 * (encoder + masked_share * head + attention)


SCHEDULE_OFFSET = (
    "The two warmups are one step apart: Trainer's linear warmup gives the first step a learning rate of 0, unmask's gives"
    " it lr / warmup steps, so the peer's curve runs about one step behind. Read the curves for overlap in shape, not for a"
    " lead at equal steps."
)


def resolved_precision(precision: str) -> str:
    """`auto` as `unmask train --precision auto` resolves it on this CPU (bf16 only where the hardware and a calibration say it pays)."""
    if precision != "auto":
        return precision
    import torch

    from unmask.runtime.hardware import choose_precision

    return "bf16" if choose_precision(torch.device("cpu"), "auto").dtype is not None else "fp32"


def machine() -> str:
    import torch

    from unmask.runtime.hardware import cpu_name

    return f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def plot_losses(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.8), squeeze=False)
    for axis, (label, (ours, peer)) in zip(axes[0], curves.items()):
        axis.plot(range(1, len(peer) + 1), peer, label="Trainer + DataCollatorForLanguageModeling", color="#9aa5b1")
        axis.plot(range(1, len(ours) + 1), ours, label="unmask", color="#2f6fb0")
        axis.set(title=label, xlabel="step", ylabel="training MLM loss")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "corpus" / "pydocs"))
    parser.add_argument("--shapes", default="minilm,base", help="comma-separated: minilm, base")
    parser.add_argument("--dropouts", default="0.1,0.0", help="MiniLM-shape dropout settings to measure, both sides alike")
    parser.add_argument("--steps", type=int, default=30, help="steps a MiniLM-shape run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--base-dropouts", default="0.1", help="the same for the bert-base shape")
    parser.add_argument("--base-steps", type=int, default=10)
    parser.add_argument("--base-warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of unmask then the peer")
    parser.add_argument("--fill-texts", type=int, default=256)
    parser.add_argument("--nproc", type=int, default=1, help="train the unmask side under torchrun in N processes (batch / N each)")
    parser.add_argument("--strategy", default="auto", help="with --nproc: auto (DDP), ddp or fsdp")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads per unmask training process (torchrun's default is 1)")
    parser.add_argument("--sides", default="unmask,peer", help="unmask,peer or just unmask (no ratio)")
    parser.add_argument(
        "--cpu-precisions",
        default="auto",
        help="on a CPU, the training precisions to measure, both sides alike: auto (what `--precision auto` picks here), fp32, bf16",
    )
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: prepare, formats, tokenizer, train, fill, profile")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--append", action="store_true", help="add to --out instead of replacing it")
    parser.add_argument("--curves", default=str(HERE / "loss_curves.png"), help="PNG of both loss curves")
    # worker-only options
    parser.add_argument("--worker")
    parser.add_argument("--store")
    parser.add_argument("--model")
    parser.add_argument("--run-dir")
    parser.add_argument("--side")
    args = parser.parse_args()
    if args.worker:
        numbers = WORKERS[args.worker](args)
        if numbers is not None:
            print(json.dumps(numbers))
        from unmask.runtime import distributed

        distributed.end_process_if_it_made_the_group(0)  # every process of a worker under torchrun (--nproc)
        return

    skip = set(filter(None, args.skip.split(",")))
    gpu = run_worker("matmul-peak")
    precision = (
        "bf16 autocast on both sides"
        if gpu["what"].startswith("bf16")
        else f"precision as in the table, both sides alike (`--precision auto` resolves to {resolved_precision('auto')} on this CPU)"
    )
    memory = "peak GPU MB" if gpu["what"].startswith("bf16") else "peak RSS MB"
    work = Path(tempfile.mkdtemp(prefix="unmask-bench-"))
    lines = [
        *([] if args.append else ["# Benchmarks: unmask vs Hugging Face Trainer", ""]),
        f"- command: `python benchmarks/bench.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {machine()}",
        f"- corpus: {args.corpus}; batch {args.batch_size} x {args.seq_len} tokens, lr {args.lr}, {precision}; {args.steps} steps a MiniLM-shape run"
        f" and {args.base_steps} a bert-base-shape run, the first {args.warmup} and {args.base_warmup} left out of the timing (median of the rest)",
        "",
    ]
    corpus_4x = work / "corpus4x"
    store = work / "store"
    if "prepare" not in skip:
        for copy in range(4):
            shutil.copytree(args.corpus, corpus_4x / f"copy{copy}")
        lines += [
            "## Preparation (tokenize + pack)",
            "",
            "| corpus | side | tokens | seconds | tokens/s | peak RSS MB | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, corpus in (("1x", args.corpus), ("4x", str(corpus_4x))):
            ours = run_worker("prepare-unmask", corpus=corpus, store=store if label == "1x" else work / "store4x")
            peer = run_worker("prepare-peer", corpus=corpus)
            for side, r in (("unmask", ours), ("peer", peer)):
                ratio = f"{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if side == "unmask" else ""
                lines.append(
                    f"| {label} | {side} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:.0f} | {ratio} |"
                )
            print(lines[-2], lines[-1], sep="\n", flush=True)
        lines.append("")
    elif not (store / "meta.json").exists():
        run_worker("prepare-unmask", corpus=args.corpus, store=store)

    if "formats" not in skip:
        lines += [
            "## Preparation from other formats",
            "",
            "The same corpus as one Parquet file (row groups of 256 documents) or one `.jsonl.zst` file per copy; plain text",
            "is one file per document, as above. Tokens include word starts, recorded since issue 11.",
            "",
            "| corpus | format | tokens | seconds | tokens/s | peak RSS MB |",
            "|---|---|---|---|---|---|",
        ]
        for copy in range(4):
            if not (corpus_4x / f"copy{copy}").exists():
                shutil.copytree(args.corpus, corpus_4x / f"copy{copy}")
        for label, copies in (("1x", 1), ("4x", 4)):
            plain = run_worker("prepare-unmask", corpus=args.corpus if copies == 1 else str(corpus_4x), store=work / "store-plain")
            lines.append(
                f"| {label} | text files | {plain['tokens']:,} | {plain['seconds']:.1f} | {plain['tokens_per_s']:,.0f} | {plain['peak_rss_mb']:.0f} |"
            )
            for kind in ("parquet", "jsonl.zst"):
                folder = work / f"{kind}-{label}"
                convert_corpus(args.corpus, folder, kind, copies)
                r = run_worker("prepare-unmask", corpus=str(folder), store=work / f"store-{kind}")
                lines.append(
                    f"| {label} | {kind} | {r['tokens']:,} | {r['seconds']:.1f} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:.0f} |"
                )
            print(*lines[-3:], sep="\n", flush=True)
        lines.append("")

    if "tokenizer" not in skip:
        lines += [
            "## Training a vocabulary (`unmask tokenizer`, 30,522 tokens, lowercased)",
            "",
            "Trained on the corpus less every 20th file; fertility (tokens per whitespace-separated word) on those held-out",
            "files, against the bert-base-uncased vocabulary.",
            "",
            "| kind | seconds | MB of text | vocabulary | fertility | bert-base-uncased fertility | peak RSS MB |",
            "|---|---|---|---|---|---|---|",
        ]
        for kind in ("wordpiece", "bpe", "unigram"):
            r = run_worker("tokenizer", corpus=args.corpus, run_dir=work / f"tok-{kind}", side=kind)
            lines.append(
                f"| {kind} | {r['seconds']:.1f} | {r['megabytes']:.1f} | {r['vocab']:,} | {r['fertility']:.3f} | {r['base_fertility']:.3f} | {r['peak_rss_mb']:.0f} |"
            )
            print(lines[-1], flush=True)
        lines.append("")

    if "train" not in skip:
        peak = gpu["gflops"]
        lines += [
            "## Training throughput",
            "",
            f"Measured matmul peak of this machine ({gpu['what']}, best of 10): {peak:.1f} GFLOP/s.",
            "",
            "Share of peak: model FLOPs per second over that peak, counting the dense model (as MFU does) and, in brackets, the"
            " FLOPs actually executed (unmask runs the MLM head, and the last layer's queries, attention output and"
            " feed-forward, on the 15% masked tokens only).",
            "",
            f"| shape | dropout | precision | side | tokens/s (median) | share of matmul peak | {memory} | ratio |",
            "|---|---|---|---|---|---|---|---|",
        ]
        curves = {}
        layout = f" ({args.nproc} processes, {args.strategy})" if args.nproc > 1 else ""
        precisions = ["bf16"] if on_gpu() else [resolved_precision(p) for p in args.cpu_precisions.split(",")]
        for shape, precision in itertools.product(args.shapes.split(","), precisions):
            steps, warmup = (args.base_steps, args.base_warmup) if shape == "base" else (args.steps, args.warmup)
            for dropout in (float(d) for d in (args.base_dropouts if shape == "base" else args.dropouts).split(",")):
                model = work / f"model-{shape}-{dropout}"
                build_model_folder(shape, dropout, model, args.seq_len)
                samples: dict[str, list[float]] = {"unmask": [], "peer": []}
                losses: dict[str, list[float]] = {}
                rss: dict[str, float] = {}
                for _ in range(args.rounds):
                    for side in ("unmask", "peer"):
                        options = dict(
                            corpus=args.corpus,
                            store=store,
                            model=model,
                            run_dir=work / "run",
                            steps=steps,
                            batch_size=args.batch_size,
                            lr=args.lr,
                            warmup_steps=args.warmup_steps,
                            seq_len=args.seq_len,
                            warmup=warmup,
                            precision=precision,
                        )
                        if side == "unmask":
                            options.update(nproc=args.nproc, threads=args.threads, strategy=args.strategy)
                        elif "peer" not in args.sides:
                            continue
                        result = run_worker(f"train-{side}", **options)
                        samples[side] += result["step_seconds"][warmup:]
                        losses[side] = result["losses"]
                        used = result["peak_gpu_mb"] if memory.startswith("peak GPU") else result["peak_rss_mb"]
                        rss[side] = max(rss.get(side, 0.0), used)
                        ranks = result.get("rank_rss_mb", [used])
                tokens_per_s = {side: args.batch_size * args.seq_len / statistics.median(s) for side, s in samples.items() if s}
                if "peer" not in tokens_per_s:
                    dense = tokens_per_s["unmask"] * train_flops_per_token(shape, args.seq_len) / (peak * 1e9)
                    lines.append(
                        f"| {shape} | {dropout} | {precision} | unmask{layout} | {tokens_per_s['unmask']:,.0f} | {dense:.0%} | {rss['unmask']:.0f} (per process: {', '.join(f'{r:.0f}' for r in ranks)}) | |"
                    )
                    print(lines[-1], flush=True)
                    continue
                for side in ("unmask", "peer"):
                    dense = tokens_per_s[side] * train_flops_per_token(shape, args.seq_len) / (peak * 1e9)
                    executed = (
                        tokens_per_s[side] * train_flops_per_token(shape, args.seq_len, 0.15 if side == "unmask" else 1.0) / (peak * 1e9)
                    )
                    ratio = f"{tokens_per_s['unmask'] / tokens_per_s['peer']:.2f}x" if side == "unmask" else ""
                    lines.append(
                        f"| {shape} | {dropout} | {precision} | {side}{layout if side == 'unmask' else ''} | {tokens_per_s[side]:,.0f} | {dense:.0%} ({executed:.0%}) | {rss[side]:.0f} | {ratio} |"
                    )
                print(lines[-2], lines[-1], sep="\n", flush=True)
                curves[f"{shape}, dropout {dropout}, {precision}"] = (losses["unmask"], losses["peer"])
        if curves:
            plot_losses(curves, Path(args.curves))
            lines += ["", f"Both sides' training losses at equal steps: ![loss curves]({Path(args.curves).name})", ""]
            for label, (ours, peer) in curves.items():
                lines.append(
                    f"- {label}: mean loss over the last 5 steps: unmask {statistics.mean(ours[-5:]):.3f}, peer {statistics.mean(peer[-5:]):.3f}"
                )
            lines += ["", SCHEDULE_OFFSET, ""]

    if "fill" not in skip:
        starter = tokenizer_path()
        ours = run_worker("fill", model=starter, side="unmask", fill_texts=args.fill_texts)
        peer = run_worker("fill", model=starter, side="peer", fill_texts=args.fill_texts)
        lines += [
            "## Fill-mask throughput (MiniLM-L6 starter, batch 32, top 5)",
            "",
            "| side | texts/s | ratio |",
            "|---|---|---|",
            f"| unmask fill | {ours['texts_per_s']:,.1f} | {ours['texts_per_s'] / peer['texts_per_s']:.2f}x |",
            f"| pipeline('fill-mask') | {peer['texts_per_s']:,.1f} | |",
            "",
        ]
        print(*lines[-4:-1], sep="\n", flush=True)

    if "profile" not in skip:
        model = work / "model-profile"
        build_model_folder(args.shapes.split(",")[0], float(args.dropouts.split(",")[0]), model)
        table = run_worker("profile", model=model, batch_size=args.batch_size, seq_len=args.seq_len)["table"]
        lines += [
            f"## Where the time of one unmask training step goes ({args.shapes.split(',')[0]} shape, dropout"
            f" {args.dropouts.split(',')[0]}, torch.profiler)",
            "",
            "```",
            table.strip(),
            "```",
            "",
        ]

    previous = Path(args.out).read_text(encoding="utf-8") + "\n---\n\n" if args.append and Path(args.out).exists() else ""
    Path(args.out).write_text(previous + "\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
