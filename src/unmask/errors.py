"""The one error type a user sees, and the one way an optional package is asked for.

`UnmaskError` is an error caused by the user's input or environment (a bad flag, a missing
file, a full disk): the CLI prints it as one line, without a traceback, and exits 1. This
module imports nothing of unmask's, so every other module may raise it.
"""

from __future__ import annotations

import contextvars
import sys
from types import ModuleType

COMMAND_LINE = contextvars.ContextVar("unmask_command_line", default=False)
"""True while the `unmask` command runs: a message then tells the user a flag (`--overwrite`),
and a library call is told the keyword argument (`overwrite=True`)."""


def setting(name: str) -> str:
    """A setting's name as the caller writes it: `--out` on the command line, `out` in Python."""
    return f"--{name.replace('_', '-')}" if COMMAND_LINE.get() else name


def option(name: str, value=True) -> str:
    """A setting as the caller gives it: `--overwrite` / `--out runs/x` on the command line,
    `overwrite=True` / `out='runs/x'` in Python."""
    if COMMAND_LINE.get():
        dashed = f"--{name.replace('_', '-')}"
        return dashed if value is True else f"{dashed} {value}"
    return f"{name}={value!r}"


class UnmaskError(Exception):
    """An error caused by the user's input; the CLI prints it without a traceback (exit 1)."""


class UsageError(UnmaskError):
    """A command line the parser rejects: an unknown flag, a value of the wrong kind (exit 2)."""


class InvalidValue(UnmaskError, ValueError):
    """A bad argument to a drop-in for a Hugging Face class, which code written for that class
    catches as the `ValueError` Hugging Face raises."""


def optional_import(module: str, purpose: str, extra: str) -> ModuleType:
    """Import an optional dependency, or say in one line which extra installs it.

    `purpose` says what needed it ("reading data.parquet", "--report-to wandb"), `extra` is
    the `unmask[...]` extra that brings it.
    """
    try:
        # __import__ rather than importlib.import_module: the import system's hooks (and a
        # test's stand-in for a missing package) see it as they see an import statement.
        __import__(module)
    except ImportError:
        package = module.split(".")[0]
        raise UnmaskError(f"{purpose} needs {package}: pip install 'unmask[{extra}]' (or pip install {package})") from None
    return sys.modules[module]
