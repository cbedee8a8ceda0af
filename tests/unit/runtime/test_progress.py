"""The progress display, throughput and the metrics log."""

import json
import re
import time

from unmask.runtime.metrics import MetricsLog
from unmask.runtime.progress import Progress, Throughput, format_duration
from unmask.storage.rundir import RunDir

LOGGED = {"loss": 4.25, "lr": 3e-4, "tokens_per_s": 1234.5}


def test_lines_mode_prints_plain_lines_with_step_loss_rate_and_eta():
    lines = []
    progress = Progress("lines", total=4, initial=0, echo=lines.append)
    for step in range(1, 5):
        progress.step(step, LOGGED if step % 2 == 0 else None)
    assert len(lines) == 2 and lines[0].startswith("step 2/4 (50%)  loss 4.2500  lr 3.00e-04  1,234 tok/s")
    assert "ETA" in lines[0] and not any("\r" in line for line in lines)


def test_an_echoed_line_never_glues_onto_the_bar(capsys):
    seen = []
    progress = Progress("bar", total=10, initial=0, echo=lambda line: (seen.append(line), print(line, file=__import__("sys").stderr)))
    progress.step(1, LOGGED)
    progress.echo("step 1: eval loss 4.5279")
    progress.step(2)
    progress.close()
    segments = re.split(r"[\r\n]", capsys.readouterr().err)
    assert "step 1: eval loss 4.5279" in segments, segments
    assert seen == ["step 1: eval loss 4.5279"]


def test_a_disabled_display_shows_nothing_and_auto_picks_lines_off_a_terminal(capsys):
    lines = []
    quiet = Progress("lines", total=4, initial=0, echo=lines.append, enabled=False)
    quiet.step(1, LOGGED)
    quiet.echo("x")
    assert lines == [] and quiet.mode == "none"
    assert Progress("auto", total=4, initial=0, echo=lines.append).mode == "lines", "pytest's stderr is not a terminal"


def test_a_line_with_speed_numbers_shows_mfu_data_wait_padding_and_memory():
    lines = []
    progress = Progress("lines", total=4, initial=0, echo=lines.append)
    progress.step(2, {**LOGGED, "mfu": 0.123, "data_wait": 0.04, "padding": 0.25, "memory_gib": 1.5})
    assert "1,234 tok/s  MFU 12.3%  data 4%  pad 25%  mem 1.50 GiB  elapsed" in lines[0]


def test_measure_turns_a_settles_counts_into_the_log_lines_speed():
    speed = Throughput(world_size=2, peak_flops=1e9)
    time.sleep(0.1)
    numbers = speed.measure({"loss": 2.0, "tokens": 300, "slots": 400, "flops": 3e7, "data_seconds": 0.05, "memory": 2**30})
    assert numbers["loss"] == 2.0 and "tokens" not in numbers and "slots" not in numbers
    assert numbers["tokens_per_s_per_device"] == numbers["tokens_per_s"] / 2 and 0 < numbers["tokens_per_s"] <= 3000
    assert numbers["flops_per_token"] == 1e5 and numbers["padding"] == 0.25 and numbers["memory_gib"] == 1.0
    assert 0 < numbers["mfu"] <= 0.15  # 3e7 FLOPs in 0.1 s or more, over 2 x 1e9
    assert 0 < numbers["data_wait"] <= 0.5


def test_an_mfu_over_100_percent_measures_the_peak_again_and_is_never_reported():
    # A peak measured on a busy machine and cached sits below what a quiet run reaches.
    asked = []

    def remeasure():
        asked.append(True)
        return 8e3

    speed = Throughput(world_size=2, peak_flops=1e3, remeasure=remeasure)
    assert speed.mfu(8e3) == 0.5 and len(asked) == 1, "per device 4e3 went past 1e3: measured again, 8e3"
    assert speed.mfu(8e3) == 0.5 and len(asked) == 1, "the new peak holds"
    stuck = Throughput(world_size=1, peak_flops=1e3, remeasure=lambda: 2e3)
    assert stuck.mfu(5e3) is None, "still past the peak: no number rather than a wrong one"
    assert Throughput(peak_flops=1e3).mfu(5e3) is None and Throughput().mfu(5e3) is None
    assert Throughput(peak_flops=1e3).mfu(5e2) == 0.5


def test_throughput_leaves_out_paused_time():
    speed = Throughput()
    speed.add(1000)
    with speed.paused():
        time.sleep(0.2)
    assert speed.rate_and_restart() > 1000 / 0.15


def test_a_resumed_metrics_log_drops_later_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 5}\n{"step": 2, "loss": 4}\n{"step": 3, "loss": 3}\n{"step": 4, "lo')
    log = MetricsLog(RunDir(tmp_path), resume_step=2)
    log.write({"step": 3, "loss": 2.5})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    MetricsLog(RunDir(tmp_path / "other"), resume_step=None, enabled=False).write({"step": 1})
    assert not (tmp_path / "other").exists()


def test_durations_read_like_a_person_writes_them():
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m 05s", "1h 02m"]


def test_a_long_step_shows_its_micro_batches_in_a_log_at_most_every_few_seconds():
    lines = []
    display = Progress("lines", total=10, initial=2, echo=lines.append)
    display.within_every = 0.0
    display.within_step(3, 8)
    display.within_every = 3600.0
    display.within_step(4, 8)  # too soon after the last line
    assert lines == ["step 3/10: micro-batch 3/8"]
    quiet_bar = Progress("none", total=10, initial=0, echo=lines.append)
    quiet_bar.within_every = 0.0
    quiet_bar.within_step(1, 8)
    assert lines == ["step 3/10: micro-batch 3/8"]


def test_a_notebook_gets_the_widget_bar_where_it_can_and_plain_lines_otherwise(monkeypatch):
    import sys
    import types

    from unmask.runtime import progress

    assert progress.notebook_widgets() is False, "not in a kernel"
    ZMQInteractiveShell = type("ZMQInteractiveShell", (), {})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell()))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # not installed
    assert progress.notebook_widgets() is False and Progress("auto", 10, 0, lambda _: None).mode in ("lines", "bar")
    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    assert progress.notebook_widgets() is True
    terminal = type("TerminalInteractiveShell", (), {})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal()))
    assert progress.notebook_widgets() is False, "IPython in a terminal is a terminal"
