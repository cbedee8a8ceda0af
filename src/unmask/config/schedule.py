"""Schedules as small pure functions: learning rate, masking rate, and time budgets.

A run's progress is a share of its length in [0, 1]: steps done over the planned steps, or
training seconds spent over a `--time-budget`, whichever is further along. Both schedules
read it, so a run planned by time decays its learning rate and its masking rate over the
time it was given.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def decay_shape(progress: float, schedule: str) -> float:
    """1 at the start of the decay, 0 at its end: `linear`, `cosine`, `1-sqrt` (the decay of a
    warmup-stable-decay schedule) or `constant` (always 1)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "1-sqrt":
        return 1.0 - math.sqrt(progress)
    raise ValueError(f"unknown schedule {schedule!r}")


def after_warmup(share: float, schedule: str, decay_fraction: float, min_ratio: float) -> float:
    """The learning rate as a share of the peak, `share` of the way from the end of warmup to
    the end of the run. `wsd` (warmup-stable-decay, ModernBERT's trapezoid) holds the peak
    and decays with 1-sqrt over the last `decay_fraction` of the run; the others decay over all of it."""
    if schedule == "wsd":
        start = 1.0 - decay_fraction
        if share < start:
            return 1.0
        return min_ratio + (1.0 - min_ratio) * decay_shape((share - start) / max(decay_fraction, 1e-12), "1-sqrt")
    return min_ratio + (1.0 - min_ratio) * decay_shape(share, schedule)


def warming_up(done: float, warmup_start: float) -> float:
    """The share of the peak at `done` (0 to 1) of a linear warmup that begins at `warmup_start`."""
    return warmup_start + (1.0 - warmup_start) * done


def learning_rate(
    step: int,
    total_steps: int,
    warmup_steps: int,
    peak: float,
    schedule: str,
    min_ratio: float = 0.0,
    decay_fraction: float = 0.1,
    warmup_start: float = 0.0,
) -> float:
    """Linear warmup from `warmup_start * peak` to `peak` over steps, then the decay of `schedule`
    to `min_ratio * peak`."""
    if step < warmup_steps:
        return peak * warming_up((step + 1) / warmup_steps, warmup_start)
    decay_steps = max(1, total_steps - warmup_steps)
    # For wsd the decay is a share of the whole run, so it does not shrink with a long warmup.
    fraction = min(1.0, decay_fraction * total_steps / decay_steps)
    return peak * after_warmup((step - warmup_steps) / decay_steps, schedule, fraction, min_ratio)


def learning_rate_at(
    progress: float,
    warmup_share: float,
    peak: float,
    schedule: str,
    min_ratio: float = 0.0,
    decay_fraction: float = 0.1,
    warmup_start: float = 0.0,
) -> float:
    """The same schedule over a share of the run (a time budget) instead of steps."""
    if progress < warmup_share:
        return peak * warming_up(progress / warmup_share, warmup_start)
    rest = max(1.0 - warmup_share, 1e-12)
    return peak * after_warmup((progress - warmup_share) / rest, schedule, min(1.0, decay_fraction / rest), min_ratio)


def mask_rate(progress: float, start: float, end: float | None, schedule: str) -> float:
    """The training masking rate at `progress`: from `start` to `end` (e.g. 0.3 -> 0.15)."""
    if end is None or schedule == "constant":
        return start
    return end + (start - end) * decay_shape(progress, schedule)


def parse_duration(text: str) -> float:
    """Seconds in `30m`, `2h`, `1d`, `90s` or `1h30m`; ValueError for anything else."""
    cleaned = text.strip().replace(" ", "")
    parts = _DURATION.findall(cleaned)
    if not parts or "".join(number + unit for number, unit in parts).lower() != cleaned.lower():
        raise ValueError(f"'{text}' is not a duration like 30m, 2h, 1d or 1h30m")
    seconds = sum(float(number) * _UNITS[unit.lower()] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"'{text}' is not a positive duration")
    return seconds


def run_progress(step: int, total_steps: int | None, spent: float, budget: float | None) -> float:
    """How far along a run is: the further of its steps and its time budget."""
    by_steps = step / total_steps if total_steps else 0.0
    by_time = spent / budget if budget else 0.0
    return min(1.0, max(by_steps, by_time))
