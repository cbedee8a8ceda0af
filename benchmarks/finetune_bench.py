"""Fine-tuning against the Hugging Face recipe, and the probe's time per checkpoint.

The peer is `run_glue.py`'s recipe: tokenize with `datasets.map` (truncation at the maximum
length), `AutoModelForSequenceClassification`, `DataCollatorWithPadding`, `Trainer` with a
linear schedule and 6% warmup, no evaluation or saving during training. unmask is
`unmask finetune`. Both fine-tune the same model on the same data with the same seeds,
learning rate, epochs, batch, maximum length and weight decay, each run in a subprocess of
its own, the two sides alternating; both are scored with the same scikit-learn metrics.

    python benchmarks/finetune_bench.py --seeds 3

Default task: the offline pydocs task (sample:pydocs-sections), starting from the MiniLM-L6
starter. Appends a table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def records(spec: str) -> list[dict]:
    from unmask.data.records import read_records

    return [r for _, r in read_records(spec, {"text": "--text-field", "label": "--label-field"})]


def worker_peer(args) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    torch.set_num_threads(args.threads)
    train, evaluation = records(args.train), records(args.eval)
    names = sorted({r["label"] for r in train})
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    def tokenize(batch):
        encoded = tokenizer(batch["text"], truncation=True, max_length=args.max_length)
        encoded["label"] = [names.index(label) for label in batch["label"]]
        return encoded

    train_set = Dataset.from_list(train).map(tokenize, batched=True, remove_columns=["text"])
    eval_set = Dataset.from_list(evaluation).map(tokenize, batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    training = TrainingArguments(
        output_dir=args.work,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=64,
        warmup_steps=0.06,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        seed=args.seed,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        logging_steps=50,
        use_cpu=not torch.cuda.is_available(),
        bf16=args.precision == "bf16",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training, train_dataset=train_set, data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    predictions = np.argmax(trainer.predict(eval_set).predictions, axis=-1)
    truth = [names.index(r["label"]) for r in evaluation]
    return {
        "seconds": seconds,
        "examples": len(train) * args.epochs,
        "accuracy": accuracy_score(truth, predictions),
        "macro_f1": f1_score(truth, predictions, average="macro"),
    }


def worker_unmask(args) -> dict:
    import torch

    from unmask.config import FinetuneConfig
    from unmask.tasks.finetune import finetune

    torch.set_num_threads(args.threads)
    config = FinetuneConfig(
        model=args.model,
        train=args.train,
        eval=args.eval,
        out=args.work,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        weight_decay=0.01,
        save_model=False,
        progress="none",
        precision=args.precision,
    )
    summary = finetune(config, echo=lambda _: None, progress=False)
    seed = summary["seeds"][0]
    return {
        "seconds": seed["train_seconds"],
        "examples": len(records(args.train)) * args.epochs,
        "accuracy": seed["metrics"]["accuracy"],
        "macro_f1": seed["metrics"]["macro_f1"],
    }


def worker_probe(args) -> dict:
    from unmask.config import ProbeConfig
    from unmask.tasks.probe import probe

    started = time.perf_counter()
    result = probe(ProbeConfig(model=args.model, train=args.train, eval=args.eval, device="auto"), echo=lambda _: None)
    return {"seconds": time.perf_counter() - started, "accuracy": result["metrics"]["accuracy"]}


def run_side(side: str, args, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, __file__, "--worker", side, "--seed", str(seed), "--work", f"{work}/out"]
        for name in ("model", "train", "eval", "lr", "epochs", "batch_size", "max_length", "threads", "precision"):
            command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        output = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
        if output.returncode != 0:
            raise SystemExit(f"{side} seed {seed} failed:\n{output.stderr[-3000:]}")
        return json.loads(output.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["peer", "unmask", "probe"])
    parser.add_argument("--work", default="")
    parser.add_argument("--model", default="")
    parser.add_argument("--train", default="sample:pydocs-sections:train")
    parser.add_argument("--eval", default="sample:pydocs-sections:eval")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    if not args.model:
        from unmask.storage.names import starter_path

        args.model = starter_path()
    if args.worker:
        result = {"peer": worker_peer, "unmask": worker_unmask, "probe": worker_probe}[args.worker](args)
        print(json.dumps(result))
        return

    runs: dict[str, list[dict]] = {"peer": [], "unmask": []}
    for seed in range(args.seeds):
        for side in ("unmask", "peer") if seed % 2 == 0 else ("peer", "unmask"):
            runs[side].append(run_side(side, args, seed))
            r = runs[side][-1]
            print(
                f"{side} seed {seed}: {r['examples'] / r['seconds']:.1f} examples/s, accuracy {r['accuracy']:.4f}, macro-F1 {r['macro_f1']:.4f}",
                flush=True,
            )
    probes = [run_side("probe", args, 0) for _ in range(2)]
    from unmask.runtime.hardware import cpu_name

    rate = {side: [r["examples"] / r["seconds"] for r in runs[side]] for side in runs}
    lines = [
        "",
        f"## Fine-tuning against the Hugging Face recipe ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`python benchmarks/finetune_bench.py --seeds {args.seeds}` on {cpu_name()} ({os.cpu_count()} cores, {args.precision}, torch "
        f"threads {args.threads}). Task `{args.train}` ({len(records(args.train)):,} training, {len(records(args.eval)):,} eval examples), "
        f"model MiniLM-L6 starter with a fresh classification head, lr {args.lr:g}, {args.epochs:g} epochs, batch {args.batch_size}, "
        f"max length {args.max_length}, weight decay 0.01, 6% warmup then linear decay, seeds 0-{args.seeds - 1}; "
        "examples/s counts training time only (the peer's `trainer.train()`, unmask's training steps).",
        "",
        "| | examples/s (median) | accuracy (median, min-max) | macro-F1 (median) |",
        "|---|---|---|---|",
    ]
    for side, label in (("unmask", "unmask finetune"), ("peer", "HF Trainer recipe")):
        accuracy = [r["accuracy"] for r in runs[side]]
        lines.append(
            f"| {label} | {statistics.median(rate[side]):.1f} | {statistics.median(accuracy):.4f} ({min(accuracy):.4f}-{max(accuracy):.4f}) | "
            f"{statistics.median(r['macro_f1'] for r in runs[side]):.4f} |"
        )
    ratio = statistics.median(rate["unmask"]) / statistics.median(rate["peer"])
    lines += [
        "",
        f"unmask/peer examples/s: **{ratio:.2f}x**. A linear probe of the same model on the same task "
        f"(`unmask probe`, features and fit) took {statistics.median(p['seconds'] for p in probes):.1f} s, accuracy {probes[0]['accuracy']:.4f}.",
        "",
    ]
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
