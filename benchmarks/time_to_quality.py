"""Time to quality: how good a model each setting makes in the same wall-clock time, judged by
held-out masked-token accuracy and downstream.

Continued pretraining of the MiniLM-L6 starter on the pydocs corpus, with every 20th file
held out of both sides' training, for equal training-time budgets: unmask with each masking
variant (token, whole-word or span masking; 15%, 30% or 30% -> 15%) against the Hugging Face
recipe (`run_mlm.py`'s datasets.map tokenize + group_texts,
DataCollatorForLanguageModeling(0.15), Trainer) at the same learning rate, batch and
sequence length. Every saved point of every run is scored by `unmask eval` on the same
held-out positions (15% token masks, fixed seeds) and by a linear probe on the offline
downstream task (`sample:pydocs-sections`: which part of the docs a paragraph is from); the
last point of every run is also fine-tuned on that task. The sample's files (faq, howto,
tutorial, glossary) are left out of the pretraining corpus, so the task's text is unseen.

    python benchmarks/time_to_quality.py --corpus ../shared/corpus/pydocs --budget 5 --peer-budgets 5,15

Writes a table to benchmarks/RESULTS.md (appended) and charts of held-out top-1 accuracy
and of the probe's accuracy against training minutes. Each run is a subprocess of its own
and nothing else should run on the machine meanwhile: the budgets are wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Every variant: the starter's fresh head learns 10x faster, no dropout (the quick start's config).
COMMON = {"fresh_lr_scale": 10.0, "dropout": 0.0}
VARIANTS = {
    "token 15%": {"masking": "token", "mask_prob": 0.15},
    "whole-word 15%": {"masking": "whole-word", "mask_prob": 0.15},
    "span 15%": {"masking": "span", "mask_prob": 0.15},
    "token 30%": {"masking": "token", "mask_prob": 0.3},
    "token 30% -> 15%": {"masking": "token", "mask_prob": 0.3, "mask_prob_end": 0.15, "mask_schedule": "linear"},
    "whole-word 30% -> 15%": {"masking": "whole-word", "mask_prob": 0.3, "mask_prob_end": 0.15, "mask_schedule": "linear"},
}
SAMPLE_PREFIXES = ("faq_", "howto_", "tutorial_", "glossary")


def cpu_name() -> str:
    from unmask.runtime.hardware import cpu_name as name

    return name()


def unmask_precision(runs: dict) -> str:
    """What the unmask runs computed in, from their summary.json (`precision_reason`)."""
    from unmask.storage.rundir import RunDir

    reasons = set()
    for side, run, _, _ in runs.values():
        summary = RunDir(run).summary
        if side == "unmask" and summary.is_file():
            reasons.add(json.loads(summary.read_text()).get("precision_reason", "unknown"))
    return "; ".join(sorted(reasons)) or "unknown"


def starter() -> str:
    from unmask.storage.names import starter_path

    return starter_path()


def split_corpus(corpus: Path, work: Path) -> tuple[Path, Path]:
    # The downstream task's paragraphs come from the bundled sample's files: none of them is pretrained on.
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not p.name.startswith(SAMPLE_PREFIXES))
    held = set(files[::20])
    for name, chosen in (("train", [p for p in files if p not in held]), ("heldout", sorted(held))):
        (work / name).mkdir(parents=True, exist_ok=True)
        for number, path in enumerate(chosen):
            shutil.copy(path, work / name / f"{number:05d}.txt")
    return work / "train", work / "heldout"


# ------------------------------------------------------------------ workers (one per subprocess)


def worker_unmask(args) -> None:
    """A budgeted unmask run; checkpoints at `points` evenly spaced times are exported afterwards."""
    from unmask.config import TrainConfig
    from unmask.pretrain.train import train

    # The settings may replace the model (`{"model": null, "from_scratch": "modernbert-tiny"}`).
    settings = {"model": starter(), "seq_len": 128, "batch_size": 32, **json.loads(args.settings)}
    budget = args.minutes * 60
    config = TrainConfig(
        data=[args.store],
        out=args.run,
        lr=args.lr,
        time_budget=f"{budget}s",
        eval_every=0,
        log_every=5,
        checkpoint_every=0,
        keep_checkpoints=1000,
        progress="none",
        **settings,
    )
    marks = [budget * k / args.points for k in range(1, args.points)]
    import unmask.pretrain.train as training

    # Keep hold of the Run that train() sets up, to checkpoint it at each time mark. on_step
    # runs between steps, so the checkpoints are not counted in the budget; the last point is
    # the checkpoint the run writes at the end of its budget.
    runs = []
    real_setup = training.setup
    training.setup = lambda *a, **k: runs.append(real_setup(*a, **k)) or runs[-1]

    def checkpoint_at_marks(step: int) -> None:
        if marks and runs[-1].spent >= marks[0]:
            marks.pop(0)
            runs[-1].save_checkpoint()

    train(config, progress=False, echo=lambda _: None, on_step=checkpoint_at_marks)
    print(json.dumps({"ok": True}))


def linear_on_clock(fraction: float, warmup: float) -> float:
    """The learning rate's factor a share `fraction` of the way through the budget: up over `warmup`, then down to 0."""
    if fraction < warmup:
        return fraction / warmup
    return max(0.0, (1.0 - fraction) / (1.0 - warmup))


def worker_peer(args) -> None:
    """The Hugging Face recipe, stopped at the budget; the model is saved at the same marks."""
    import datasets
    import torch
    from transformers import (
        AutoTokenizer,
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    sys.path.insert(0, str(HERE))
    from bench import peer_dataset

    budget = args.minutes * 60
    files = sorted(str(p) for p in Path(args.train_files).iterdir())
    out = Path(args.run)
    with tempfile.TemporaryDirectory() as cache:
        datasets.disable_caching()
        grouped, _ = peer_dataset(files, 128, cache)
        grouped = grouped.remove_columns(["token_type_ids"]) if "token_type_ids" in grouped.column_names else grouped
        tokenizer = AutoTokenizer.from_pretrained(starter())
        model = BertForMaskedLM.from_pretrained(starter())
        marks = [budget * k / args.points for k in range(1, args.points)]

        class Budget(TrainerCallback):
            """Wall-clock training time from the first step; saving the marks is not counted."""

            def __init__(self):
                self.started = None
                self.paused = self.spent = 0.0
                self.steps = 0

            def fraction(self) -> float:
                """The share of the budget spent so far: the learning rate's clock."""
                if self.started is None:
                    return 0.0
                return min(1.0, (time.perf_counter() - self.started - self.paused) / budget)

            def on_step_begin(self, args_, state, control, **kwargs):
                if self.started is None:
                    self.started = time.perf_counter()

            def on_step_end(self, args_, state, control, **kwargs):
                spent = time.perf_counter() - self.started - self.paused
                if marks and spent >= marks[0]:
                    marks.pop(0)
                    began = time.perf_counter()
                    trainer.save_model(str(out / f"point-{spent:08.1f}"))
                    self.paused += time.perf_counter() - began
                self.spent, self.steps = spent, state.global_step
                if spent >= budget:
                    control.should_training_stop = True

            def on_train_end(self, args_, state, control, **kwargs):
                (out / "spent.json").write_text(json.dumps({"spent": self.spent, "steps": self.steps}))

        clock = Budget()

        class ClockTrainer(Trainer):
            """Trainer's linear schedule (6% warmup, then down to 0), on the budget's clock rather than
            over a step count planned from a measured pace: the peer trains its whole budget and
            ends it with its learning rate at 0, as unmask's --time-budget does."""

            def create_scheduler(self, num_training_steps, optimizer=None):
                if self.lr_scheduler is None:
                    self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                        optimizer or self.optimizer, lambda _: linear_on_clock(clock.fraction(), warmup=0.06)
                    )
                    self._created_lr_scheduler = True
                return self.lr_scheduler

        training_args = TrainingArguments(
            output_dir=os.path.join(cache, "out"),
            per_device_train_batch_size=32,
            max_steps=10**9,  # the budget ends it
            learning_rate=args.lr,
            weight_decay=0.01,
            lr_scheduler_type="linear",
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = ClockTrainer(
            model=model,
            args=training_args,
            train_dataset=grouped,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
            callbacks=[clock],
        )
        trainer.train()
        trainer.save_model(str(out / "final"))
        tokenizer.save_pretrained(str(out / "final"))
    print(json.dumps({"ok": True}))


WORKERS = {"unmask": worker_unmask, "peer": worker_peer}


# ------------------------------------------------------------------ driver


def run_worker(name: str, **options) -> dict:
    command = [sys.executable, __file__, "--worker", name]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def evaluate(model: Path, heldout: Path, max_batches: int, cache: Path) -> dict:
    """`unmask eval` of one saved point; scores are kept in `cache` (a JSON file in the work
    folder), so that a --reuse invocation redraws the chart without scoring again."""
    return cached(cache, f"{model}|{max_batches}", lambda: _evaluate(model, heldout, max_batches))


def _evaluate(model: Path, heldout: Path, max_batches: int) -> dict:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unmask",
            "eval",
            str(model),
            "--data",
            str(heldout),
            "--json",
            "--max-batches",
            str(max_batches),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        raise SystemExit(f"eval of {model} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout)


def cached(cache: Path, key: str, compute):
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in known:
        known[key] = compute()
        cache.with_suffix(".tmp").write_text(json.dumps(known, indent=1))
        cache.with_suffix(".tmp").replace(cache)
    return known[key]


def downstream(model: Path, mode: str, cache: Path) -> dict:
    """The offline task's metrics for one saved point: `unmask probe`, or `unmask finetune` with
    one seed and the pydocs suite's settings."""
    task = ["--train", "sample:pydocs-sections:train", "--eval", "sample:pydocs-sections:eval", "--device", "cpu"]

    def compute() -> dict:
        with tempfile.TemporaryDirectory() as folder:
            if mode == "probe":
                command = ["probe", str(model), *task, "--json"]
            else:
                settings = [part for key, value in pydocs_finetune().items() for part in (f"--{key.replace('_', '-')}", str(value))]
                command = ["finetune", str(model), *task, "--out", f"{folder}/ft", *settings, "--no-save-model", "--progress", "none"]
            result = subprocess.run(
                [sys.executable, "-m", "unmask", *command], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
            )
            if result.returncode != 0:
                raise SystemExit(f"{mode} of {model} failed:\n{result.stderr[-2000:]}")
            if mode == "probe":
                return {"accuracy": json.loads(result.stdout)["metrics"]["accuracy"]}
            return {"accuracy": json.loads(Path(folder, "ft", "summary.json").read_text())["metrics"]["accuracy"]["median"]}

    return cached(cache, f"{mode}|{model}", compute)


def pydocs_finetune() -> dict:
    """The bundled pydocs suite's fine-tuning settings (one owner: the suite file)."""
    from unmask.config import load_suite
    from unmask.tasks.suites import resolve_suite

    return load_suite(resolve_suite("pydocs")).tasks[0].finetune


def unmask_points(run: Path, work: Path) -> list[tuple[float, Path]]:
    """(training minutes, model folder) of every checkpoint of a budgeted unmask run."""
    from unmask.runtime.export import export_checkpoint
    from unmask.storage.checkpoint import read_info
    from unmask.storage.rundir import RunDir

    points = []
    for step, path in RunDir(run).checkpoint_steps():
        folder = work / f"{run.name}-{path.name}"
        if not folder.exists():
            export_checkpoint(run, folder, step=step, echo=lambda _: None)
        points.append((read_info(path).train_seconds / 60, folder))
    return points


def peer_points(run: Path) -> list[tuple[float, Path]]:
    tokenizer = run / "final"
    points = []
    for path in sorted(run.glob("point-*")):
        shutil.copy(tokenizer / "tokenizer.json", path / "tokenizer.json")
        shutil.copy(tokenizer / "tokenizer_config.json", path / "tokenizer_config.json")
        points.append((float(path.name.split("-")[1]) / 60, path))
    points.append((json.loads((run / "spent.json").read_text())["spent"] / 60, run / "final"))
    return points


def chart(curves: dict[str, list[tuple[float, float]]], path: Path, ylabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 5.2))
    for label, points in curves.items():
        style = dict(color="#9aa5b1", marker="s") if label.startswith("peer") else dict(marker="o")
        axis.plot([m for m, _ in points], [a for _, a in points], label=label, **style)
    axis.set(xlabel="training minutes (wall clock, evaluation not counted)", ylabel=ylabel, title=title)
    axis.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def winners(finals: dict[str, dict], key: str) -> str:
    ranked = sorted(
        ((r[key], label) for label, r in finals.items() if not label.startswith("peer") and r.get(key) is not None), reverse=True
    )
    return ", ".join(f"{label} {value:.1%}" for value, label in ranked)


def main() -> None:
    from unmask.storage.rundir import RunDir

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(HERE.parent.parent / "shared" / "corpus" / "pydocs"))
    parser.add_argument("--budget", type=float, default=5, help="training minutes of every unmask variant")
    parser.add_argument("--peer-budgets", default="5,15", help="training minutes of the peer's runs, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="unmask variants to run, comma-separated")
    parser.add_argument("--points", type=int, default=4, help="saved points per run (the last is the end of the budget)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-batches", type=int, default=40, help="held-out batches of 32 windows scored per point")
    parser.add_argument("--no-finetune", action="store_true", help="score the final points by the probe only")
    parser.add_argument("--reuse", help="a work folder of an earlier invocation: its finished runs are scored, not run again")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    parser.add_argument("--chart", default=str(HERE / "time_to_quality.png"))
    parser.add_argument("--downstream-chart", default=str(HERE / "time_to_quality_downstream.png"))
    for name in ("worker", "store", "run", "settings", "train-files"):
        parser.add_argument(f"--{name}")
    parser.add_argument("--minutes", type=float)
    args = parser.parse_args()
    if args.worker:
        WORKERS[args.worker](args)
        return

    peer_budgets = [float(b) for b in args.peer_budgets.split(",") if b]
    work = Path(args.reuse) if args.reuse else Path(tempfile.mkdtemp(prefix="unmask-ttq-"))
    if not (work / "store" / "meta.json").is_file():
        train_files, heldout = split_corpus(Path(args.corpus), work)
        subprocess.run(
            [sys.executable, "-m", "unmask", "prepare", str(train_files), "--out", str(work / "store"), "--val-fraction", "0"],
            check=True,
            capture_output=True,
        )
    train_files, heldout = work / "train", work / "heldout"
    scores = work / "scores.json"
    runs: dict[str, tuple[str, Path, float, dict]] = {}
    for number, name in enumerate(v.strip() for v in args.variants.split(",")):
        runs[f"unmask {name}, {args.budget:g} min"] = ("unmask", work / f"variant-{number}", args.budget, {**COMMON, **VARIANTS[name]})
    for minutes in peer_budgets:
        runs[f"peer, {minutes:g} min"] = ("peer", work / f"peer-{minutes:g}", minutes, {})
    curves: dict[str, list[tuple[float, float]]] = {}
    probes: dict[str, list[tuple[float, float]]] = {}
    finals: dict[str, dict] = {}
    for label, (side, run, minutes, settings) in runs.items():
        started = time.time()
        done = RunDir(run).checkpoints.is_dir() if side == "unmask" else (run / "spent.json").is_file()
        if run.exists() and not done:
            shutil.rmtree(run)  # a run an earlier invocation did not finish
        if side == "unmask":
            if not done:
                run_worker(
                    "unmask", store=work / "store", run=run, minutes=minutes, points=args.points, lr=args.lr, settings=json.dumps(settings)
                )
            points = unmask_points(run, work)
        else:
            if not done:
                run.mkdir(parents=True)
                run_worker("peer", train_files=train_files, run=run, minutes=minutes, points=args.points, lr=args.lr)
            points = peer_points(run)
        scored = [(m, evaluate(folder, heldout, args.eval_batches, scores), downstream(folder, "probe", scores)) for m, folder in points]
        curves[label] = [(0.0, None)] + [(m, r["accuracy"]) for m, r, _ in scored]
        probes[label] = [(0.0, None)] + [(m, d["accuracy"]) for m, _, d in scored]
        finetuned = None if args.no_finetune else downstream(points[-1][1], "finetune", scores)["accuracy"]
        finals[label] = {"minutes": scored[-1][0], **scored[-1][1], "probe": scored[-1][2]["accuracy"], "finetune": finetuned}
        print(
            f"{label}: {finals[label]['accuracy']:.2%} top-1, probe {finals[label]['probe']:.2%}"
            + (f", fine-tuned {finetuned:.2%}" if finetuned is not None else "")
            + f" after {scored[-1][0]:.1f} min ({time.time() - started:.0f} s)",
            flush=True,
        )
    base = evaluate(Path(starter()), heldout, args.eval_batches, scores)
    base_probe = downstream(Path(starter()), "probe", scores)["accuracy"]
    base_finetune = None if args.no_finetune else downstream(Path(starter()), "finetune", scores)["accuracy"]
    for label in curves:
        curves[label][0], probes[label][0] = (0.0, base["accuracy"]), (0.0, base_probe)
    chart(curves, Path(args.chart), "held-out top-1 accuracy", "Continued pretraining of MiniLM-L6 on pydocs: masked-token accuracy")
    chart(probes, Path(args.downstream_chart), "probe accuracy (pydocs sections)", "The same runs judged downstream: a linear probe")

    cell = lambda value: "n/a" if value is None else f"{value:.2%}"
    peer_long = finals[f"peer, {peer_budgets[-1]:g} min"] if peer_budgets else None
    first = finals[next(iter(runs))]
    lines = [
        "",
        "---",
        "",
        "## Time to quality, judged by masked-token accuracy and downstream",
        "",
        f"- command: `python benchmarks/time_to_quality.py {' '.join(sys.argv[1:])}`",
        f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "- continued pretraining of the MiniLM-L6 starter on pydocs less the bundled sample's files (so the downstream text is unseen);"
        " every 20th file held out of both sides' training",
        f"- top-1/top-5/loss: `unmask eval` on the same held-out positions ({args.eval_batches} batches of 32 x 128, 15% token masks, fixed seeds)",
        "- probe: `unmask probe` (logistic regression on mean-pooled frozen features) on the offline task `sample:pydocs-sections`"
        " (faq / howto / tutorial, 1,198 training and 134 eval paragraphs); fine-tuned: `unmask finetune` on it, seed 0, the pydocs"
        f" suite's settings ({', '.join(f'{k} {v}' for k, v in pydocs_finetune().items())})",
        f"- both sides: fresh MLM head, batch 32 x 128, lr {args.lr}, linear decay, on {cpu_name()} ({os.cpu_count()} cores);"
        f" unmask computes in {unmask_precision(runs)} (its default, --precision auto), the peer in fp32 (Trainer's default);"
        f" unmask with {', '.join(f'{k}={v}' for k, v in COMMON.items())};"
        " the peer's schedule runs on its clock (6% warmup, linear decay to 0 at the end of its budget), so it trains its whole budget;"
        " budgets count training time only",
        "- each row is one run, not repeated: one eval paragraph is 0.75 points of the downstream accuracies, so differences of a few points are noise",
        "",
        "| run | minutes | top-1 | top-5 | loss | probe | fine-tuned |",
        "|---|---|---|---|---|---|---|",
        f"| starter (fresh head) | 0 | {base['accuracy']:.2%} | {base['top5_accuracy']:.2%} | {base['loss']:.3f} | {base_probe:.2%} | {cell(base_finetune)} |",
        *(
            f"| {label} | {r['minutes']:.1f} | {r['accuracy']:.2%} | {r['top5_accuracy']:.2%} | {r['loss']:.3f} | {r['probe']:.2%} | {cell(r['finetune'])} |"
            for label, r in finals.items()
        ),
        "",
        f"By masked-token accuracy: {winners(finals, 'accuracy')}.",
        f"By the probe: {winners(finals, 'probe')}.",
        *([f"By fine-tuning: {winners(finals, 'finetune')}."] if not args.no_finetune else []),
        *(
            [
                f"unmask's first variant in {args.budget:g} minutes against the peer's {peer_budgets[-1]:g}: top-1 {first['accuracy']:.2%} against "
                f"{peer_long['accuracy']:.2%}, probe {first['probe']:.2%} against {peer_long['probe']:.2%}."
            ]
            if peer_long
            else []
        ),
        "",
        f"![time to quality]({Path(args.chart).name})",
        f"![time to quality, downstream]({Path(args.downstream_chart).name})",
        "",
    ]
    with open(args.out, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
