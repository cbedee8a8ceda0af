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
    """Public names of `unmask` (its `__all__`), of `unmask.api` and of `unmask.data.collator`
    (functions and classes, and their public methods, `MaskRateCallback`'s included) that have
    no docstring of their own. (Methods a callback overrides keep the base class's text.)"""
    import unmask
    import unmask.api as api
    import unmask.data.collator as collator

    missing = [f"unmask.{name}" for name in unmask.__all__ if not inspect.getdoc(getattr(unmask, name))]
    classes = [unmask.MaskRateCallback]
    for module in (api, collator):
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if (inspect.isfunction(value) or inspect.isclass(value)) and not (value.__doc__ or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(value):
                classes.append(value)
    for cls in classes:
        for member, attribute in vars(cls).items():
            overrides = any(member in vars(base) for base in cls.__mro__[1:])  # the base class documents it
            if not member.startswith("_") and callable(attribute) and not overrides and not (attribute.__doc__ or "").strip():
                missing.append(f"{cls.__module__}.{cls.__qualname__}.{member}")
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
