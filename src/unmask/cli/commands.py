"""What each subcommand prints: the Python API's result (`unmask.api`) as a person reads it.

Each `run_*` function takes the settings dataclass of its command, calls the API function of
the same name, and returns an exit code; results go to stdout, notes and progress to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from unmask import api
from unmask.config import (
    CompareConfig,
    DownstreamConfig,
    EmbedConfig,
    EvalConfig,
    ExportConfig,
    FillConfig,
    FinetuneConfig,
    InspectConfig,
    PairsConfig,
    PlotConfig,
    PrepareConfig,
    ProbeConfig,
    ScoreConfig,
    ServeConfig,
    TokenizerConfig,
    TrainConfig,
)
from unmask.errors import UnmaskError
from unmask.storage.rundir import RunDir


def with_stdin(config):
    """No texts and no --file, with text piped in: read stdin, as `-` asks."""
    if not config.texts and config.file is None and not sys.stdin.isatty():
        return replace(config, texts=["-"])
    return config


def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_prepare(config: PrepareConfig) -> int:
    meta = api.prepare(config, verbose=True).meta
    splits, skipped = meta["splits"], meta.get("skipped", {})
    counts = (
        f"{splits['train']['documents']:,} training documents ({splits['train']['tokens']:,} tokens), "
        f"{splits['val']['documents']:,} held out ({splits['val']['tokens']:,} tokens)"
    )
    if meta.get("merged"):
        print(f"store {config.merge}: {len(meta['shards'])} shards, complete and consistent: {counts}; manifest written")
        return 0
    if config.index is not None:
        lengths = ", ".join(sorted(meta.get("window_index", {}), key=int))
        print(f"store {config.index}: window indexes for --seq-len {lengths} ({counts})")
        return 0
    shard = meta.get("shard")
    where = f"shard {shard['index']}/{shard['count']} of group {shard['group']} of {config.out}" if shard else f"store {config.out}"
    print(f"{where}: {counts} from {meta['files']} file(s) in {meta['seconds']:.1f}s")
    if skipped.get("empty_files"):
        print(f"skipped {len(skipped['empty_files'])} empty file(s): {', '.join(skipped['empty_files'][:5])}")
    if skipped.get("bad_files"):
        print(f"skipped {len(skipped['bad_files'])} unreadable file(s): " + "; ".join(skipped["bad_files"][:5]))
    if skipped.get("empty_documents"):
        print(f"skipped {skipped['empty_documents']} empty document(s)")
    return 0


def run_tokenizer(config: TokenizerConfig) -> int:
    summary = api.tokenizer(config, verbose=True).summary
    print(
        f"tokenizer {config.out}: {summary['kind']}, {summary['vocab_size']:,} tokens, learned from {summary['documents']:,} documents "
        f"({summary['characters']:,} characters) in {summary['seconds']:.1f}s"
    )
    if summary["skipped"]["bad_files"]:
        print(f"skipped {len(summary['skipped']['bad_files'])} unreadable file(s): " + "; ".join(summary["skipped"]["bad_files"][:5]))
    return 0


def run_train(config: TrainConfig) -> int:
    from unmask.runtime import distributed
    from unmask.runtime.preemption import Stopped

    main_process = not distributed.launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    try:
        summary = api.plan(config=config, verbose=True) if config.plan else api.train(config, verbose=True).summary
    except Stopped as stop:
        if main_process:
            echo_stderr(str(stop))
        return stop.exit_code
    finally:
        distributed.leave()
    if not main_process:
        return 0
    if config.json:
        print(json.dumps(summary, indent=2))
    elif not config.plan:  # the plan's lines are printed as it measures
        for line in summary_lines(config.out, summary):
            print(line)
    return 0


def summary_lines(out: str, summary: dict) -> list[str]:
    """A finished run in a few lines; summary.json keeps every number."""
    rate = summary.get("mean_tokens_per_s")
    lines = [
        f"run {out}: {summary.get('steps', 0):,} steps, {summary.get('train_tokens', 0):,} training tokens"
        + (f", {rate:,.0f} tokens/s" if rate else "")
    ]
    if summary.get("eval_loss") is not None:
        lines.append(
            f"held-out: loss {summary['eval_loss']:.4f}, top-1 {summary['eval_accuracy']:.1%}, top-5 {summary['eval_top5_accuracy']:.1%}"
        )
    lines.append(f"model: {RunDir(out).model} (every number: {RunDir(out).summary}; --json prints them)")
    return lines


def run_fill(config: FillConfig) -> int:
    from unmask.tables import text_table

    config = with_stdin(config)
    if config.against is None:
        results, other = api.fill(config=config, verbose=True), None
    else:
        results, other = api.fill_against(config=config, verbose=True)
    shown = lambda c: f"{c.token.strip() or repr(c.token)} ({c.score:.1%})"
    for number, result in enumerate(results):
        if config.json:
            record = asdict(result) | ({"against": {"model": config.against, **asdict(other[number])}} if other else {})
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(result.text + (f"  [{config.model}, checkpoint of step {config.step}]" if config.step is not None and other is None else ""))
        if other is None:
            for index, mask in enumerate(result.masks, 1):
                print(f"  mask {index}: {'  '.join(shown(c) for c in mask.candidates)}")
            print(f"  -> {result.best_guess()}")
            continue
        rows = [["", config.model + (f" (step {config.step})" if config.step is not None else ""), config.against]]
        for index, (mine, theirs) in enumerate(zip(result.masks, other[number].masks), 1):
            for rank, (a, b) in enumerate(zip(mine.candidates, theirs.candidates)):
                rows.append([f"mask {index}" if rank == 0 else "", shown(a), shown(b)])
        print("\n".join(f"  {line}" for line in text_table(rows).splitlines()))
    return 0


def run_inspect(config: InspectConfig) -> int:
    from unmask.tables import text_table

    rows = api.inspect(config=config)
    if config.json:
        print(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1))
        return 0
    print(text_table(rows.table()))
    picked, maskable = rows.counts()
    print(
        f"\npicked {picked} of {maskable} maskable tokens ({picked / max(maskable, 1):.0%}; mask_prob {config.mask_prob}, "
        f"{config.masking} masking) with seed {config.seed}"
    )
    return 0


def run_eval(config: EvalConfig) -> int:
    from unmask.evaluation.compare import metrics_table
    from unmask.tables import text_table

    evaluation = api.evaluate(config=config, verbose=True)
    results, total = evaluation.sources, evaluation.metrics
    if config.json:
        print(json.dumps(evaluation.as_dict(), indent=2))
        return 0
    if len(results) == 1:
        print(text_table([row[:2] for row in metrics_table([config.model], [total])]))
        return 0
    table = metrics_table([*results, "all (token-weighted)"], [*results.values(), total])
    print(text_table([row[:-1] for row in table]))
    return 0


def run_score(config: ScoreConfig) -> int:
    for result in api.score(config=with_stdin(config), verbose=True):
        if config.json:
            print(json.dumps(asdict(result), ensure_ascii=False))
        else:
            print(
                f"PLL {result.pll:9.3f}  pseudo-perplexity {result.pseudo_perplexity:9.2f}  |  word-l2r PLL {result.pll_word_l2r:9.3f}"
                f"  pseudo-perplexity {result.pseudo_perplexity_word_l2r:9.2f}  |  {result.text}"
            )
    return 0


def run_pairs(config: PairsConfig) -> int:
    from unmask.evaluation.pairs import fresh_head_notes, table
    from unmask.tables import text_table

    report = api.pairs(config, verbose=True)
    if config.json:
        print(json.dumps({**report, "models": [{k: v for k, v in m.items() if k != "scores"} for m in report["models"]]}, indent=2))
    else:
        print(text_table(table(report)))
        print(f"\n{config.scoring} scores; a pair is right when the good sentence scores strictly higher")
    for note in fresh_head_notes(report):
        echo_stderr(note)
    return 0


def run_embed(config: EmbedConfig) -> int:
    import numpy as np

    if config.tokens is None and config.out is None:
        raise UnmaskError("--out: give the .npy file to write the embeddings to")
    result = api.embed(config=config, verbose=True)
    vectors = result.vectors
    if config.tokens is not None:
        print(f"{len(result.tokens)} tokens x {vectors.shape[1]} dimensions (last hidden layer)")
        width = max(len(t) for t in result.tokens)
        for position, (token, token_id, vector) in enumerate(zip(result.tokens, result.token_ids, vectors)):
            head = " ".join(f"{v:+.3f}" for v in vector[:6])
            print(f"{position:4d}  {token.ljust(width)}  {token_id:6d}  norm {np.linalg.norm(vector):7.3f}  [{head} ...]")
        if result.saved:
            print(f"saved {result.saved}")
        return 0
    print(f"saved {vectors.shape[0]} x {vectors.shape[1]} {config.pooling}-pooled embeddings to {result.saved}")
    return 0


def run_compare(config: CompareConfig) -> int:
    from unmask.tables import text_table

    report = api.compare(config, verbose=True)
    print(text_table(report["table"]))
    for note in report["notes"]:
        print(f"note: {note}")
    if report["disagreements"]:
        print("\nwhere their top-1 predictions differ (true / base / trained):")
        for d in report["disagreements"]:
            print(f"  {d['context']}\n      {d['truth']} / {d['base']} / {d['trained']}")
    chart = f", chart: {report['chart']}" if report["chart"] else f"\nno chart.png: {report['no_chart']}"
    print(f"\nreport: {Path(report['folder']) / 'report.md'}{chart}")
    return 0


def run_export(config: ExportConfig) -> int:
    source = api.export(config, verbose=True)
    print(f"exported {source} to {config.out} (loads with transformers' from_pretrained)")
    return 0


def run_serve(config: ServeConfig) -> int:
    from unmask.errors import optional_import

    optional_import("starlette", "unmask serve", "serve")
    from unmask.serve.app import serve

    serve(config)
    return 0


def run_plot(config: PlotConfig) -> int:
    from unmask.evaluation.charts import plot_run

    print(f"saved {plot_run(Path(config.run), Path(config.out) if config.out else None)}")
    return 0


def _metric_line(metrics: dict, seeds: int) -> str:
    if seeds == 1:
        return ", ".join(f"{name} {value['median']:.4f}" for name, value in metrics.items())
    return ", ".join(
        f"{name} {v['median']:.4f} (mean {v['mean']:.4f} ± {v['std']:.4f}, {v['min']:.4f}-{v['max']:.4f})" for name, v in metrics.items()
    )


def run_finetune(config: FinetuneConfig) -> int:
    from unmask.runtime import distributed

    try:
        summary = api.finetune(config, verbose=True)
    finally:
        distributed.leave()
    if distributed.launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
        return 0
    print(f"{summary['task']} on {len(summary['seeds'])} seed(s): {_metric_line(summary['metrics'], len(summary['seeds']))}")
    print(
        f"summary: {RunDir(config.out).summary}"
        + (f"; model: {RunDir(config.out).model}" if config.save_model and config.seeds == 1 else "")
    )
    return 0


def run_probe(config: ProbeConfig) -> int:

    result = api.probe(config, verbose=True)
    if config.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['task']} probe ({result['probe']}) in {result['seconds']:.1f}s: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        )
    return 0


def run_downstream(config: DownstreamConfig) -> int:
    report = api.downstream(config, verbose=True)
    print(report["table_text"])
    print(f"\nreport: {report['markdown']}" + (f", chart: {report['chart']}" if report.get("chart") else ""))
    return 0
