"""The `unmask` command: a table over the Python API, flags from the settings dataclasses, printing."""

from unmask.cli.main import main

__all__ = ["main"]
