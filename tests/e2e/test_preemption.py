"""Stopping on a signal: acknowledged at once, honoured within one micro-batch (the partial
step dropped, the checkpoint of the last whole step), a second signal of either kind stops at
once, and a run stopped mid-step resumes to the weights of one that never stopped."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import quiet, train_config
from safetensors.torch import load_file

from unmask.config import TrainConfig
from unmask.pretrain import step as step_module
from unmask.pretrain.train import train
from unmask.runtime.preemption import StopNow, Stopped, StopSignals

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "first, second",
    [(signal.SIGTERM, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)],
)
def test_the_first_signal_is_acknowledged_and_any_second_one_stops_at_once(first, second, monkeypatch):
    heard = []
    monkeypatch.setattr(StopSignals, "REPEAT_WINDOW", 0.0)  # a second SIGTERM a while later
    with StopSignals(acknowledge=heard.append) as signals:
        os.kill(os.getpid(), first)
        assert signals.received == first and heard == [first], "acknowledged at once, in one line"
        with pytest.raises(StopNow) as now:
            os.kill(os.getpid(), second)
    assert now.value.exit_code == 128 + second
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_one_sigterm_delivered_twice_is_one_request_but_ctrl_c_twice_stops():
    """SLURM signals every process of the step and torchrun's agent forwards the signal too: a
    worker hears SIGTERM twice within milliseconds, which must not lose the checkpoint."""
    with StopSignals(acknowledge=lambda _: None) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.received == signal.SIGTERM
    with StopSignals(acknowledge=lambda _: None), pytest.raises(StopNow):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)


def test_sighup_is_the_launchers_death_only_under_torchrun_and_never_over_nohup():
    with StopSignals(acknowledge=lambda _: None):
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL, "a single process leaves SIGHUP alone"
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does
    try:
        with StopSignals(acknowledge=lambda _: None, launcher_death=True):
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_repeats_of_the_launchers_death_are_not_a_second_signal():
    heard = []
    with StopSignals(acknowledge=heard.append, launcher_death=True) as signals:
        for _ in range(3):  # one per thread of the dying launcher
            os.kill(os.getpid(), signal.SIGHUP)
        assert signals.received == signal.SIGHUP and heard == [signal.SIGHUP]
        with pytest.raises(StopNow):
            os.kill(os.getpid(), signal.SIGTERM)


def test_only_the_announcing_process_acknowledges():
    heard = []
    with StopSignals(announce=False, acknowledge=heard.append) as signals:
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.received == signal.SIGTERM and heard == []


def config(store_dir, tiny_model_dir, out, **overrides) -> TrainConfig:
    """test_train's tiny run, in steps of six micro-batches, checkpointed every two steps."""
    values = dict(batch_size=2, grad_accum=6, eval_every=0, checkpoint_every=2, precision="fp32")
    return train_config(store_dir, tiny_model_dir, out, **{**values, **overrides})


def test_a_signal_mid_step_drops_that_step_and_the_resumed_run_ends_bit_identical(store_dir, tiny_model_dir, tmp_path, monkeypatch):
    straight = config(store_dir, tiny_model_dir, tmp_path / "straight")
    train(straight, progress=False, echo=quiet)

    forwards_after_signal = []
    real_forward = step_module.forward_backward_or_drop

    def counting_forward_backward(run, drawn, signals, within_step=None):
        def hook(done, of):
            if run.state.step == 3 and done == 2:  # the 4th step, two micro-batches in: a signal arrives
                os.kill(os.getpid(), signal.SIGTERM)
            if signals.received:
                forwards_after_signal.append(done)
            if within_step is not None:
                within_step(done, of)

        return real_forward(run, drawn, signals, hook)

    monkeypatch.setattr(step_module, "forward_backward_or_drop", counting_forward_backward)
    stopped_run = config(store_dir, tiny_model_dir, tmp_path / "stopped")
    with pytest.raises(Stopped) as stopped:
        train(stopped_run, progress=False, echo=quiet)
    assert forwards_after_signal == [2], "no micro-batch starts after the signal"
    assert stopped.value.step == 3 and stopped.value.exit_code == 143, "the partial 4th step is dropped"
    assert stopped.value.checkpoint.name == "step-00000003" and (stopped.value.checkpoint / "state.json").is_file()
    monkeypatch.undo()

    resumed = train(dataclasses.replace(stopped_run, resume=True), progress=False, echo=quiet)
    assert resumed["steps"] == 6
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "stopped" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "the dropped step is redone exactly"


def test_a_stop_on_a_checkpointed_step_keeps_that_checkpoint_and_one_before_any_step_writes_none(
    store_dir, tiny_model_dir, tmp_path, monkeypatch
):
    real_forward = step_module.forward_backward_or_drop
    stop_at = {}

    def signalling(run, drawn, signals, within_step=None):
        def hook(done, of):
            if run.state.step == stop_at["step"] and done == 1:
                os.kill(os.getpid(), signal.SIGTERM)

        return real_forward(run, drawn, signals, hook)

    monkeypatch.setattr(step_module, "forward_backward_or_drop", signalling)
    stop_at["step"] = 2  # step 2 was just checkpointed (--checkpoint-every 2)
    with pytest.raises(Stopped) as stopped:
        train(config(store_dir, tiny_model_dir, tmp_path / "on-checkpoint"), progress=False, echo=quiet)
    assert stopped.value.step == 2 and stopped.value.checkpoint.name == "step-00000002"
    stop_at["step"] = 0
    with pytest.raises(Stopped) as stopped:
        train(config(store_dir, tiny_model_dir, tmp_path / "first"), progress=False, echo=quiet)
    assert stopped.value.checkpoint is None and "nothing to resume" in str(stopped.value)
    assert not (tmp_path / "first" / "checkpoints").exists() or not any((tmp_path / "first" / "checkpoints").iterdir())


def test_a_long_step_stops_within_a_micro_batch_under_the_command(store_dir, tiny_model_dir, tmp_path):
    """The issue's case: a step of many micro-batches and a SIGTERM; acknowledged at once, ended
    long before the step could have finished, exit 143."""
    out = tmp_path / "run"
    args = ["--model", str(tiny_model_dir), "--data", str(store_dir), "--out", str(out), "--seq-len", "32"]
    args += ["--batch-size", "1", "--grad-accum", "20000", "--max-steps", "2", "--progress", "lines", "--precision", "fp32"]
    process = subprocess.Popen(
        [sys.executable, "-m", "unmask", "train", *args], stderr=subprocess.PIPE, text=True, stdout=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    started = []
    while not any(line.startswith("training ") for line in started):
        assert time.time() < deadline and process.poll() is None, "".join(started)
        started.append(process.stderr.readline())
    time.sleep(2)  # well into the first step, which takes minutes
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    took = time.monotonic() - signalled
    assert process.returncode == 143, rest
    assert "SIGTERM received: stopping after the current micro-batch" in rest
    assert "stopped by SIGTERM before the first step finished" in rest and "Traceback" not in rest
    assert took < 20, f"{took:.1f}s from the signal to the exit"
