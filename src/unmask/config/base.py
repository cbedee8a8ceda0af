"""What every config shares: validation that names the flag, YAML in and out.

`UnmaskError` lives in `unmask.errors` and is re-exported here for the commands' convenience.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from unmask.errors import UnmaskError
from unmask.storage.files import atomic_write_text

__all__ = [
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


def flag(name: str) -> str:
    """A field name as users type it: `batch_size` -> `--batch-size`."""
    return f"--{name.replace('_', '-')}"


def check_setting(condition: bool, argument: str, message: str) -> None:
    """Refuse a setting, naming the flag it came from."""
    if not condition:
        raise UnmaskError(f"{flag(argument)}: {message}")


def check_masking_probabilities(mask_prob: float, mask_replace_prob: float, random_replace_prob: float, name: str = "mask_prob") -> None:
    """Refuse masking settings that cannot describe a BERT-style draw."""
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


def from_dict(cls: type, values: dict[str, Any], source: str) -> Any:
    """Build a config from a mapping; an unknown key is an error, never silently dropped."""
    if not isinstance(values, dict):
        raise UnmaskError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UnmaskError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as e:
        raise UnmaskError(f"{source}: {e}") from None


def save_yaml(config: Any, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def load_yaml(cls: type, path: Path) -> Any:
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UnmaskError(f"{path}: cannot read config: {e}") from None
    return from_dict(cls, values, str(path))


def load_partial_yaml(cls: type, path: Path | str) -> dict[str, Any]:
    """The settings a YAML file gives for the settings class `cls`, by name, without the ones it
    leaves unset: required fields may be missing (the command line or the caller may give them),
    unknown keys are still refused, naming the file."""
    fields = [(f.name, f.type, dataclasses.field(default=None)) for f in dataclasses.fields(cls)]
    lenient = dataclasses.make_dataclass(f"{cls.__name__}FromFile", fields, kw_only=True)
    return {key: value for key, value in dataclasses.asdict(load_yaml(lenient, Path(path))).items() if value is not None}
