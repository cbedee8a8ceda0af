"""Learning-rate and masking-rate schedules, durations and run progress."""

import math

import pytest

from unmask.config.schedule import (
    decay_shape,
    learning_rate,
    learning_rate_at,
    mask_rate,
    parse_duration,
    run_progress,
    warmup_warnings,
)


def test_learning_rate_warms_up_then_decays_to_the_floor():
    lrs = [learning_rate(s, 100, 10, 1.0, "linear") for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[55] == pytest.approx(0.5) and lrs[99] == pytest.approx(1 / 90)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    cosine = [learning_rate(s, 100, 0, 2.0, "cosine", min_ratio=0.1) for s in (0, 50, 100)]
    assert cosine == pytest.approx([2.0, 1.1, 0.2])
    assert learning_rate(70, 100, 10, 3.0, "constant") == 3.0


def test_a_time_budget_schedule_follows_the_share_of_time_spent():
    assert learning_rate_at(0.05, 0.1, 1.0, "linear") == pytest.approx(0.5)
    assert learning_rate_at(0.1, 0.1, 1.0, "linear") == pytest.approx(1.0)
    assert learning_rate_at(0.55, 0.1, 1.0, "linear") == pytest.approx(0.5)
    assert learning_rate_at(1.0, 0.1, 1.0, "cosine", min_ratio=0.2) == pytest.approx(0.2)
    assert learning_rate_at(0.5, 0.0, 1.0, "cosine") == pytest.approx(0.5)


@pytest.mark.parametrize("schedule,middle", [("linear", 0.225), ("cosine", 0.225), ("constant", 0.3)])
def test_masking_rate_moves_from_start_to_end(schedule, middle):
    assert mask_rate(0.0, 0.3, 0.15, schedule) == pytest.approx(0.3)
    assert mask_rate(0.5, 0.3, 0.15, schedule) == pytest.approx(middle)
    assert mask_rate(1.0, 0.3, 0.15, schedule) == pytest.approx(0.3 if schedule == "constant" else 0.15)
    assert mask_rate(0.25, 0.3, None, schedule) == 0.3
    if schedule == "cosine":
        assert mask_rate(0.25, 0.3, 0.15, "cosine") > mask_rate(0.25, 0.3, 0.15, "linear"), "cosine lingers at the start"


def test_durations():
    assert [parse_duration(t) for t in ("30m", "2h", "1d", "90s", "1h30m", "0.5h", "2H")] == [1800, 7200, 86400, 90, 5400, 1800, 7200]
    assert [parse_duration(t) for t in ("5 min", "30 minutes", "2 hours", "1hr 30mins", "45 sec")] == [300, 1800, 7200, 5400, 45]
    for bad in ("30", "m", "1y", "-5m", "0m", "5 mins later", "5 mn", ""):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_progress_is_the_further_of_steps_and_time():
    assert run_progress(50, 100, 10, 60) == 0.5
    assert run_progress(10, 100, 30, 60) == 0.5
    assert run_progress(10, None, 15, 60) == 0.25
    assert run_progress(200, 100, 0, None) == 1.0
    assert (
        decay_shape(0.5, "cosine") == pytest.approx(0.5) and decay_shape(2.0, "linear") == 0.0 and math.isclose(decay_shape(0, "linear"), 1)
    )


def test_warmup_stable_decay_holds_the_peak_then_decays_with_one_minus_sqrt():
    lrs = [learning_rate(s, 100, 10, 1.0, "wsd", decay_fraction=0.2) for s in range(101)]
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == lrs[79] == 1.0, "flat from the end of warmup to the decay"
    assert lrs[80] == pytest.approx(1.0)
    assert lrs[85] == pytest.approx(1 - (5 / 20) ** 0.5, abs=1e-9)
    assert lrs[100] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])), "never rises after warmup"
    # The same shape over a time budget's share of the run.
    assert learning_rate_at(0.5, 0.1, 1.0, "wsd", decay_fraction=0.2) == 1.0
    assert learning_rate_at(0.9, 0.1, 1.0, "wsd", decay_fraction=0.2) == pytest.approx(1 - 0.5**0.5)


def test_a_warmup_may_start_above_zero_as_crammings_triangle_does():
    assert learning_rate(0, 100, 75, 1.0, "linear", warmup_start=0.25) == pytest.approx(0.25 + 0.75 / 75)
    assert learning_rate(74, 100, 75, 1.0, "linear", warmup_start=0.25) == pytest.approx(1.0)
    assert learning_rate(100, 100, 75, 1.0, "linear", warmup_start=0.25) == pytest.approx(0.0)
    assert learning_rate_at(0.0, 0.75, 1.0, "linear", warmup_start=0.25) == pytest.approx(0.25)


def test_a_warmup_that_does_not_fit_the_run_is_said_with_the_peak_it_reaches():
    """The issue's case: ModernBERT's 636 warmup steps in a 60-step run reach 7.55e-05 of the 8e-4 peak."""
    (outlasts,) = warmup_warnings(60, 636, 8e-4, "wsd")
    assert "outlasts the run's 60" in outlasts and "never passes 7.55e-05 (9.4% of the 0.0008 peak)" in outlasts
    assert learning_rate(59, 60, 636, 8e-4, "wsd") == pytest.approx(7.547e-05, rel=1e-3)
    (most,) = warmup_warnings(100, 70, 1e-3, "linear")
    assert "70% of the run's 100: 30 steps are left to decay in" in most
    assert warmup_warnings(100, 6, 1e-3, "linear") == [] and warmup_warnings(None, 600, 1e-3, "linear") == []
