"""What every training loop of unmask (pretraining, fine-tuning) does the same way at each
step: the step's random seed, the non-finite rule (an update whose gradient norm or loss is
not finite is dropped on the device, so a step never waits for the device to know), and the
tally of what the steps since the last settle did (`Tally`), which the rule is judged on."""

from __future__ import annotations

import math

import torch

from unmask.data.masking import mix32
from unmask.errors import UnmaskError

PRETRAINING = 0x3C6EF372
FINE_TUNING = 0x7F4A7C15
"""Salts of `step_seed`, so that the two loops draw apart for the same seed."""


def step_seed(seed: int, step: int, rank: int, salt: int) -> int:
    """The torch seed of one step on one process (dropout): a function of (seed, step, rank),
    so a checkpoint needs no random-number state."""
    return mix32(mix32(mix32((seed & 0xFFFFFFFF) ^ salt) ^ step) ^ rank)


def total_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (under FSDP it is a replicated DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def skip_on_device(optimizer: torch.optim.Optimizer, bad: torch.Tensor) -> None:
    """optimizer.step(), dropped on the device where `bad` is 1: the fused AdamW reads
    `found_inf` (as GradScaler sets it) and leaves weights, moments and step counts alone.
    An optimizer that cannot (not fused) asks the host instead."""
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = bad
        try:
            optimizer.step()
        finally:
            optimizer.found_inf = None
    elif not bool(bad):
        optimizer.step()


def clipped_update(
    optimizer: torch.optim.Optimizer, parameters, max_norm: float, loss: torch.Tensor | None = None, skip: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip the gradients to `max_norm`, apply the update unless the norm (or `loss`) is not
    finite or `skip` (a device bool) says so, and clear the gradients; returns (norm, bad) as
    device tensors, `bad` 1.0 where this step's own numbers were not finite. The host reads
    them only when the loop settles."""
    norm = total_norm(torch.nn.utils.clip_grad_norm_(parameters, max_norm))
    bad = ~torch.isfinite(norm)
    if loss is not None:
        bad = bad | ~torch.isfinite(loss)
    dropped = bad if skip is None else bad | skip
    skip_on_device(optimizer, dropped.to(torch.float32))
    optimizer.zero_grad(set_to_none=True)
    return norm, bad.to(torch.float32)


class Tally:
    """What the steps since the last settle did: counts on the host, and on the device the
    numbers only the device knows (read all at once when the run settles)."""

    # Slots of `on_device`.
    LOSS, APPLIED, SKIPPED, IN_A_ROW, WORST, FIRST, FIRST_LOSS, FIRST_NORM, LAST, LAST_LOSS, LAST_NORM, NORM = range(12)

    def __init__(self, device: torch.device, skipped: int = 0):
        self.device = device
        self.skipped = skipped
        """Steps of the whole run whose update was dropped, as of the last settle (a checkpoint
        keeps it; a resumed run starts from it)."""
        self.in_a_row = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.picked = self.maskable = self.tokens = self.slots = 0
        self.flops = self.data_seconds = 0.0
        start = [0.0, 0, 0, 0, 0, -1, 0, 0, -1, 0, 0, 0]
        self.on_device = torch.tensor(start, dtype=torch.float64, device=self.device)
        self.on_device[self.IN_A_ROW] = self.in_a_row  # a run of non-finite steps goes on across log lines

    def add(self, step: int, loss: torch.Tensor, norm: torch.Tensor, bad: torch.Tensor) -> None:
        """Fold one step in, on the device: `bad` is 1 for a step whose update was dropped."""
        t, hit = self.on_device, bad > 0
        first = (t[self.FIRST] < 0) & hit
        row = t[self.IN_A_ROW] * bad + bad
        self.in_a_row = row
        self.on_device = torch.stack(
            [
                t[self.LOSS] + torch.where(hit, 0.0, loss),
                t[self.APPLIED] + 1 - bad,
                t[self.SKIPPED] + bad,
                row,
                torch.maximum(t[self.WORST], row),
                torch.where(first, step, t[self.FIRST]),
                torch.where(first, loss, t[self.FIRST_LOSS]),
                torch.where(first, norm, t[self.FIRST_NORM]),
                torch.where(hit, step, t[self.LAST]),
                torch.where(hit, loss, t[self.LAST_LOSS]),
                torch.where(hit, norm, t[self.LAST_NORM]),
                torch.where(hit, torch.nan, norm),
            ]
        )

    def settle(self, on_nonfinite: str, max_nonfinite: int, kept: str, where: str = "") -> dict:
        """Read what the device knows (the one wait), apply the non-finite rule
        (`stop_if_nonfinite`) and start again. Returns the log line's training numbers: the
        mean loss of the steps applied since the last settle (None when none was), the last
        finite gradient norm, and the steps dropped over the whole run (`skipped`)."""
        values = self.on_device.tolist()
        self.stop_if_nonfinite(values, on_nonfinite, max_nonfinite, kept, where)
        self.reset()
        self.skipped += int(values[self.SKIPPED])
        applied, norm = values[self.APPLIED], values[self.NORM]
        return {
            "loss": values[self.LOSS] / applied if applied else None,
            "grad_norm": None if math.isnan(norm) else norm,
            "skipped_steps": self.skipped,
        }

    @staticmethod
    def stop_if_nonfinite(values: list[float], on_nonfinite: str, max_nonfinite: int, kept: str, where: str = "") -> None:
        """The non-finite rule, on a settled tally's `values`: with --on-nonfinite stop, any
        step whose update was dropped stops the run; with skip, more than `max_nonfinite` in a
        row do. `kept` says what the run leaves (e.g. "no model/ written"), `where` what ran
        (e.g. "seed 2, ")."""
        t = Tally
        if values[t.SKIPPED] and on_nonfinite == "stop":
            step, loss, norm = int(values[t.FIRST]) + 1, values[t.FIRST_LOSS], values[t.FIRST_NORM]
            what = f"training loss is {loss}, gradient norm {norm}" if not math.isfinite(loss) else "the gradient norm is not finite"
            raise UnmaskError(
                f"{where}step {step}: {what}; stopped before applying it (checkpoints so far are intact, {kept}). "
                "Try a lower --lr, --precision fp32, or --on-nonfinite skip"
            )
        if values[t.WORST] > max_nonfinite:
            raise UnmaskError(
                f"{where}step {int(values[t.LAST]) + 1}: training loss is {values[t.LAST_LOSS]}, gradient norm {values[t.LAST_NORM]}; "
                f"{int(values[t.WORST])} non-finite steps in a row (--max-nonfinite {max_nonfinite}): stopped"
            )
