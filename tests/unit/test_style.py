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
