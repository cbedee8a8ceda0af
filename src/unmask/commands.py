"""What each subcommand does with its settings and prints: the glue between the CLI and the library.

Each `run_*` function takes the settings dataclass of its command and returns an exit code;
results go to stdout, notes and progress to stderr.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

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


def echo_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run_prepare(config: PrepareConfig) -> int:
    from unmask.data.prepare import prepare

    meta = prepare(config)
    splits, skipped = meta["splits"], meta.get("skipped", {})
    counts = (
        f"{splits['train']['documents']:,} training documents ({splits['train']['tokens']:,} tokens), "
        f"{splits['val']['documents']:,} held out ({splits['val']['tokens']:,} tokens)"
    )
    if meta.get("merged"):
        print(f"store {config.merge}: {len(meta['shards'])} shards, complete and consistent: {counts}; manifest written")
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
    from unmask.tokenizer_training import train_tokenizer

    summary = train_tokenizer(config)
    print(
        f"tokenizer {config.out}: {summary['kind']}, {summary['vocab_size']:,} tokens, learned from {summary['documents']:,} documents "
        f"({summary['characters']:,} characters) in {summary['seconds']:.1f}s"
    )
    if summary["skipped"]["bad_files"]:
        print(f"skipped {len(summary['skipped']['bad_files'])} unreadable file(s): " + "; ".join(summary["skipped"]["bad_files"][:5]))
    return 0


def run_train(config: TrainConfig) -> int:
    from unmask import distributed
    from unmask.preemption import Stopped
    from unmask.train import train

    main_process = not distributed.launched_by_torchrun() or os.environ.get("RANK", "0") == "0"
    try:
        summary = train(config, echo=echo_stderr)
    except Stopped as stop:
        if main_process:
            echo_stderr(str(stop))
        return stop.exit_code
    finally:
        distributed.leave()
    if not main_process:
        return 0
    print(json.dumps(summary, indent=2))
    return 0


def read_texts(texts: list[str], file: str | None, purpose: str = "fill") -> tuple[list[str], list[str]]:
    """Texts and a label naming where each came from (file:line), for error messages."""
    if file is not None:
        try:
            lines = Path(file).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UnmaskError(f"--file {file}: cannot read: {e}") from None
        pairs = [(line.rstrip("\r"), f"{file}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    elif texts and texts != ["-"]:
        pairs = [(text, f"text {n}") for n, text in enumerate(texts, 1)]
    elif texts == ["-"] or not sys.stdin.isatty():
        pairs = [(line.rstrip("\r\n"), f"stdin:{n}") for n, line in enumerate(sys.stdin, 1) if line.strip()]
    else:
        raise UnmaskError("give texts, --file F, or pipe texts on stdin")
    if not pairs:
        raise UnmaskError(f"no texts to {purpose}" + (f": {file} has no non-blank line" if file is not None else ""))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run_fill(config: FillConfig) -> int:
    from unmask.infer import Filler
    from unmask.tables import text_table

    texts, labels = read_texts(config.texts, config.file)
    filler = Filler(config.model, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo_stderr, step=config.step)
    results = filler.fill(texts, top_k=config.top_k, batch_size=config.batch_size, labels=labels)
    other = None
    if config.against is not None:
        second = Filler(config.against, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo_stderr)
        other = second.fill(texts, top_k=config.top_k, batch_size=config.batch_size, labels=labels)
    shown = lambda c: f"{c.token.strip() or repr(c.token)} ({c.score:.1%})"
    for number, result in enumerate(results):
        if config.json:
            record = asdict(result) | ({"against": {"model": config.against, **asdict(other[number])}} if other else {})
            print(json.dumps(record, ensure_ascii=False))
            continue
        print(result.text)
        if other is None:
            for index, mask in enumerate(result.masks, 1):
                print(f"  mask {index}: {'  '.join(shown(c) for c in mask.candidates)}")
            print(f"  -> {result.best_guess()}")
            continue
        rows = [["", config.model, config.against]]
        for index, (mine, theirs) in enumerate(zip(result.masks, other[number].masks), 1):
            for rank, (a, b) in enumerate(zip(mine.candidates, theirs.candidates)):
                rows.append([f"mask {index}" if rank == 0 else "", shown(a), shown(b)])
        print("\n".join(f"  {line}" for line in text_table(rows).splitlines()))
    return 0


def run_inspect(config: InspectConfig) -> int:
    from unmask.infer import inspect_masking
    from unmask.tables import text_table

    rows = inspect_masking(
        config.text,
        config.model,
        config.seed,
        config.mask_prob,
        config.mask_replace_prob,
        config.random_replace_prob,
        trust_remote_code=config.trust_remote_code,
        masking=config.masking,
    )
    if config.json:
        print(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1))
        return 0
    header = ["pos", "token", "id", "attn", "special", "picked", "became", "input_id", "label"]
    print(
        text_table(
            [header]
            + [
                [
                    str(r.position),
                    r.token,
                    str(r.token_id),
                    str(r.attention),
                    "yes" if r.special else "",
                    "yes" if r.picked else "",
                    r.became,
                    str(r.input_id),
                    str(r.label),
                ]
                for r in rows
            ]
        )
    )
    maskable = sum(not r.special for r in rows)
    picked = sum(r.picked for r in rows)
    print(
        f"\npicked {picked} of {maskable} maskable tokens ({picked / max(maskable, 1):.0%}; mask_prob {config.mask_prob}, "
        f"{config.masking} masking) with seed {config.seed}"
    )
    return 0


def run_eval(config: EvalConfig) -> int:
    from unmask.compare import metrics_table
    from unmask.evaluate import combine, evaluate_model, held_out_sets
    from unmask.infer import LoadedModel
    from unmask.tables import text_table

    loaded = LoadedModel(config.model, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo_stderr, step=config.step)
    sets = held_out_sets(config.data, loaded.tokenizer, min(config.seq_len, loaded.max_len), config.split)
    results = {
        name: evaluate_model(
            loaded.lm,
            windows,
            batch_size=config.batch_size,
            device=loaded.device,
            dtype=loaded.dtype,
            max_batches=config.max_batches,
            progress=True,
            documents_apart=not config.attention_across_docs,
        )[0]
        for name, windows in sets.items()
    }
    total = combine(list(results.values()))
    if config.json:
        sources = {name: m.as_dict() for name, m in results.items()} if len(results) > 1 else None
        windows = sum(len(w) for w in sets.values())
        print(
            json.dumps(
                {
                    "model": config.model,
                    "data": config.data,
                    "windows": windows,
                    **total.as_dict(),
                    **({"sources": sources} if sources else {}),
                },
                indent=2,
            )
        )
        return 0
    if len(results) == 1:
        print(text_table([row[:2] for row in metrics_table([config.model], [total])]))
        return 0
    table = metrics_table([*results, "all (token-weighted)"], [*results.values(), total])
    print(text_table([row[:-1] for row in table]))
    return 0


def run_score(config: ScoreConfig) -> int:
    from unmask.infer import Scorer

    texts, labels = read_texts(config.texts, config.file, purpose="score")
    scorer = Scorer(config.model, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo_stderr, step=config.step)
    for result in scorer.score(texts, batch_size=config.batch_size, labels=labels):
        if config.json:
            print(json.dumps(asdict(result), ensure_ascii=False))
        else:
            print(
                f"PLL {result.pll:9.3f}  pseudo-perplexity {result.pseudo_perplexity:9.2f}  |  word-l2r PLL {result.pll_word_l2r:9.3f}"
                f"  pseudo-perplexity {result.pseudo_perplexity_word_l2r:9.2f}  |  {result.text}"
            )
    return 0


def run_pairs(config: PairsConfig) -> int:
    from unmask.files import atomic_write_text
    from unmask.pairs import as_json, score_pairs, table
    from unmask.tables import text_table

    if config.out is not None:
        check_output_file(config.out, "out")
    results = score_pairs(config, echo=echo_stderr)
    report = as_json(config, results)
    if config.out is not None:
        atomic_write_text(Path(config.out), json.dumps(report, indent=2))
    if config.json:
        print(json.dumps({**report, "models": [{k: v for k, v in m.items() if k != "scores"} for m in report["models"]]}, indent=2))
    else:
        print(text_table(table(results)))
        print(f"\n{config.scoring} scores; a pair is right when the good sentence scores strictly higher")
    return 0


def check_output_file(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written before any work is done."""
    target = Path(path)
    if target.is_dir():
        raise UnmaskError(f"--{flag} {path}: is a folder, not a file")
    if not target.parent.is_dir():
        raise UnmaskError(f"--{flag} {path}: the folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK):
        raise UnmaskError(f"--{flag} {path}: cannot write into {target.parent}")


def save_array(path: str, array) -> Path:
    """np.save, but atomic: a crash never leaves half an array. `.npz` writes an npz archive
    with the array under `embeddings`; any other name gets `.npy` added, as np.save adds it."""
    import io

    import numpy as np

    from unmask.files import atomic_write_bytes

    buffer = io.BytesIO()
    if path.endswith(".npz"):
        target = Path(path)
        np.savez(buffer, embeddings=array)
    else:
        target = Path(path if path.endswith(".npy") else f"{path}.npy")
        np.save(buffer, array)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def run_embed(config: EmbedConfig) -> int:
    import numpy as np

    from unmask.infer import Embedder

    if config.out is not None:
        check_output_file(config.out, "out")
    texts = []
    if config.file is not None:
        try:
            lines = Path(config.file).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UnmaskError(f"--file {config.file}: cannot read: {e}") from None
        texts = [line.rstrip("\r") for line in (lines[:-1] if lines[-1] == "" else lines)]  # row i is line i, blank lines too
        if not texts:
            raise UnmaskError(f"--file {config.file}: empty, no text to embed")
    embedder = Embedder(config.model, device=config.device, trust_remote_code=config.trust_remote_code, echo=echo_stderr, step=config.step)
    if config.tokens is not None:
        tokens, ids, vectors = embedder.token_embeddings(config.tokens)
        print(f"{len(tokens)} tokens x {vectors.shape[1]} dimensions (last hidden layer)")
        width = max(len(t) for t in tokens)
        for position, (token, token_id, vector) in enumerate(zip(tokens, ids, vectors)):
            head = " ".join(f"{v:+.3f}" for v in vector[:6])
            print(f"{position:4d}  {token.ljust(width)}  {token_id:6d}  norm {np.linalg.norm(vector):7.3f}  [{head} ...]")
        if config.out:
            print(f"saved {save_array(config.out, vectors)}")
        return 0
    vectors = embedder.embed(texts, pooling=config.pooling, batch_size=config.batch_size, normalize=config.normalize, echo=echo_stderr)
    print(f"saved {vectors.shape[0]} x {vectors.shape[1]} {config.pooling}-pooled embeddings to {save_array(config.out, vectors)}")
    return 0


def run_compare(config: CompareConfig) -> int:
    from unmask.compare import compare

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {config.out}: is a file; give a folder for report.md, report.json and chart.png")

    compare(
        config.base,
        config.trained,
        config.data,
        Path(config.out),
        seq_len=config.seq_len,
        batch_size=config.batch_size,
        max_batches=config.max_batches,
        examples=config.examples,
        device=config.device,
        echo=print,
    )
    return 0


def export_checkpoint(run: Path, out: Path, step: int | None = None, echo=print) -> Path:
    """Write the save_pretrained folder (weights and tokenizer) of a complete checkpoint of
    the run folder `run` to `out`; the newest one that verifies when `step` is None."""
    from unmask import checkpoint
    from unmask.files import building
    from unmask.hub import checkpoint_source
    from unmask.model import load_mlm
    from unmask.rundir import RunDir, step_of
    from unmask.tokenizer import load_tokenizer

    if out.exists():
        raise UnmaskError(f"--out {out}: already exists; choose a new folder")
    run_dir = RunDir(run)
    if not run_dir.has_base():
        raise UnmaskError(f"{run}: not a run folder unmask can export from (no {run_dir.base.name}/config.json)")
    if step is None:
        newest = checkpoint.latest_checkpoint(run_dir, warn=echo)
        if newest is None:
            raise UnmaskError(f"{run}: no complete checkpoint to export")
        step = step_of(newest)
    source = checkpoint_source(str(run), run_dir, step)
    lm = load_mlm(source)
    tokenizer = load_tokenizer(source)
    with building(out, "the exported model") as folder:
        lm.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return source.checkpoint


def run_export(config: ExportConfig) -> int:
    source = export_checkpoint(Path(config.run), Path(config.out), config.step, echo=echo_stderr)
    print(f"exported {source} to {config.out} (loads with transformers' from_pretrained)")
    return 0


def run_serve(config: ServeConfig) -> int:
    from unmask.errors import optional_import

    optional_import("starlette", "unmask serve", "serve")
    from unmask.serve.app import serve

    serve(config)
    return 0


def run_plot(config: PlotConfig) -> int:
    from unmask.charts import plot_run

    print(f"saved {plot_run(Path(config.run), Path(config.out) if config.out else None)}")
    return 0


def _metric_line(metrics: dict, seeds: int) -> str:
    if seeds == 1:
        return ", ".join(f"{name} {value['median']:.4f}" for name, value in metrics.items())
    return ", ".join(
        f"{name} {v['median']:.4f} (mean {v['mean']:.4f} ± {v['std']:.4f}, {v['min']:.4f}-{v['max']:.4f})" for name, v in metrics.items()
    )


def run_finetune(config: FinetuneConfig) -> int:
    from unmask import distributed
    from unmask.finetune import finetune

    try:
        summary = finetune(config, echo=echo_stderr)
    finally:
        distributed.leave()
    if distributed.launched_by_torchrun() and os.environ.get("RANK", "0") != "0":
        return 0
    print(f"{summary['task']} on {len(summary['seeds'])} seed(s): {_metric_line(summary['metrics'], len(summary['seeds']))}")
    print(
        f"summary: {Path(config.out) / 'summary.json'}"
        + (f"; model: {Path(config.out) / 'model'}" if config.save_model and config.seeds == 1 else "")
    )
    return 0


def run_probe(config: ProbeConfig) -> int:
    from unmask.files import atomic_write_text
    from unmask.probe import probe

    if config.out is not None:
        check_output_file(config.out, "out")
    result = probe(config, echo=echo_stderr)
    if config.out is not None:
        atomic_write_text(Path(config.out), json.dumps(result, indent=2))
    if config.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['task']} probe ({result['probe']}) in {result['seconds']:.1f}s: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items())
        )
    return 0


def run_downstream(config: DownstreamConfig) -> int:
    from unmask.downstream import run_suite

    report = run_suite(config, echo=echo_stderr)
    print(report["table_text"])
    print(f"\nreport: {report['markdown']}" + (f", chart: {report['chart']}" if report.get("chart") else ""))
    return 0
