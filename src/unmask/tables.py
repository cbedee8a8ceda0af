"""Tables a person reads in a terminal or a Markdown file."""

from __future__ import annotations

import math


def format_value(value, pattern: str) -> str:
    """`pattern` applied to a number; `n/a` for a missing or NaN one."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)


def text_table(table: list[list[str]]) -> str:
    """Rows of strings as aligned columns."""
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def markdown_table(table: list[list[str]]) -> str:
    """Rows of strings as a Markdown table, the first row its header."""
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in table[1:]])
