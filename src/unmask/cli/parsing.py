"""From argv to a command's validated settings.

Every subcommand's options are generated from its typed settings dataclass (`unmask.config`):
each field is a flag, its docstring the help text, the fields a class lists in `POSITIONAL`
are given without a flag, and booleans are switches (`--json`, `--no-json`). Flags are
written with dashes (`--batch-size`); underscores work too. Every subcommand also reads a
YAML file (`--config run.yaml`, e.g. a run's own config.yaml); flags after it override it.

jsonargparse builds the parser, parses and prints help. What it is not asked to do, and why:
- argv is read once before it (`check_command_line`, `positionals_first`, `_config_file`):
  a value's type is checked by `config.resolve.coerce`, so that a bad value reads the same
  from the command line and from Python (`--lr: 'fast' is not a number`); an unknown flag
  gets "did you mean" (argparse only learns that in Python 3.14); a positional may follow the
  options (jsonargparse has no intermixed parsing); and the settings a YAML file gave are
  known apart from the ones the command line gave, which a recipe must not override (with
  jsonargparse's own `--config` action the two are merged before we see them).
- flags are normalised to underscores (`normalise_flags`), since argparse takes exactly the
  spelling it was given and aliases would double every flag in `--help`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
import typing
from collections.abc import Callable

import docstring_parser
from jsonargparse import ActionYesNo, ArgumentParser, DefaultHelpFormatter, set_parsing_settings

from unmask.config import flag, load_partial_yaml
from unmask.config.resolve import coerce, resolve, resume_file
from unmask.errors import UsageError

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

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Each line of a description or epilog wrapped on its own, so that a list stays a list."""
        import textwrap

        return "\n".join(
            textwrap.fill(
                line,
                width,
                initial_indent=indent,
                subsequent_indent=indent + " " * (len(line) - len(line.lstrip()) + 2),
                break_on_hyphens=False,
            )
            for line in text.splitlines()
        )


def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring, base classes first so that a subclass's own text wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass) and klass is not object:
            docs.update({p.arg_name: p.description for p in docstring_parser.parse_from_object(klass).params if p.description})
    return docs


def add_settings(parser: ArgumentParser, cls: type, defaults: dict | None = None) -> None:
    """One argument per field of the settings dataclass `cls`; `defaults` (from a --config
    YAML file) stand in for what the command line does not give.

    Nothing is required at the parser: a setting given neither way is named by the check
    in `parse`, which also knows the YAML file could have given it.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    defaults = defaults or {}
    positional = getattr(cls, "POSITIONAL", ())
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for field in [fields[name] for name in positional] + [f for f in fields.values() if f.name not in positional]:
        name, hint, doc = field.name, hints[field.name], docs.get(field.name)
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else (field.default if field.default is not dataclasses.MISSING else field.default_factory())
        default = defaults.get(name, default)
        is_list = typing.get_origin(hint) is list
        if is_list and default is not None and not isinstance(default, list):  # `data: store` in a YAML file means one store
            default = [default]
        must_give = required and name not in defaults
        if name in positional:
            nargs = ("+" if must_give else "*") if is_list else (None if must_give else "?")
            action = parser.add_argument(name, nargs=nargs, help=doc, **({"default": default} if nargs in ("*", "?") else {}))
        elif hint is bool:
            action = parser.add_argument(f"--{name}", action=ActionYesNo, default=default, help=doc)
        elif is_list:
            action = parser.add_argument(f"--{name}", nargs="+", type=typing.get_args(hint)[0], default=default, help=doc)
        else:
            action = parser.add_argument(f"--{name}", type=(hint | None) if required else hint, default=default, help=doc)
        if must_give:  # "(required)" once, and no "default: null" for what has none
            action.help = f"{doc} (required)" if doc else "(required)"
            action._jsonargparse_preexpanded_help = True


def check_command_line(cls: type, argv: list[str], typed: list[str], command: str) -> None:
    """Before the parser sees it: every flag must be a setting of the command, spelled out in
    full, and choices and numbers must be valid; each problem is one line naming the flag as
    the user typed it. `argv` is normalised (`--batch_size`), `typed` what the user wrote."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    switches = {f"no_{name}" for name, hint in hints.items() if hint is bool}
    known = set(fields) | switches | {"config", "help"}
    for index, (arg, original) in enumerate(zip(argv, typed)):
        match = _FLAG.match(arg)
        if match is None:
            continue
        name = match.group(1)
        if name not in known:
            spelled = original.split("=", 1)[0]
            close = difflib.get_close_matches(name, sorted(fields), n=1, cutoff=0.6)
            hint = f"; did you mean {flag(close[0])}?" if close else f" (see unmask {command} --help)"
            raise UsageError(f"unrecognized option {spelled}{hint}")
        if name in fields and typing.get_origin(hints[name]) is list:
            coerce(cls, name, _list_values(argv, index, match))
        elif name in fields and hints[name] is not bool and typing.get_origin(hints[name]) is not list:
            value = match.group(2)[1:] if match.group(2) else (argv[index + 1] if index + 1 < len(argv) else None)
            coerce(cls, name, value)


def _list_values(argv: list[str], index: int, match: re.Match) -> list[str]:
    """The values of a list flag: `--flag=V`, or the arguments after it up to the next flag."""
    if match.group(2):
        return [match.group(2)[1:]]
    values = []
    for arg in argv[index + 1 :]:
        if _FLAG.match(arg):
            break
        values.append(arg)
    return values


def positionals_first(cls: type, argv: list[str], command: str) -> list[str]:
    """Move the positional arguments ahead of the options, in the order the settings name
    them, so that `fill RUN --top-k 3 "a [MASK]."` works as `fill RUN "a [MASK]." --top-k 3`
    (argparse alone takes positionals in one run only), and a positional setting may also be
    given as a flag (`finetune --model M`). Knows from the settings which flags take a value."""
    hints = typing.get_type_hints(cls)
    order = getattr(cls, "POSITIONAL", ())
    head, rest = argv[: argv.index(command) + 1], argv[argv.index(command) + 1 :]
    loose, options, flagged = [], [], {}
    after: dict[int, tuple[str, str] | str] = {}  # a loose argument -> the (flag, value) just before it, for the message
    previous = ""
    index = 0
    while index < len(rest):
        arg = rest[index]
        match = _FLAG.match(arg)
        index += 1
        if match is None or arg in ("-h", "--help"):
            if arg not in ("-h", "--help"):
                after[len(loose)] = previous
            (options if arg in ("-h", "--help") else loose).append(arg)
            previous = ""
            continue
        name = match.group(1)
        taken = [match.group(2)[1:]] if match.group(2) else []
        if not taken and not name.startswith("no_") and hints.get(name) is not bool:
            if typing.get_origin(hints.get(name)) is list:  # every value up to the next flag
                while index < len(rest) and _FLAG.match(rest[index]) is None:
                    taken.append(rest[index])
                    index += 1
            elif index < len(rest):
                taken.append(rest[index])
                index += 1
        previous = (f"--{name.replace('_', '-')}", " ".join(taken)) if taken and match.group(2) is None else ""
        if name in order:
            flagged[name] = taken
        else:
            options.append(f"--{name}" if match.group(2) is None else arg)
            options.extend(taken if match.group(2) is None else [])
    positional = []
    taken_count = 0
    for name in order:
        if name in flagged:
            positional += flagged[name]
        elif typing.get_origin(hints[name]) is list:
            positional, loose, taken_count = positional + loose, [], taken_count + len(loose)
        elif loose:
            positional.append(loose.pop(0))
            taken_count += 1
    if loose:
        stray, before = loose[0], after.get(taken_count, "")
        hint = f" after {before[0]} {before[1]}: a value with spaces needs quotes ({before[0]} '{before[1]} {stray}')" if before else ""
        raise UsageError(f"unexpected argument '{stray}'{hint} (see unmask {command} --help)")
    return head + positional + loose + options


def command_of(argv: list[str], commands: dict) -> str:
    """The subcommand argv names ("" if none)."""
    return next((a for a in argv if a in commands), "")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value given to `--name` in normalised argv (the last one wins, as in the parser)."""
    value = None
    for index, arg in enumerate(argv):
        if arg == f"--{name}" and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _resuming(argv: list[str]) -> bool:
    switches = [a for a in argv if a in ("--resume", "--no_resume")]
    return bool(switches) and switches[-1] == "--resume"


def build_parser(commands: dict, defaults: dict[str, dict] | None = None) -> ArgumentParser:
    from unmask import __version__

    parser = ArgumentParser(
        prog="unmask", description="Train and use masked language models.", formatter_class=_DashedHelp, allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"unmask {__version__}")
    subcommands = parser.add_subcommands(dest="command", required=True)
    for name, command in commands.items():
        sub = ArgumentParser(
            description=command.description,
            epilog=command.epilog() if command.epilog else None,
            formatter_class=_DashedHelp,
            exit_on_error=True,
            allow_abbrev=False,
        )
        sub.add_argument(
            "--config", type=str | None, default=None, help="YAML file of settings (a run's config.yaml works); flags override it."
        )
        add_settings(sub, command.settings, (defaults or {}).get(name))
        subcommands.add_subcommand(name, sub, help=command.summary)
    return parser


def _config_file(argv: list[str]) -> str | None:
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def _given_as_flag(argv: list[str], name: str) -> bool:
    """Whether the command line gave `name`: `--name`, `--name=V`, or a switch's `--no-name`."""
    spelled = {f"--{prefix}{name}" for prefix in ("", "no_")}
    return any(arg in spelled or arg.split("=", 1)[0] in spelled for arg in argv)


def parse(argv: list[str], commands: dict, echo: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[str, object]:
    """The subcommand's name and its validated settings (UnmaskError for a bad value).

    `unmask train --out RUN --resume` reads RUN/config.yaml as if it were given with
    --config, so a requeued job needs nothing else; flags still override it.
    """
    typed, argv = list(argv), normalise_flags(argv)
    command = command_of(argv, commands)
    if command:
        check_command_line(commands[command].settings, argv, typed, command)
        argv = positionals_first(commands[command].settings, argv, command)
    path = _config_file(argv)
    if command == "train" and path is None and _resuming(argv) and _flag_value(argv, "out"):
        path = resume_file(_flag_value(argv, "out"), _given_as_flag(argv, "data"))
    defaults = {}
    if command and path is not None:
        defaults = {command: load_partial_yaml(commands[command].settings, path)}
    args = build_parser(commands, defaults).parse_args(argv)
    name = args.command
    values = args[name].as_dict()
    values.pop("config", None)
    from_file = defaults.get(name, {})
    cls = commands[name].settings
    positional = getattr(cls, "POSITIONAL", ())

    def named(key: str) -> bool:  # what the command line itself gave: these win over a file and a recipe
        if key in positional:
            return values[key] not in (None, []) and (key not in from_file or values[key] != from_file[key])
        return _given_as_flag(argv, key)

    return name, resolve(cls, None, {k: v for k, v in values.items() if named(k)}, from_file=from_file, file=path, echo=echo)
