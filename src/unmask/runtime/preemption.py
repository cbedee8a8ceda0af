"""Stopping a run cleanly when the machine asks: SIGTERM (SLURM, Kubernetes) and Ctrl-C.

A signal only sets a flag. At the next step boundary every process agrees on it (one
all-reduce), writes a checkpoint, and the run exits with 128 + the signal's number (143
for SIGTERM, 130 for SIGINT), saying how to continue. A second Ctrl-C does not wait: it
interrupts at once, and the checkpoints written so far stay intact.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType


class Stopped(Exception):
    """Training stopped at a step boundary on a signal, after writing a checkpoint."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint"
        super().__init__(f"stopped at step {step} by {signal.Signals(signum).name}; {where}; continue with --resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """While active, SIGTERM and SIGINT set `received` instead of killing the process."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
