"""The tree stays formatted and linted with the configured tools (ruff, settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

TREES = ["src", "tests", "benchmarks"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args, *TREES], cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("command", [("format", "--check"), ("check",)], ids=["format", "lint"])
def test_ruff_is_satisfied(command):
    result = ruff(*command)
    assert result.returncode == 0, (
        f"ruff {' '.join(command)} found problems (run `ruff format` / `ruff check --fix`):\n{result.stdout}{result.stderr}"
    )


LONGEST_FUNCTION = 80
"""Lines, from `def` to the last line of the body: a function longer than this is split."""


def long_functions(source: str) -> list[tuple[str, int]]:
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > LONGEST_FUNCTION:
            found.append((node.name, node.end_lineno - node.lineno + 1))
    return found


def test_no_function_is_over_80_lines():
    assert long_functions("def short():\n    return 1\n") == []
    assert long_functions("def long():\n" + "    x = 1\n" * LONGEST_FUNCTION) == [("long", LONGEST_FUNCTION + 1)], "the check can fail"
    found = {
        f"{path.relative_to(REPO)}::{name}": lines
        for path in (REPO / "src").rglob("*.py")
        for name, lines in long_functions(path.read_text())
    }
    assert found == {}, f"split these: {found}"
