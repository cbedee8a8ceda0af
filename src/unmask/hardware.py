"""The machine a command runs on: which device, and which precision to compute in there."""

from __future__ import annotations

import torch

from unmask.errors import UnmaskError


def resolve_device(device: str) -> torch.device:
    """`auto` (a CUDA GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:N`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UnmaskError(f"--device: '{device}' is not a device (auto, cpu, cuda, cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UnmaskError(f"--device: '{device}' asked for, but no CUDA GPU is available")
    return resolved


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 on GPUs that support it; fp32 on CPU, where bf16 matmuls are slow without AMX."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` on `device`; does nothing for fp32 (`dtype` None)."""
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
