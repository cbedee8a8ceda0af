"""Stopping a run cleanly when the machine asks: SIGTERM (SLURM, Kubernetes), Ctrl-C, and SIGHUP
from the kernel when torchrun's launcher dies (`distributed.die_with_launcher`).

The first signal sets a flag and is acknowledged at once in one line on stderr. The step
in progress stops at its next micro-batch (every process agrees on it): its partial
gradients are dropped, a checkpoint of the last whole step is written, and the run exits
with 128 + the signal's number (143 for SIGTERM, 130 for SIGINT), saying how to continue.
A second SIGTERM or SIGINT does not wait: it interrupts at once, and the checkpoints written
so far stay intact (they are written whole or not at all).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint of its last whole step."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal_name(signum)
        if checkpoint is None:
            message = f"stopped by {name} before the first step finished; nothing to resume: run the same command again"
        else:
            message = f"stopped at step {step} by {name}; checkpoint {checkpoint}; continue with --resume"
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopNow(KeyboardInterrupt):
    """A second stop signal: the run ends at once (a KeyboardInterrupt, so that every `finally`
    runs and nothing catches it by accident)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StepDropped(Exception):
    """Raised inside a step when a stop was agreed before its last micro-batch: the loop
    drops the step and writes the checkpoint of the last whole one."""


def signal_name(signum: int) -> str:
    """SIGTERM, SIGINT, or SIGHUP with what it means here (`distributed.die_with_launcher`)."""
    name = signal.Signals(signum).name
    return f"{name} (the launcher died)" if signum == signal.SIGHUP else name


def _acknowledge(signum: int) -> None:
    # os.write, not print: a handler that prints while the main thread is printing raises
    # "reentrant call" inside the buffered stream.
    line = (
        f"unmask: {signal_name(signum)} received: stopping after the current micro-batch with a checkpoint of the "
        "last whole step (a second SIGTERM or Ctrl-C stops at once)\n"
    )
    try:
        os.write(2, line.encode())
    except OSError:
        pass


class StopSignals:
    """While active, SIGTERM, SIGINT and SIGHUP set `received` instead of killing the process;
    a second SIGTERM or SIGINT raises `StopNow` (SIGHUP repeats are the launcher's death told again). `announce` says whether this process acknowledges the first
    (one line, from rank 0 only)."""

    def __init__(self, announce: bool = True, acknowledge: Callable[[int], None] = _acknowledge) -> None:
        self.received: int | None = None
        self.announce = announce
        self.acknowledge = acknowledge
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP and self.received is not None:
            return  # the launcher's death is told once per thread of it that dies
        if self.received is not None:
            raise StopNow(signum)
        self.received = signum
        if self.announce:
            self.acknowledge(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
