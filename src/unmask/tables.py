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


def html_table(table: list[list[str]], caption: str = "") -> str:
    """Rows of strings as an HTML table (escaped), the first row its header: what a result
    shows of itself in Jupyter (`_repr_html_`)."""
    from html import escape

    head = "".join(f"<th style='text-align:left'>{escape(cell)}</th>" for cell in table[0])
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table[1:])
    title = f"<caption style='text-align:left'>{escape(caption)}</caption>" if caption else ""
    return f"<table>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def svg_lines(series: dict[str, list[tuple[float, float]]], title: str, width: int = 420, height: int = 180) -> str:
    """A small line chart as inline SVG (no plotting library): one polyline per named series of
    (x, y) points, the axes' ranges written at the corners."""
    from html import escape

    points = [p for line in series.values() for p in line if all(math.isfinite(v) for v in p)]
    if not points:
        return ""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, top, plot_w, plot_h = 46, 22, width - 56, height - 44
    colours = ["#2f6fb0", "#d08c2c", "#4a9a5b", "#9a4a8a"]
    shapes = []
    for number, (name, line) in enumerate(series.items()):
        kept = [(x, y) for x, y in line if math.isfinite(x) and math.isfinite(y)]
        coords = " ".join(f"{left + (x - x0) / (x1 - x0) * plot_w:.1f},{top + (1 - (y - y0) / (y1 - y0)) * plot_h:.1f}" for x, y in kept)
        colour = colours[number % len(colours)]
        shapes.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' points='{coords}'/>")
        shapes.append(f"<text x='{left + 8 + 110 * number}' y='{height - 4}' font-size='11' fill='{colour}'>{escape(name)}</text>")
    frame = f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' stroke='#bbb'/>"
    labels = (
        f"<text x='4' y='{top + 8}' font-size='10'>{y1:.3g}</text><text x='4' y='{top + plot_h}' font-size='10'>{y0:.3g}</text>"
        f"<text x='{left}' y='{top + plot_h + 12}' font-size='10'>{x0:g}</text>"
        f"<text x='{left + plot_w - 30}' y='{top + plot_h + 12}' font-size='10'>{x1:g}</text>"
        f"<text x='{left}' y='14' font-size='12'>{escape(title)}</text>"
    )
    return f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>{frame}{labels}{''.join(shapes)}</svg>"
