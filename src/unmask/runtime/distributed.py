"""Many processes: joining torchrun's process group, DDP / FSDP2 wrapping, rank-aware helpers.

unmask launches nothing itself: `torchrun` (torch.distributed elastic) starts the processes
and sets WORLD_SIZE, RANK and LOCAL_RANK; `join` finds them and joins the group (NCCL on
CUDA, gloo on CPU). A single process started without torchrun has a `World` of one, and
every helper here does nothing for it, so one-process training is exactly what it was.

Under FSDP2 (`fully_shard`) a module's parameters are gathered by hooks on its `forward`.
The masked-positions-only last layer and the sparse head call submodules directly, not
through a forward, so they belong to the root group: the encoder layers before the last
are sharded one by one, and the last layer, the embeddings and the head are sharded with
the root, whose forward (`MaskedLM.forward`) gathers them.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from unmask.errors import UnmaskError, option
from unmask.models.masked_lm import MaskedLM
from unmask.runtime.hardware import resolve_device


@dataclass(frozen=True)
class World:
    """This process's place among all the processes of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_control_group = None
"""A gloo group beside NCCL's, for the host-side agreements of every micro-batch (a stop
request): a CPU all-reduce there never waits for the GPU. None: the default group is gloo."""
_made_group = False
"""Whether `join` made this process's process group (not a group the caller made). It stays
True after `leave`: gloo's threads outlive `destroy_process_group` (`end_process_if_it_made_the_group`)."""


def die_with_launcher() -> None:
    """Ask the kernel to send this process SIGHUP when its parent (torchrun's agent) dies.

    torchrun starts each worker in a session of its own, so a launcher killed with -9 (not
    its group) would otherwise leave the workers running, waiting in a collective for a
    partner that may never come. SIGHUP, not SIGTERM: the kernel sends it again each time the
    worker passes to another thread of the dying launcher, and repeats of it must not count as
    the second signal that stops at once (`preemption.StopSignals`). During training it stops
    the run as a preemption does, with a checkpoint; before, it ends the process.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGHUP), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to ask
        return
    if os.getppid() == 1:  # the launcher died before the request was made
        os.kill(os.getpid(), signal.SIGHUP)


def is_collective_timeout(error: BaseException) -> bool:
    """Whether `error` is a collective giving up on a process that never came (gloo's "Timed
    out waiting ... for recv/send"), not any error that mentions a timeout."""
    text = str(error).lower()
    collective = isinstance(error, getattr(dist, "DistBackendError", ())) or "gloo" in text
    return dist.is_initialized() and isinstance(error, RuntimeError) and collective and "timed out" in text


@contextmanager
def timeouts_as_errors(minutes: float) -> Iterator[None]:
    """A collective that gave up waiting (`join`'s timeout) as one line naming the setting.
    (NCCL's watchdog ends the process itself, with its own message.)"""
    try:
        yield
    except RuntimeError as e:
        if not is_collective_timeout(e):
            raise
        raise UnmaskError(
            f"another process of this run sent nothing for {minutes:g} min (--collective-timeout): it died or hangs; "
            f"stopped (the checkpoints written so far are intact; continue with {option('resume')})"
        ) from None


def join(device_request: str, timeout_minutes: float = 30.0) -> tuple[World, torch.device]:
    """Join torchrun's process group if there is one, and choose this process's device. A
    collective that waits longer than `timeout_minutes` for another process fails."""
    global _control_group, _made_group
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World(), resolve_device(device_request)
    die_with_launcher()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    wants_cuda = device_request == "auto" and torch.cuda.is_available() or device_request.startswith("cuda")
    if wants_cuda:
        if not torch.cuda.is_available():
            raise UnmaskError(f"--device: '{device_request}' asked for, but no CUDA GPU is available")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        # The default is generous: one rank may spend minutes writing a checkpoint while the others wait.
        timeout = datetime.timedelta(minutes=timeout_minutes)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        _control_group = dist.new_group(backend="gloo", timeout=timeout) if device.type == "cuda" else None
        _made_group = True
    return world, device


def agree_max(value: float, world: World) -> float:
    """The largest of every process's `value`, by a host-side all-reduce that never waits for
    a GPU (the control group; gloo on CPU)."""
    global _control_group
    if not world.distributed:
        return value
    if _control_group is None and dist.get_backend() != "gloo":  # a group the caller made, on NCCL
        _control_group = dist.new_group(backend="gloo")
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_control_group)
    return float(tensor.item())


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def made_group() -> bool:
    return _made_group


def end_process_if_it_made_the_group(code: int) -> None:
    """End this process now, with `code`, if it made a process group; otherwise return.

    The interpreter's own shutdown is not safe after a gloo group (torch 2.13): DDP and FSDP2
    keep the group alive past `destroy_process_group`, and its worker threads may still be
    releasing the tensors of the last collective when the interpreter finalizes. Such a thread
    then asks for the GIL, Python ends it with `pthread_exit`, and unwinding through C++ aborts
    the process ("terminate called without an active exception", exit -6) after a run that
    finished well: 17 in 120 runs of a bare two-process FSDP2 script on this project's CPU
    machine, none in 200 once the process ended so (a core dump shows
    `~AsyncAllgatherCoalescedWork` in `ProcessGroupGloo::runLoop` taking the GIL inside
    `Py_FinalizeEx`). A barrier first does not help (2 in 60), and no wait can tell when those
    threads are done, so a process that joined one leaves without finalizing, once its own
    files are closed and its output flushed.
    """
    if not _made_group:
        return
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a stream already closed
            pass
    os._exit(code)


def sum_across(values: list[float], world: World, device: torch.device) -> list[float]:
    """Each value summed over all processes (float64, so counts stay exact)."""
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_on_device(value: float | torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """A number summed over all processes, as a tensor on the device: nothing waits for it
    (an all-reduce the device runs in order, NCCL on GPUs)."""
    tensor = value.to(device=device, dtype=torch.float32) if isinstance(value, torch.Tensor) else torch.tensor(float(value), device=device)
    if world.distributed:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def max_across(values: list[float], world: World, device: torch.device) -> list[float]:
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def gather_objects(items: list, world: World) -> list:
    """Every process's `items`, concatenated in rank order, on every process."""
    if not world.distributed:
        return list(items)
    gathered: list = [None] * world.size
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def resolve_strategy(strategy: str, world: World) -> str:
    """`auto`: DDP when there is more than one process. One process needs no wrapper."""
    if not world.distributed:
        return "none"
    return "ddp" if strategy == "auto" else strategy


def parallelize(lm: MaskedLM, strategy: str, device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """The module the training step calls: `lm` itself, DDP around it, or `lm` sharded in place by FSDP2."""
    if strategy == "none":
        return lm
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(lm, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # bf16 compute with fp32 gradient reduction on GPUs that support it; fp32 on CPU.
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for layer in lm.separately_shardable_layers():
        fully_shard(layer, mp_policy=policy)
    fully_shard(lm, mp_policy=policy)
    return lm


def set_gradient_sync(model: nn.Module, strategy: str, enabled: bool):
    """A context in which the backward pass does (or does not yet) reduce gradients across processes.

    Gradient accumulation reduces once, on the step's last micro-batch.
    """
    import contextlib

    if strategy == "ddp" and not enabled:
        return model.no_sync()
    if strategy == "fsdp":
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()
