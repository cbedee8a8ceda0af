"""What a run shows as it goes: the progress display and tokens per second (what it records is
`runtime.metrics`).

In a terminal the display is a tqdm bar, in Jupyter tqdm's widget (with ipywidgets); where
stderr is not a terminal (SLURM, nohup, CI) it is one plain line every `--log-every` steps,
because a carriage-return bar turns into lines thousands of characters long in a log file. Only rank 0 shows or writes anything.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

ProgressMode = Literal["auto", "bar", "lines", "none"]


def notebook_widgets() -> bool:
    """Whether this process runs in a Jupyter kernel that can show tqdm's widget bar (ipywidgets
    installed): there the bar is a widget; in a terminal a text bar; in a log plain lines."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def _loss(logged: dict, pattern: str) -> str:
    return pattern.format(logged["loss"]) if logged.get("loss") is not None else "non-finite (update skipped)"


class Progress:
    """The training display; `echo` prints a line without gluing it onto the bar."""

    def __init__(
        self,
        mode: ProgressMode,
        total: int | None,
        initial: int,
        echo: Callable[[str], None],
        enabled: bool = True,
        rate: tuple[str, str] = ("tokens_per_s", "tok/s"),
    ):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() or notebook_widgets() else "lines"
        self.mode = mode if enabled else "none"
        self.total, self.initial = total, initial
        self.shown_step = initial
        """The last step shown."""
        self._echo = echo if enabled else (lambda _: None)
        self.started = time.perf_counter()
        self.rate_key, self.rate_unit = rate
        """The logged speed to show, and its unit."""
        self.bar = None
        self.last_line = time.perf_counter()
        self.within_every = 30.0
        """Seconds between the plain lines that show a long step's micro-batches."""
        if self.mode == "bar" and notebook_widgets():
            from tqdm.notebook import tqdm as notebook_bar

            self.bar = notebook_bar(total=total, initial=initial, desc="train", unit="step")
        elif self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True)

    def echo(self, line: str) -> None:
        if self.bar is None:
            self._echo(line)
            return
        with self.bar.external_write_mode(file=sys.stderr):
            self._echo(line)

    def eta(self, step: int, fraction: float | None) -> float:
        """Seconds left, from this process's pace so far over the share of the run still to go."""
        if fraction is None:
            fraction = step / self.total if self.total else 0.0
        done = fraction - (self.initial / self.total if self.total else 0.0)
        return (time.perf_counter() - self.started) / done * (1.0 - fraction) if done > 0 else float("nan")

    def step(self, step: int, logged: dict | None = None, fraction: float | None = None) -> None:
        """Called once per step; `logged` holds the numbers of a step that writes a metrics line,
        `fraction` how far along the run is (steps or time budget)."""
        self.shown_step, self.last_line = step, time.perf_counter()
        if self.bar is not None:
            if self.bar.desc != "train":  # a long step showed its micro-batches there
                self.bar.set_description_str("train", refresh=False)
            self.bar.update(1)
            if logged:
                mfu = f", MFU={logged['mfu']:.1%}" if logged.get("mfu") is not None else ""
                self.bar.set_postfix_str(
                    f"loss={_loss(logged, '{:.3f}')}, {logged[self.rate_key]:,.0f} {self.rate_unit}{mfu}, lr={logged['lr']:.2e}"
                )
        elif self.mode == "lines" and logged:
            eta = self.eta(step, fraction)
            where = f"step {step}/{self.total}" if self.total else f"step {step}"
            share = fraction if fraction is not None else (step / self.total if self.total else None)
            self._echo(
                f"{where}{f' ({share:.0%})' if share is not None else ''}  loss {_loss(logged, '{:.4f}')}  lr {logged['lr']:.2e}  "
                f"{logged[self.rate_key]:,.0f} {self.rate_unit}{_speed(logged)}  elapsed {format_duration(time.perf_counter() - self.started)}"
                + (f"  ETA {format_duration(eta)}" if eta == eta else "")
            )

    def within_step(self, done: int, of: int) -> None:
        """Micro-batches done in a step of many (gradient accumulation): on the bar at once, as
        a plain line at most every `within_every` seconds, so that a step of minutes shows it moves."""
        if self.bar is not None:
            self.bar.set_description_str(f"train (micro-batch {done}/{of})")
        elif self.mode == "lines" and time.perf_counter() - self.last_line >= self.within_every:
            self.last_line = time.perf_counter()
            self._echo(f"step {self.shown_step + 1}{f'/{self.total}' if self.total else ''}: micro-batch {done}/{of}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


PACE_KEYS = ("tokens_per_s", "tokens_per_s_per_device", "mfu", "data_wait", "memory_gib", "train_seconds")
"""Metrics that depend on how fast this machine and process ran, not on what the run computed:
an interrupted and resumed run matches a straight one in everything else."""


def _speed(logged: dict) -> str:
    """How well the hardware is used, for a plain line: MFU, the wait for data, padding, memory."""
    parts = [f"MFU {logged['mfu']:.1%}"] if logged.get("mfu") is not None else []
    parts += [f"data {logged['data_wait']:.0%}"] if "data_wait" in logged else []
    parts += [f"pad {logged['padding']:.0%}"] if logged.get("padding") else []
    parts += [f"mem {logged['memory_gib']:.2f} GiB"] if "memory_gib" in logged else []
    return "".join(f"  {part}" for part in parts)


class Throughput:
    """Tokens per second of training time only: evaluation and checkpoints are paused out.
    With the device's peak (`hardware.peak_flops`), also the log line's MFU (`measure`)."""

    def __init__(self, world_size: int = 1, peak_flops: float | None = None, remeasure: Callable[[], float] | None = None) -> None:
        self.started, self.tokens = time.perf_counter(), 0
        self.world_size, self.peak_flops, self.remeasure = world_size, peak_flops, remeasure
        """`remeasure()`: the peak measured again, once a line's FLOP/s per device went past the one held."""

    def mfu(self, flops_per_s: float) -> float | None:
        """Model FLOPs over the devices' peak; a peak the run went past is measured again
        (`remeasure`), and an MFU still over 100% is not a measure of anything: None."""
        if not self.peak_flops:
            return None  # no peak: unknown
        per_device = flops_per_s / self.world_size
        if per_device > self.peak_flops and self.remeasure is not None:
            self.peak_flops = max(self.peak_flops, self.remeasure())
        mfu = per_device / self.peak_flops
        return mfu if mfu <= 1.0 else None

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @contextmanager
    def paused(self) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.started += time.perf_counter() - began

    def measure(self, numbers: dict) -> dict:
        """A settle's numbers (`Run.settle`) with its raw counts since the last call turned into
        the log line's speed: tokens/s in all and per device, training FLOPs per real token,
        MFU (model FLOPs over the devices' peak), the share of time spent drawing data, the
        share of window positions that are padding, and peak memory in GiB."""
        numbers = dict(numbers)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tokens, slots, flops = numbers.pop("tokens"), numbers.pop("slots"), numbers.pop("flops")
        waited, memory = numbers.pop("data_seconds"), numbers.pop("memory")
        mfu = self.mfu(flops / elapsed)  # before the clock restarts: a new measurement of the peak is not training time
        self.started, self.tokens = time.perf_counter(), 0
        return {
            **numbers,
            "tokens_per_s": tokens / elapsed,
            "tokens_per_s_per_device": tokens / elapsed / self.world_size,
            "flops_per_token": flops / max(tokens, 1),
            "mfu": mfu,
            "data_wait": min(1.0, waited / elapsed),
            "padding": 1.0 - tokens / slots if slots else 0.0,
            "memory_gib": memory / 2**30,
        }

    def rate_and_restart(self, tokens: int | None = None) -> float:
        """Tokens a second since the last call (`tokens`: the count to use, e.g. over all processes)."""
        rate = (self.tokens if tokens is None else tokens) / max(time.perf_counter() - self.started, 1e-9)
        self.started, self.tokens = time.perf_counter(), 0
        return rate
