"""One resolver for a command's settings, under the CLI and the Python API alike.

A command's settings come from up to four places, each over the one before: the settings
class's defaults, a YAML file (`--config`, or a run's own config.yaml on `--resume`), a recipe
(`--recipe`, which stands in for the defaults), and what the caller named (flags on the command
line; keyword arguments, or the fields a typed settings object was constructed with, in Python).
`resolve` merges them once, checks every value's kind with the messages the command line
prints, and marks the result resolved, so that handing it on (CLI -> API) resolves nothing again.
"""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from unmask.config.base import did_you_mean, flag, given_names, is_resolved, mark_resolved
from unmask.config.recipes import RECIPES, with_recipe
from unmask.errors import COMMAND_LINE, UnmaskError, UsageError, option
from unmask.storage.rundir import RunDir

S = TypeVar("S")
_UNION = type(int | None)


def _quiet(_: str) -> None:
    pass


def defaults_of(cls: type) -> dict[str, Any]:
    """Each field's default, where it has one."""
    found = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


def _members(hint) -> list:
    """The kinds a hint allows, without None (`int | None` -> [int])."""
    if typing.get_origin(hint) in (typing.Union, _UNION):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _scalar(name: str, kind, value):
    """`value` as a `kind` (int, float, bool, str, a Literal), or a UsageError naming the flag."""
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise UsageError(f"{flag(name)}: '{value}' is not one of {', '.join(map(str, choices))}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{flag(name)}: '{value}' is not True or False")
    if kind in (int, float):
        if isinstance(value, bool):  # True is an int to Python, never a count to a user
            raise UsageError(f"{flag(name)}: '{value}' is not {'a whole number' if kind is int else 'a number'}")
        if kind is int and isinstance(value, numbers.Integral):  # numpy's integers too
            return int(value)
        if kind is int and isinstance(value, float):  # 2.5 steps is refused, not rounded (nor 3.0: the CLI refuses it too)
            raise UsageError(f"{flag(name)}: '{value}' is not a whole number")
        if isinstance(value, str):
            try:
                return kind(value)
            except ValueError:
                raise UsageError(f"{flag(name)}: '{value}' is not {'a whole number' if kind is int else 'a number'}") from None
        if isinstance(value, numbers.Real):
            return kind(value)
        raise UsageError(f"{flag(name)}: '{value}' is not {'a whole number' if kind is int else 'a number'}")
    if kind is str:
        if isinstance(value, (str, Path)):
            return str(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):  # `peak_tflops=400`, as the command line reads "400"
            return str(value)
        raise UsageError(f"{flag(name)}: {value!r} is not text")
    return value


def coerce(cls: type, name: str, value):
    """A setting's value checked and converted as the command line does it: one string where a
    list is expected is one item (`data="runs/store"`), a number given as text is read, a float
    where a whole number is expected is refused, a choice must be one of its choices."""
    hint = typing.get_type_hints(cls)[name]
    if value is None:
        return None
    members = _members(hint)
    if len(members) != 1:  # a union of several kinds: the class's own checks decide
        return value
    kind = members[0]
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        items = [value] if isinstance(value, (str, Path)) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"{flag(name)}: {value!r} is not a list")
        return [_scalar(name, item, v) for v in items]
    return _scalar(name, kind, value)


def check_names(cls: type, names) -> None:
    """Refuse a name that is not a setting of `cls`, with the closest one."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise UnmaskError(f"unknown setting '{unknown[0]}' for {cls.__name__}{did_you_mean(unknown[0], known)}")


def resolve(
    cls: type[S],
    given: S | None = None,
    values: dict[str, Any] | None = None,
    *,
    from_file: dict[str, Any] | None = None,
    file: str | None = None,
    echo: Callable[[str], None] = _quiet,
) -> S:
    """The settings of one call: the defaults, then `from_file` (the YAML file `file`'s values),
    then a recipe, then what the caller named: `given`'s constructor arguments and `values`.
    A `given` already resolved, with nothing on top, is returned as it is."""
    values = dict(values or {})
    check_names(cls, values)
    if given is not None:
        if not isinstance(given, cls):
            raise UnmaskError(f"expected a {cls.__name__}, got {type(given).__name__}")
        if is_resolved(given) and not values:
            return given
        base = {f.name: coerce(cls, f.name, getattr(given, f.name)) for f in dataclasses.fields(given)}
        named = {name: base[name] for name in given_names(given)}
    else:
        named, base = {}, defaults_of(cls)
    named.update({key: coerce(cls, key, value) for key, value in values.items()})
    file_values = {}
    for key, value in (from_file or {}).items():
        try:
            file_values[key] = coerce(cls, key, value)
        except UsageError as e:
            raise UnmaskError(f"{file}: {e}" if file else str(e)) from None
    merged = {**base, **file_values, **named}
    if merged.get("recipe") in RECIPES:  # an unknown name is refused by the settings class, with the list
        merged, notes = with_recipe(merged, set(named), file_values)
        for note in notes:
            echo(note)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if merged.get(f.name) is None and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        positional = getattr(cls, "POSITIONAL", ())
        shown = [name if name in positional else flag(name) for name in missing]
        where = "on the command line or in --config" if COMMAND_LINE.get() else "by name"
        raise UnmaskError(f"{', '.join(shown)}: required (give {'them' if len(shown) > 1 else 'it'} {where})")
    settings = cls(**merged)
    mark_resolved(settings, frozenset(named) | frozenset(file_values))
    return settings


def resume_file(out: str, data_given: bool) -> str | None:
    """The run's own config.yaml that `train --out RUN --resume` reads in place of --config;
    None when RUN has none but the call gives the stores to start a run (a requeued job's first
    start). Without either there is no run to resume: said so, rather than "--data: required"."""
    saved = RunDir(out).config
    if saved.is_file():
        return str(saved)
    if not data_given:
        kind = "no such folder" if not Path(out).exists() else f"no {saved.name} in it"
        raise UnmaskError(f"{option('out', out)}: no run to resume here ({kind}); give data (and a model) to start one")
    return None


def split_positionals(cls: type, args: tuple, config) -> tuple[Any, dict[str, Any]]:
    """A function's positional arguments as its command's: `prepare("docs/", out=...)` is
    `sources=["docs/"]`; a settings object may come first instead (`prepare(PrepareConfig(...))`)."""
    if args and isinstance(args[0], cls):
        if config is not None:
            raise UnmaskError(f"{cls.__name__} given twice (positionally and as config=)")
        config, args = args[0], args[1:]
    names = getattr(cls, "POSITIONAL", ())
    if len(args) > len(names):
        takes = ", ".join(names) or "no positional arguments"
        raise UnmaskError(f"{len(args)} positional arguments given; {cls.__name__} takes {takes} (the rest by name)")
    return config, dict(zip(names, args))
