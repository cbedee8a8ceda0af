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


def _fill_parser() -> ArgumentParser:
    parser = _parser("Fill in the masks of texts with a model's top-k candidates.")
    parser.add_argument("model", help="Run folder, model folder, hub id or alias (minilm-l6).")
    parser.add_argument("texts", nargs="*", default=[], help="Texts with [MASK] or <mask>; `-` (or none, with --file unset) reads stdin, one per line.")
    parser.add_argument("--file", type=Optional[str], default=None, help="File of texts, one per line.")
    parser.add_argument("--top_k", type=int, default=5, help="Candidates per mask.")
    parser.add_argument("--json", action=ActionYesNo, default=False, help="Print one JSON object per text (JSON Lines).")
    parser.add_argument("--batch_size", type=int, default=32, help="Texts per forward pass.")
    parser.add_argument("--device", type=str, default="auto", help="auto, cpu, cuda or cuda:N.")
    parser.add_argument("--trust_remote_code", action=ActionYesNo, default=False, help="Allow a hub model to run its own code.")
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
    summary = train(config, echo=lambda line: print(line, file=sys.stderr))
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
    filler = Filler(args.model, device=args.device, trust_remote_code=args.trust_remote_code, echo=lambda s: print(s, file=sys.stderr))
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


COMMANDS: dict[str, tuple[Callable[[], ArgumentParser], Callable[[Namespace], int], str]] = {
    "prepare": (_prepare_parser, run_prepare, "Tokenize text into a token store."),
    "train": (_train_parser, run_train, "Train a masked language model."),
    "fill": (_fill_parser, run_fill, "Fill in [MASK]s with a model."),
    "inspect": (_inspect_parser, run_inspect, "Show one masking draw on a sentence."),
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
