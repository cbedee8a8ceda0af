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
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from unmask.errors import option


class Stopped(Exception):
    """Training stopped on a signal after writing a checkpoint of its last whole step."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal_name(signum)
        if checkpoint is None:
            message = f"stopped by {name} before the first step finished; nothing to resume: run the same command again"
        else:
            message = f"stopped at step {step} by {name}; checkpoint {checkpoint}; continue with {option('resume')}"
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
    """While active, SIGTERM, SIGINT (and under torchrun SIGHUP) set `received` instead of
    killing the process; another signal after that raises `StopNow`, except SIGHUP repeats (the
    launcher's death told again) and SIGTERM again within `REPEAT_WINDOW` seconds. `announce` says whether this process acknowledges the first
    (one line, from rank 0 only)."""

    REPEAT_WINDOW = 2.0
    """Seconds within which SIGTERM again is the same request delivered twice (SLURM signals
    every process of a step, and torchrun's agent forwards it to its workers too). A second
    Ctrl-C always stops at once."""

    def __init__(self, announce: bool = True, acknowledge: Callable[[int], None] = _acknowledge, launcher_death: bool = False) -> None:
        self.received: int | None = None
        self.received_at = 0.0
        self.announce = announce
        self.acknowledge = acknowledge
        self.launcher_death = launcher_death
        """Whether SIGHUP means the launcher died (`distributed.die_with_launcher`, under torchrun only)."""
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            again = signum == self.received == signal.SIGTERM and time.monotonic() - self.received_at < self.REPEAT_WINDOW
            if signum == signal.SIGHUP or again:
                return  # the launcher's death told once per thread of it, or one request delivered twice
            raise StopNow(signum)
        self.received, self.received_at = signum, time.monotonic()
        if self.announce:
            self.acknowledge(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            watched = [signal.SIGTERM, signal.SIGINT]
            # SIGHUP only where it is the launcher's death, and never over a `nohup` (SIG_IGN).
            if self.launcher_death and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
                watched.append(signal.SIGHUP)
            for signum in watched:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
