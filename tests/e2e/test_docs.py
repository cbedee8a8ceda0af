"""The documentation site builds with warnings as errors (`mkdocs build --strict`): a broken
link or reference fails it, and so does a public function without a docstring."""

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly_with_every_command_and_the_api(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("prepare", "train", "fill", "evaluate", "finetune", "downstream", "TrainedRun"):
        assert f'id="unmask.api.{name}"' in api, name
    assert "MaskingCollator" in api
    commands = (site / "commands" / "index.html").read_text()
    from unmask.cli.main import COMMANDS

    assert all(f"unmask {name}" in commands for name in COMMANDS), "every command's --help is on the page"
    assert not (site / "hooks.py").exists()


def test_a_public_function_without_a_docstring_fails_the_build(monkeypatch):
    import unmask.api as api

    assert hooks().undocumented() == []

    def shiny_new_command(config=None):
        return config

    shiny_new_command.__module__ = api.__name__
    monkeypatch.setattr(api, "shiny_new_command", shiny_new_command, raising=False)
    assert hooks().undocumented() == ["unmask.api.shiny_new_command"]


def test_readme_links_the_pages_that_exist():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    import re

    pages = re.findall(r"\]\((docs/[a-z-]+\.md)\)", readme)
    assert len(pages) >= 8 and all((REPO / page).is_file() for page in pages), pages
