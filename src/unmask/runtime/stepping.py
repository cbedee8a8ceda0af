"""What every training loop of unmask (pretraining, fine-tuning) does the same way at each
step: the step's random seed, and the non-finite rule (an update whose gradient norm or loss
is not finite is dropped on the device, so a step never waits for the device to know)."""

from __future__ import annotations

import torch

from unmask.data.masking import mix32

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
