"""What every config shares: validation that names the flag, YAML in and out.

`UnmaskError` lives in `unmask.errors` and is re-exported here for the commands' convenience.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unmask.errors import UnmaskError
from unmask.storage.files import atomic_write_text

__all__ = [
    "Settings",
    "UnmaskError",
    "check_masking_probabilities",
    "check_setting",
    "flag",
    "from_dict",
    "load_partial_yaml",
    "load_yaml",
    "save_yaml",
    "to_dict",
]


_NAMED: dict[int, tuple[frozenset[str], bool]] = {}
"""id of a live settings object -> (the fields its constructor was named, whether `resolve` made it).
Kept beside the objects, not in them, so that `TrainConfig(**config.__dict__)` still works."""


class Settings:
    """Base of every settings dataclass: it remembers which fields its constructor was named
    or were assigned afterwards (`given_names`), so that a recipe never takes the place of a
    value the caller chose, even one equal to the default. (`dataclasses.replace` names every field; the resolver keeps the
    names of what it was given, so call it with keyword arguments rather than a replaced object.)"""

    def __new__(cls, *args, **kwargs):
        import weakref

        self = super().__new__(cls)
        _NAMED[id(self)] = (frozenset(kwargs), False)  # every settings class is kw_only
        weakref.finalize(self, _NAMED.pop, id(self), None)
        return self

    def __setattr__(self, name: str, value) -> None:
        # After construction (the field is in the object already), an assignment names the
        # field, as a constructor argument does, and the object needs resolving again.
        if name in self.__dict__ and id(self) in _NAMED:
            _NAMED[id(self)] = (_NAMED[id(self)][0] | {name}, False)
        object.__setattr__(self, name, value)

    def __getstate__(self):  # a copy or a pickle keeps what the original was named
        return {"fields": dict(self.__dict__), "named": given_names(self)}

    def __setstate__(self, state) -> None:
        self.__dict__.update(state["fields"])
        _NAMED[id(self)] = (frozenset(state["named"]), False)

    @classmethod
    def bounds(cls) -> dict[str, Bound]:
        """Every field's bound, as the classes it is made of declare them (`BOUNDS`), a
        subclass's word last."""
        merged: dict[str, Bound] = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("BOUNDS", {}))
        return merged

    @classmethod
    def sections(cls) -> dict[str, frozenset[str]]:
        """The sections this settings class is made of (`SECTION` of each), and their fields."""
        found = {}
        for klass in cls.__mro__:
            name = vars(klass).get("SECTION")
            if name is not None:
                found[name] = frozenset(vars(klass).get("__annotations__", {})) - {"SECTION", "BOUNDS"}
        return found


def given_names(settings: Any) -> frozenset[str]:
    """The fields a settings object's constructor was named (every field for an object it does
    not know, such as a copy)."""
    known = _NAMED.get(id(settings))
    return known[0] if known is not None else frozenset(f.name for f in dataclasses.fields(settings))


def is_resolved(settings: Any) -> bool:
    """Whether `config.resolve` made this object (so handing it on resolves nothing again)."""
    known = _NAMED.get(id(settings))
    return known is not None and known[1]


def mark_resolved(settings: Any, named: frozenset[str]) -> None:
    """What `config.resolve` records of the object it made: the names the caller gave."""
    if id(settings) in _NAMED:
        _NAMED[id(settings)] = (frozenset(named), True)


def flag(name: str) -> str:
    """A field name as users type it: `batch_size` -> `--batch-size`."""
    return f"--{name.replace('_', '-')}"


def check_setting(condition: bool, argument: str, message: str) -> None:
    """Refuse a setting, naming the flag it came from."""
    if not condition:
        raise UnmaskError(f"{flag(argument)}: {message}")


@dataclass(frozen=True)
class Bound:
    """A numeric field's allowed range, checked by `check_fields`; None (an unset optional) passes."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    wording: str = ""

    def problem(self, value) -> str | None:
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return f"must {self.wording}, got {value}" if too_low or too_high else None


def at_least(low: int) -> Bound:
    return Bound(low=low, wording=f"be at least {low}")


def positive() -> Bound:
    return Bound(low=0, low_open=True, wording="be positive")


def not_negative() -> Bound:
    return Bound(low=0, wording="not be negative")


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Bound:
    """[low, high] by default; `low_open`/`high_open` leave an end out, as the message then says."""
    wording = f"be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Bound(low, high, low_open, high_open, wording)


def check_fields(settings: Any, bounds: dict[str, Bound]) -> None:
    """Refuse the first field outside its bound, naming its flag (`--lr: must be positive, got 0`)."""
    for name, bound in bounds.items():
        value = getattr(settings, name)
        if value is not None and (problem := bound.problem(value)) is not None:
            raise UnmaskError(f"{flag(name)}: {problem}")


LOOP_BOUNDS = {
    "warmup_fraction": in_range(0, 1, high_open=True),
    "dropout": in_range(0, 1, high_open=True),
    "seed": not_negative(),
}
"""Bounds of the settings both training loops have outside the optimizer section (which has
its own, `sections.OptimizerSection.BOUNDS`): warmup, dropout, the seed."""


def check_masking_probabilities(
    mask_prob: float, mask_replace_prob: float, random_replace_prob: float, name: str = "mask_prob", closed: bool = False
) -> None:
    """Refuse masking settings that cannot describe a BERT-style draw. `closed` lets `mask_prob`
    be exactly 0 or 1 (Hugging Face's collator allows them; a training run never wants them)."""
    if closed:
        check_setting(0.0 <= mask_prob <= 1.0, name, f"must be between 0 and 1, got {mask_prob}")
    else:
        check_setting(0.0 < mask_prob < 1.0, name, f"must be strictly between 0 and 1, got {mask_prob}")
    check_setting(0.0 <= mask_replace_prob <= 1.0, "mask_replace_prob", f"must be in [0, 1], got {mask_replace_prob}")
    check_setting(0.0 <= random_replace_prob <= 1.0, "random_replace_prob", f"must be in [0, 1], got {random_replace_prob}")
    check_setting(
        mask_replace_prob + random_replace_prob <= 1.0 + 1e-9,
        "random_replace_prob",
        f"mask_replace_prob + random_replace_prob must be at most 1, got {mask_replace_prob} + {random_replace_prob}",
    )


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def flatten_sections(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """A file's settings, flat: those listed under a section's name (`optimizer: {lr: 1e-3}`)
    lifted out of it. A key under a section must be that section's; a setting given twice is
    refused."""
    if not isinstance(values, dict):
        return values  # `from_dict` says what the file should hold
    sections = cls.sections() if isinstance(cls, type) and issubclass(cls, Settings) else {}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, dict):
            strays = sorted(set(value) - sections[key])
            if strays:
                raise UnmaskError(
                    f"{source}: {', '.join(strays)} under '{key}:' is not a setting of that section{did_you_mean(strays[0], sections[key])}"
                )
            pairs = value.items()
        else:
            pairs = [(key, value)]
        for name, item in pairs:
            if name in flat:
                raise UnmaskError(f"{source}: '{name}' is given twice (flat and under its section)")
            flat[name] = item
    return flat


def from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """Build a config from a mapping, flat or by sections; an unknown key is an error, never
    silently dropped."""
    if not isinstance(values, dict):
        raise UnmaskError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    values = flatten_sections(cls, values, source)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UnmaskError(f"{source}: unknown setting(s) {', '.join(unknown)}{did_you_mean(unknown[0], known)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise UnmaskError(f"{source}: {e}") from None


def did_you_mean(name: str, known) -> str:
    """ "; did you mean 'x'?" for the closest known name, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def save_yaml(config: Any, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UnmaskError(f"{path}: cannot read config: {e}") from None


def load_yaml(cls: type, path: Path) -> Any:
    return from_dict(cls, _read_yaml(Path(path)), str(path))


def load_partial_yaml(cls: type, path: Path | str) -> dict[str, Any]:
    """The settings a YAML file gives for the settings class `cls`, by name, without the ones it
    leaves unset: required fields may be missing (the command line or the caller may give them),
    unknown keys are still refused, naming the file."""
    fields = [(f.name, f.type, dataclasses.field(default=None)) for f in dataclasses.fields(cls)]
    lenient = dataclasses.make_dataclass(f"{cls.__name__}FromFile", fields, kw_only=True)
    values = flatten_sections(cls, _read_yaml(Path(path)), str(path))
    return {key: value for key, value in dataclasses.asdict(from_dict(lenient, values, str(path))).items() if value is not None}
