"""Schedules as small pure functions: learning rate, masking rate, and time budgets.

A run's progress is a share of its length in [0, 1]: steps done over the planned steps, or
training seconds spent over a `--time-budget`, whichever is further along. Both schedules
read it, so a run planned by time decays its learning rate and its masking rate over the
time it was given.
"""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(seconds?|secs?|s|minutes?|mins?|m|hours?|hrs?|h|days?|d)", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
"""By the unit's first letter: 90s, 30m (30min, 30 minutes), 2h (2 hours), 1d."""


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


def warmup_warnings(total_steps: int | None, warmup_steps: int, peak: float, schedule: str, **shape) -> list[str]:
    """What a user should hear when the warmup does not fit the run: one that outlasts it (the
    peak is never reached, nothing decays), or one that leaves less of the run to decay than it
    takes. `shape`: `learning_rate`'s min_ratio, decay_fraction, warmup_start."""
    if not total_steps or not warmup_steps:
        return []
    if warmup_steps >= total_steps:
        highest = learning_rate(total_steps - 1, total_steps, warmup_steps, peak, schedule, **shape)
        return [
            f"warmup of {warmup_steps:,} steps outlasts the run's {total_steps:,}: the learning rate never passes {highest:.3g} "
            f"({highest / peak:.1%} of the {peak:g} peak) and never decays; lower --warmup-steps or use --warmup-fraction"
        ]
    if warmup_steps > total_steps / 2:
        return [
            f"warmup of {warmup_steps:,} steps is {warmup_steps / total_steps:.0%} of the run's {total_steps:,}: "
            f"{total_steps - warmup_steps:,} steps are left to decay in"
        ]
    return []


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
    seconds = sum(float(number) * _UNITS[unit[0].lower()] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"'{text}' is not a positive duration")
    return seconds


def run_progress(step: int, total_steps: int | None, spent: float, budget: float | None) -> float:
    """How far along a run is: the further of its steps and its time budget."""
    by_steps = step / total_steps if total_steps else 0.0
    by_time = spent / budget if budget else 0.0
    return min(1.0, max(by_steps, by_time))
