"""The `unmask` command: subcommands mapped onto the library's functions.

Flags are written with dashes (`--batch-size`); underscores work too. `unmask train`
also reads a YAML file (`--config run.yaml`, e.g. a run's own config.yaml), and flags
given after it override it.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from typing import Callable, Optional

import dataclasses

import docstring_parser
from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, DefaultHelpFormatter, Namespace, set_parsing_settings

from unmask.config import PrepareConfig, TrainConfig, UnmaskError

set_parsing_settings(docstring_parse_attribute_docstrings=True)

_FLAG = re.compile(r"^--([a-z][a-z0-9_-]*)(=.*)?$", re.DOTALL)


def normalise_flags(argv: list[str]) -> list[str]:
    """`--batch-size 8` -> `--batch_size 8`; values are never touched."""
    return [f"--{m.group(1).replace('-', '_')}{m.group(2) or ''}" if (m := _FLAG.match(a)) else a for a in argv]


class _DashedHelp(DefaultHelpFormatter):
    """Show flags as users type them: with dashes."""

    def _format_action_invocation(self, action) -> str:
        text = super()._format_action_invocation(action)
        return re.sub(r"--\w+", lambda m: m.group(0).replace("_", "-"), text) if action.option_strings else text

    def _format_usage(self, *args, **kwargs) -> str:
        return re.sub(r"--\w+", lambda m: m.group(0).replace("_", "-"), super()._format_usage(*args, **kwargs))


def _parser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, formatter_class=_DashedHelp, exit_on_error=True)


def _add_dataclass(parser: ArgumentParser, cls: type, skip: frozenset[str] = frozenset()) -> None:
    """A flag per field; booleans are bare switches (`--resume`, `--no-resume`), not `--resume true`."""
    switches = {f.name for f in dataclasses.fields(cls) if f.type in (bool, "bool")}
    parser.add_class_arguments(cls, None, as_group=False, skip=set(skip | switches))
    docs = {p.arg_name: p.description for p in docstring_parser.parse_from_object(cls).params}
    for field in dataclasses.fields(cls):
        if field.name in switches:
            parser.add_argument(f"--{field.name}", action=ActionYesNo, default=field.default, help=docs.get(field.name))


def _prepare_parser() -> ArgumentParser:
    parser = _parser("Tokenize text files into a token store for training.")
    parser.add_argument("sources", nargs="+", help="Text files (.txt, .jsonl), folders or globs; `sample:pydocs` is the bundled sample corpus.")
    _add_dataclass(parser, PrepareConfig, skip=frozenset({"sources"}))
    return parser


def _train_parser() -> ArgumentParser:
    parser = _parser("Train (or continue pretraining) a masked language model on a token store.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file of settings; flags after it override it.")
    _add_dataclass(parser, TrainConfig)
    return parser


def _model_flags(parser: ArgumentParser) -> None:
    parser.add_argument("model", help="Run folder, model folder, hub id or alias (minilm-l6).")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N.")
    parser.add_argument("--trust_remote_code", action=ActionYesNo, default=False, help="Allow a hub model to run its own code.")


def _held_out_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="A token store (its held-out split) or text files, folders, globs.")
    parser.add_argument("--seq_len", type=int, default=128, help="Tokens per window.")
    parser.add_argument("--batch_size", type=int, default=32, help="Windows per batch.")
    parser.add_argument("--max_batches", type=Optional[int], default=None, help="Score only this many batches.")


def _fill_parser() -> ArgumentParser:
    parser = _parser("Fill in the masks of texts with a model's top-k candidates.")
    _model_flags(parser)
    parser.add_argument("texts", nargs="*", default=[], help="Texts with [MASK] or <mask>; `-` (or none, with --file unset) reads stdin, one per line.")
    parser.add_argument("--file", type=Optional[str], default=None, help="File of texts, one per line.")
    parser.add_argument("--top_k", type=int, default=5, help="Candidates per mask.")
    parser.add_argument("--json", action=ActionYesNo, default=False, help="Print one JSON object per text (JSON Lines).")
    parser.add_argument("--batch_size", type=int, default=32, help="Texts per forward pass.")
    return parser


def _inspect_parser() -> ArgumentParser:
    parser = _parser("Show what one masking draw does to a sentence: tokens, ids, picks, replacements, labels.")
    parser.add_argument("text", help="Any sentence.")
    parser.add_argument("--model", type=str, default="minilm-l6", help="Tokenizer to use: run folder, model folder, hub id or alias.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the draw; the same seed gives the same draw.")
    parser.add_argument("--mask_prob", type=float, default=0.15, help="Share of maskable tokens picked.")
    parser.add_argument("--mask_replace_prob", type=float, default=0.8, help="Share of picked tokens replaced by the mask token.")
    parser.add_argument("--random_replace_prob", type=float, default=0.1, help="Share of picked tokens replaced by a random token.")
    parser.add_argument("--json", action=ActionYesNo, default=False, help="Print the rows as JSON.")
    return parser


def _eval_parser() -> ArgumentParser:
    parser = _parser("Held-out MLM loss, perplexity, top-1/top-5 accuracy (whole words and word pieces), on fixed masked positions.")
    _model_flags(parser)
    _held_out_flags(parser)
    parser.add_argument("--split", type=str, default="val", help="Split of a store to score: val or train.")
    parser.add_argument("--json", action=ActionYesNo, default=False, help="Print the metrics as JSON.")
    return parser


def _score_parser() -> ArgumentParser:
    parser = _parser("Pseudo-log-likelihood and pseudo-perplexity of sentences (plain and word-aware PLL-word-l2r).")
    _model_flags(parser)
    parser.add_argument("texts", nargs="*", default=[], help="Sentences; `-` (or none, with --file unset) reads stdin, one per line.")
    parser.add_argument("--file", type=Optional[str], default=None, help="File of sentences, one per line.")
    parser.add_argument("--batch_size", type=int, default=64, help="Masked copies per forward pass.")
    parser.add_argument("--json", action=ActionYesNo, default=False, help="Print one JSON object per sentence, with per-token scores.")
    return parser


def _embed_parser() -> ArgumentParser:
    parser = _parser("Sentence embeddings of a file of texts (one per line) to .npy, or token embeddings of one text.")
    _model_flags(parser)
    parser.add_argument("--file", type=Optional[str], default=None, help="File of texts, one per line; row i of the output is line i.")
    parser.add_argument("--out", type=Optional[str], default=None, help="Where to save the array (.npy).")
    parser.add_argument("--pooling", type=str, default="mean", help="mean (over the attention mask) or cls.")
    parser.add_argument("--normalize", action=ActionYesNo, default=False, help="Scale each sentence vector to unit length.")
    parser.add_argument("--batch_size", type=int, default=32, help="Texts per forward pass (batches are formed by length).")
    parser.add_argument("--tokens", type=Optional[str], default=None, help="Show the contextual embedding of every token of this text.")
    return parser


def _compare_parser() -> ArgumentParser:
    parser = _parser("Compare a base and a trained model on the same masked positions: table, Markdown report and PNG chart.")
    parser.add_argument("base", help="The model before training.")
    parser.add_argument("trained", help="The model after training (a run folder works).")
    _held_out_flags(parser)
    parser.add_argument("--out", type=str, default="compare", help="Folder for report.md, report.json and chart.png.")
    parser.add_argument("--examples", type=int, default=8, help="Positions to show where the two top-1 predictions differ.")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N.")
    return parser


def _plot_parser() -> ArgumentParser:
    parser = _parser("Plot a run's training loss and evaluation curves to a PNG.")
    parser.add_argument("run", help="Run folder (with metrics.jsonl).")
    parser.add_argument("--out", type=Optional[str], default=None, help="PNG to write (default RUN/curves.png).")
    return parser


def run_prepare(args: Namespace) -> int:
    from unmask.data.store import prepare

    config = PrepareConfig(**args.as_dict())
    meta = prepare(config)
    splits, skipped = meta["splits"], meta["skipped"]
    print(
        f"store {config.out}: {splits['train']['documents']:,} training documents ({splits['train']['tokens']:,} tokens), "
        f"{splits['val']['documents']:,} held out ({splits['val']['tokens']:,} tokens) from {meta['files']} file(s) "
        f"in {meta['seconds']:.1f}s"
    )
    if skipped["empty_files"]:
        print(f"skipped {len(skipped['empty_files'])} empty file(s): {', '.join(skipped['empty_files'][:5])}")
    if skipped["bad_files"]:
        print(f"skipped {len(skipped['bad_files'])} unreadable file(s): " + "; ".join(skipped["bad_files"][:5]))
    if skipped["empty_documents"]:
        print(f"skipped {skipped['empty_documents']} empty document(s)")
    return 0


def run_train(args: Namespace) -> int:
    from unmask.train import train

    values = args.as_dict()
    values.pop("config", None)
    config = TrainConfig(**values)
    summary = train(config, echo=_stderr)
    print(json.dumps(summary, indent=2))
    return 0


def _read_texts(args: Namespace) -> tuple[list[str], list[str]]:
    """Texts and a label naming where each came from (file:line), for error messages."""
    if args.file is not None:
        try:
            lines = open(args.file, encoding="utf-8").read().split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise UnmaskError(f"--file {args.file}: cannot read: {e}") from None
        pairs = [(line.rstrip("\r"), f"{args.file}:{n}") for n, line in enumerate(lines, 1) if line.strip()]
    elif args.texts and args.texts != ["-"]:
        pairs = [(text, f"text {n}") for n, text in enumerate(args.texts, 1)]
    elif args.texts == ["-"] or not sys.stdin.isatty():
        pairs = [(line.rstrip("\r\n"), f"stdin:{n}") for n, line in enumerate(sys.stdin, 1) if line.strip()]
    else:
        raise UnmaskError("give texts, --file F, or pipe texts on stdin")
    if not pairs:
        raise UnmaskError("no texts to fill")
    return [p[0] for p in pairs], [p[1] for p in pairs]


def run_fill(args: Namespace) -> int:
    from unmask.infer import Filler

    texts, labels = _read_texts(args)
    filler = Filler(args.model, device=args.device, trust_remote_code=args.trust_remote_code, echo=_stderr)
    for result in filler.fill(texts, top_k=args.top_k, batch_size=args.batch_size, labels=labels):
        if args.json:
            print(json.dumps(asdict(result), ensure_ascii=False))
            continue
        print(result.text)
        for number, mask in enumerate(result.masks, 1):
            shown = "  ".join(f"{c.token.strip() or repr(c.token)} ({c.score:.1%})" for c in mask.candidates)
            print(f"  mask {number}: {shown}")
        print(f"  -> {result.best_guess()}")
    return 0


def run_inspect(args: Namespace) -> int:
    from unmask.infer import inspect_masking

    rows = inspect_masking(
        args.text, args.model, args.seed, args.mask_prob, args.mask_replace_prob, args.random_replace_prob
    )
    if args.json:
        print(json.dumps([asdict(r) for r in rows], ensure_ascii=False, indent=1))
        return 0
    header = ("pos", "token", "id", "attn", "special", "picked", "became", "input_id", "label")
    table = [header] + [
        (str(r.position), r.token, str(r.token_id), str(r.attention), "yes" if r.special else "", "yes" if r.picked else "",
         r.became, str(r.input_id), str(r.label))
        for r in rows
    ]  # fmt: skip
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    maskable = sum(not r.special for r in rows)
    picked = sum(r.picked for r in rows)
    print(f"\npicked {picked} of {maskable} maskable tokens ({picked / max(maskable, 1):.0%}; mask_prob {args.mask_prob}) with seed {args.seed}")
    return 0


def run_eval(args: Namespace) -> int:
    from unmask.evaluate import eval_windows, evaluate_models, held_out_split, vocabulary, word_start_table
    from unmask.infer import LoadedModel

    loaded = LoadedModel(args.model, device=args.device, trust_remote_code=args.trust_remote_code, echo=_stderr)
    windows = eval_windows(held_out_split(args.data, loaded.tokenizer, args.split), loaded.tokenizer, min(args.seq_len, loaded.max_len))
    [metrics] = evaluate_models(
        [loaded.lm], windows, **vocabulary(loaded.tokenizer), batch_size=args.batch_size, device=loaded.device,
        max_batches=args.max_batches, starts_word=word_start_table(loaded.tokenizer), progress=True,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"model": args.model, "data": args.data, "windows": len(windows), **metrics.as_dict()}, indent=2))
        return 0
    from unmask.report import text_table, metrics_table

    rows = [row[:2] for row in metrics_table([args.model], [metrics])]
    print(text_table(rows))
    return 0


def run_score(args: Namespace) -> int:
    from unmask.infer import Scorer

    texts, labels = _read_texts(args)
    scorer = Scorer(args.model, device=args.device, trust_remote_code=args.trust_remote_code, echo=_stderr)
    for result in scorer.score(texts, batch_size=args.batch_size, labels=labels):
        if args.json:
            print(json.dumps(asdict(result), ensure_ascii=False))
        else:
            print(
                f"PLL {result.pll:9.3f}  pseudo-perplexity {result.pseudo_perplexity:9.2f}  |  word-l2r PLL {result.pll_word_l2r:9.3f}"
                f"  pseudo-perplexity {result.pseudo_perplexity_word_l2r:9.2f}  |  {result.text}"
            )
    return 0


def run_embed(args: Namespace) -> int:
    import numpy as np

    from unmask.infer import Embedder

    if (args.file is None) == (args.tokens is None):
        raise UnmaskError("give --file F (sentence embeddings) or --tokens TEXT (token embeddings)")
    embedder = Embedder(args.model, device=args.device, trust_remote_code=args.trust_remote_code, echo=_stderr)
    if args.tokens is not None:
        tokens, ids, vectors = embedder.token_embeddings(args.tokens)
        print(f"{len(tokens)} tokens x {vectors.shape[1]} dimensions (last hidden layer)")
        width = max(len(t) for t in tokens)
        for position, (token, token_id, vector) in enumerate(zip(tokens, ids, vectors)):
            head = " ".join(f"{v:+.3f}" for v in vector[:6])
            print(f"{position:4d}  {token.ljust(width)}  {token_id:6d}  norm {np.linalg.norm(vector):7.3f}  [{head} ...]")
        if args.out:
            np.save(args.out, vectors)
            print(f"saved {args.out}")
        return 0
    if args.out is None:
        raise UnmaskError("--out: give the .npy file to write the embeddings to")
    try:
        lines = open(args.file, encoding="utf-8").read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UnmaskError(f"--file {args.file}: cannot read: {e}") from None
    texts = [line.rstrip("\r") for line in (lines[:-1] if lines[-1] == "" else lines)]  # row i is line i, blank lines too
    vectors = embedder.embed(texts, pooling=args.pooling, batch_size=args.batch_size, normalize=args.normalize, echo=_stderr)
    np.save(args.out, vectors)
    print(f"saved {vectors.shape[0]} x {vectors.shape[1]} {args.pooling}-pooled embeddings to {args.out}")
    return 0


def run_compare(args: Namespace) -> int:
    from pathlib import Path

    from unmask.report import compare

    compare(
        args.base, args.trained, args.data, Path(args.out), seq_len=args.seq_len, batch_size=args.batch_size,
        max_batches=args.max_batches, examples=args.examples, device=args.device, echo=print,
    )  # fmt: skip
    return 0


def run_plot(args: Namespace) -> int:
    from pathlib import Path

    from unmask.report import plot_run

    print(f"saved {plot_run(Path(args.run), Path(args.out) if args.out else None)}")
    return 0


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], int], str]] = {
    "prepare": (_prepare_parser, run_prepare, "Tokenize text into a token store."),
    "train": (_train_parser, run_train, "Train a masked language model."),
    "fill": (_fill_parser, run_fill, "Fill in [MASK]s with a model."),
    "inspect": (_inspect_parser, run_inspect, "Show one masking draw on a sentence."),
    "eval": (_eval_parser, run_eval, "Held-out loss, perplexity and accuracy of a model."),
    "score": (_score_parser, run_score, "Pseudo-log-likelihood of sentences."),
    "embed": (_embed_parser, run_embed, "Sentence or token embeddings."),
    "compare": (_compare_parser, run_compare, "Base vs trained report with chart."),
    "plot": (_plot_parser, run_plot, "Training curves of a run as a PNG."),
}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="unmask", description="Train and use masked language models.", formatter_class=_DashedHelp)
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name, (make, _, help_text) in COMMANDS.items():
        subcommands.add_subcommand(name, make(), help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = normalise_flags(sys.argv[1:] if argv is None else list(argv))
    args = build_parser().parse_args(argv)
    command = args.command
    try:
        return COMMANDS[command][1](args[command])
    except UnmaskError as e:
        print(f"unmask {command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"unmask {command}: interrupted; finished files and checkpoints are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
