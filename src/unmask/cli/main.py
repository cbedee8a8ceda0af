"""The `unmask` command: the table from subcommand names to (settings class, function), the
exit codes, and the one line an error prints. Reading argv into settings is `cli.parsing`;
what each command prints is `cli.commands`.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from unmask import config as settings
from unmask.cli import commands, parsing
from unmask.config.recipes import not_reproduced_text
from unmask.errors import COMMAND_LINE, UnmaskError, UsageError


@dataclass(frozen=True)
class Command:
    settings: type
    function: Callable[..., int]
    """Takes the settings, returns the exit code; what it needs is imported when it runs."""
    summary: str
    description: str
    epilog: Callable[[], str] | None = None
    """More text at the end of --help."""


COMMANDS: dict[str, Command] = {
    "prepare": Command(settings.PrepareConfig, commands.run_prepare, "Tokenize text into a token store.",
                       "Tokenize text files into a token store for training."),
    "tokenizer": Command(settings.TokenizerConfig, commands.run_tokenizer, "Train a vocabulary of your own.",
                         "Train a WordPiece, byte-level BPE or unigram vocabulary on text sources (for --from-scratch)."),
    "train": Command(settings.TrainConfig, commands.run_train, "Train a masked language model.",
                     "Train (or continue pretraining) a masked language model on a token store.", not_reproduced_text),
    "fill": Command(settings.FillConfig, commands.run_fill, "Fill in [MASK]s with a model.",
                    "Fill in the masks of texts with a model's top-k candidates."),
    "inspect": Command(settings.InspectConfig, commands.run_inspect, "Show one masking draw on a sentence.",
                       "Show what one masking draw does to a sentence: tokens, ids, picks, replacements, labels."),
    "eval": Command(settings.EvalConfig, commands.run_eval, "Held-out loss, perplexity and accuracy of a model.",
                    "Held-out MLM loss, perplexity, top-1/top-5 accuracy (whole words and word pieces), on fixed masked positions."),
    "score": Command(settings.ScoreConfig, commands.run_score, "Pseudo-log-likelihood of sentences.",
                     "Pseudo-log-likelihood and pseudo-perplexity of sentences (plain and word-aware PLL-word-l2r)."),
    "pairs": Command(settings.PairsConfig, commands.run_pairs, "Minimal-pair accuracy (BLiMP) of one or more models.",
                     "Minimal-pair accuracy: a pair is right when the good sentence's pseudo-log-likelihood is strictly higher."),
    "embed": Command(settings.EmbedConfig, commands.run_embed, "Sentence or token embeddings.",
                     "Sentence embeddings of a file of texts (one per line) to .npy, or token embeddings of one text."),
    "compare": Command(settings.CompareConfig, commands.run_compare, "Base vs trained report with chart.",
                       "Compare a base and a trained model on the same masked positions: table, Markdown report and PNG chart."),
    "export": Command(settings.ExportConfig, commands.run_export, "A checkpoint as a model folder.",
                      "Write the save_pretrained folder (weights and tokenizer) of any complete checkpoint of a run."),
    "finetune": Command(settings.FinetuneConfig, commands.run_finetune, "Fine-tune a model on a labelled task.",
                        "Fine-tune an encoder with a fresh task head (classes, pairs, numbers, token tags); metrics over seeds."),
    "probe": Command(settings.ProbeConfig, commands.run_probe, "Score a model with a linear probe, in seconds.",
                     "A logistic or ridge regression on frozen embeddings: a quick downstream signal for any checkpoint."),
    "downstream": Command(settings.DownstreamConfig, commands.run_downstream, "Run a task suite over models or a run's checkpoints.",
                          "Fine-tune or probe every model, or every checkpoint of a run, on every task of a suite: table and chart."),
    "serve": Command(settings.ServeConfig, commands.run_serve, "A local web page for runs and models.",
                     "A local web page: live runs and their curves, fill-mask, the masking walkthrough, base-vs-trained comparison."),
    "plot": Command(settings.PlotConfig, commands.run_plot, "Training curves of a run as a PNG.",
                    "Plot a run's training loss and evaluation curves to a PNG."),
}  # fmt: skip


def parse(argv: list[str], echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[str, object]:
    """The subcommand's name and its validated settings (`parsing.parse` over this table)."""
    return parsing.parse(argv, COMMANDS, echo)


CHECKPOINTED = {
    "train": "finished files and checkpoints are intact; continue with --resume",
    "finetune": "finished files and checkpoints are intact; continue with --resume",
    "downstream": "the results written so far are kept; the same command continues",
}
"""What an interrupted command that keeps checkpoints (or results) leaves, for the Ctrl-C line."""


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; under torchrun, a process that joined the
    run's process group ends here instead, with that code (so a second call never runs there)."""
    try:
        code = _run(argv)
    except Exception:  # not unmask's own error: a bug, or torch's; its traceback, then the same ending
        if _group_made_here() is None:
            raise
        traceback.print_exc()
        code = 1
    distributed = _group_made_here()
    if distributed is not None:
        distributed.end_process_if_it_made_the_group(code)
    return code


def _group_made_here():
    """`unmask.runtime.distributed` if it made this process's process group, else None. Such a
    process ends without the interpreter's shutdown (`end_process_if_it_made_the_group` says
    why). Looked up, not imported, so that --help needs no torch."""
    distributed = sys.modules.get("unmask.runtime.distributed")
    return distributed if distributed is not None and distributed.made_group() else None


def _run(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = parsing.command_of(argv, COMMANDS)
    spelling = COMMAND_LINE.set(True)  # messages name flags, not keyword arguments
    try:
        command, config = parse(argv)
        return COMMANDS[command].function(config)
    except UnmaskError as e:
        # Under torchrun every process may fail alike; name the rank of any but the first.
        rank = os.environ.get("RANK", "0") if "WORLD_SIZE" in os.environ else "0"
        print(f"unmask {command}: error: {'' if rank == '0' else f'[rank {rank}] '}{e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except BrokenPipeError:
        # The reader went away (`| head -1`, `| grep -q`): stop quietly, as Unix tools do. Point
        # stdout at /dev/null so that the interpreter's last flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except PermissionError as e:  # wherever it comes from, the path is what the user needs
        print(f"unmask {command}: error: {e.filename or e}: permission denied (check who owns it, or choose another path)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or a second stop signal during training (`preemption.StopNow`)
        kept = CHECKPOINTED.get(command, "files already finished are intact, and nothing half-written was kept")
        by = f" by a second {e.args[0]}" if e.args else ""
        print(f"unmask {command}: interrupted{by}; {kept}", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    finally:
        COMMAND_LINE.reset(spelling)


if __name__ == "__main__":
    sys.exit(main())
