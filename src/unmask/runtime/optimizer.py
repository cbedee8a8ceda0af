"""AdamW as every unmask training uses it: no weight decay on biases and LayerNorm weights
(every parameter under 2 dimensions), groups that may learn at their own rate, and the
fused kernel.

On the 2-core CPU the fused kernel took 18 ms a step for MiniLM-L6's 22.7M parameters,
against 113 ms for the per-parameter loop and 90 ms for foreach.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def decay_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float, lr_scale: float = 1.0) -> list[dict]:
    """Parameter groups: matrices decay, vectors (biases, norms) do not; each carries `lr_scale`."""
    decays, keeps = [], []
    for _, parameter in named:
        if parameter.requires_grad:
            (decays if parameter.ndim >= 2 else keeps).append(parameter)
    groups = [{"params": decays, "weight_decay": weight_decay, "lr_scale": lr_scale}]
    groups.append({"params": keeps, "weight_decay": 0.0, "lr_scale": lr_scale})
    return [g for g in groups if g["params"]]


def adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float, device: torch.device) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=device.type in ("cpu", "cuda"))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's rate, times each group's `lr_scale`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
