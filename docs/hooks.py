"""mkdocs hooks: fail the (strict) build on a public function without a docstring, and write
every command's `--help` into commands.md, so the site never falls behind the code."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging

log = logging.getLogger("mkdocs.plugins.unmask")
HELP_MARKER = "<!-- unmask:help -->"


def undocumented() -> list[str]:
    """Public names of `unmask` (its `__all__`) and of `unmask.api` (functions and classes, and
    their public methods) that have no docstring of their own."""
    import unmask
    import unmask.api as api

    missing = [f"unmask.{name}" for name in unmask.__all__ if not inspect.getdoc(getattr(unmask, name))]
    for name, value in vars(api).items():
        if name.startswith("_") or getattr(value, "__module__", None) != api.__name__:
            continue
        if (inspect.isfunction(value) or inspect.isclass(value)) and not (value.__doc__ or "").strip():
            missing.append(f"unmask.api.{name}")
        if inspect.isclass(value):
            for member, attribute in vars(value).items():
                if not member.startswith("_") and callable(attribute) and not (attribute.__doc__ or "").strip():
                    missing.append(f"unmask.api.{name}.{member}")
    return missing


def on_config(config, **kwargs):
    for name in undocumented():
        log.warning(f"{name} is public but has no docstring, so the API page says nothing of it")
    return config


def command_help() -> str:
    from unmask.cli.main import COMMANDS, main

    parts = ["## Every setting of every command", "", "The `--help` of each command, as the command prints it.", ""]
    for name in COMMANDS:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main([name, "--help"])
        parts += [f"### unmask {name}", "", "```text", out.getvalue().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    return markdown.replace(HELP_MARKER, command_help()) if HELP_MARKER in markdown else markdown
