"""Resumable checkpoints in safetensors and JSON only (nothing is ever unpickled).

A checkpoint holds full, unsharded state keyed by parameter name, whatever wrote it (one
process, DDP, or FSDP2 after gathering), so that any checkpoint resumes under any world
size and strategy:

    model.safetensors       the model's weights by Hugging Face name (a tied alias once)
    optimizer.safetensors   AdamW's tensors, `NAME:exp_avg`, `NAME:exp_avg_sq`, `NAME:step`
    state.json              step, data position, optimizer param groups (by name), what the
                            run recorded (`CheckpointInfo`: device type, world size, global
                            batch, ...), and the SHA-256 of every file

It is written into a hidden `checkpoints/.step-N.partial-PID/` folder, every file fsynced,
and then published as `checkpoints/step-N/` by a rename (`files.publish_folder`);
`state.json` is written last. A crash mid-write leaves only a hidden folder, never mistaken
for a checkpoint, and a damaged one fails verification and is passed over.

Checkpoints carry no random-number state: masks are a function of (seed, epoch, window,
position) and dropout is reseeded from (seed, step, rank) every step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unmask.errors import UnmaskError
from unmask.storage.files import atomic_write_text, building, remove_stale_building, remove_tree
from unmask.storage.rundir import RunDir

FORMAT = 2
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_SEPARATOR = ":"

# Optimizer state by parameter name: {"state": {name: {key: tensor}}, "param_groups": [{..., "params": [name, ...]}]},
# the layout torch.distributed.checkpoint's full optimizer state dicts use.
NamedOptimizerState = dict[str, Any]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint records about the run besides its tensors: where to go on from."""

    step: int
    """Optimizer steps done."""
    epoch: int = 0
    """Data position: the epoch of the window order ..."""
    position: int = 0
    """... and the next window's place in that epoch's order."""
    train_seconds: float = 0.0
    """Training time spent so far (what --time-budget counts)."""
    skipped_steps: int = 0
    """Steps whose update was dropped for a non-finite loss (--on-nonfinite skip)."""
    device_type: str | None = None
    """`cpu` or `cuda`: a run continues on the kind of device it trained on."""
    world_size: int = 1
    global_batch: int | None = None
    """Windows a step, over all processes: a resume must keep it."""
    strategy: str = "none"
    window_order: str | None = None
    """Which bijection ordered the windows (`data.windows.WINDOW_ORDER`); None: one before it was recorded."""
    windows: list[int] | None = None
    """Training windows of each --data store when it was written: a store that changed under the run is refused."""
    sources: list[list[int]] | None = None
    """With several --data stores: each store's (epoch, position); None for one (the fields above)."""
    extra: dict = field(default_factory=dict)
    """Keys this unmask does not know (written by a newer one), kept as they were."""

    _RUN_KEYS = ("train_seconds", "skipped_steps", "device_type", "world_size", "global_batch", "strategy", "window_order", "windows")

    def to_state(self) -> dict:
        """The `step`, `data` and `info` entries of state.json."""
        info = {**self.extra, **{k: getattr(self, k) for k in self._RUN_KEYS}}
        data = {"epoch": self.epoch, "position": self.position, **({"sources": self.sources} if self.sources else {})}
        return {"step": self.step, "data": data, "info": info}

    def data_positions(self) -> list[tuple[int, int]]:
        """Where each store's window order stands: (epoch, position in that epoch's order) each."""
        return [(int(e), int(p)) for e, p in self.sources] if self.sources else [(self.epoch, self.position)]

    @classmethod
    def from_state(cls, state: dict) -> CheckpointInfo:
        info = dict(state.get("info") or {})
        known = {k: info.pop(k) for k in cls._RUN_KEYS if k in info}
        data = state.get("data") or {}
        return cls(
            step=int(state["step"]),
            epoch=int(data.get("epoch", 0)),
            position=int(data.get("position", 0)),
            sources=data.get("sources"),
            extra=info,
            **known,
        )


@dataclass
class Checkpoint:
    info: CheckpointInfo
    model: dict[str, torch.Tensor]
    optimizer: NamedOptimizerState

    @property
    def step(self) -> int:
        return self.info.step


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def named_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> NamedOptimizerState:
    """An optimizer's state dict keyed by parameter name (`names`: id(parameter) -> name)."""
    state_dict = optimizer.state_dict()
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": [order[i] for i in group["params"]]}
        for group in state_dict["param_groups"]
    ]
    return {"state": {order[index]: entries for index, entries in state_dict["state"].items()}, "param_groups": groups}


def indexed_optimizer_state(named: NamedOptimizerState, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """The inverse: a state dict `optimizer.load_state_dict` takes."""
    index = {names[id(p)]: i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    missing = sorted(set(index) - {n for g in named["param_groups"] for n in g["params"]})
    if missing:
        raise UnmaskError(
            f"the checkpoint's optimizer has no state for {len(missing)} parameter(s) of this model: {', '.join(missing[:3])}"
        )
    groups = [
        {**{k: v for k, v in group.items() if k != "params"}, "params": [index[n] for n in group["params"]]}
        for group in named["param_groups"]
    ]
    return {"state": {index[name]: entries for name, entries in named["state"].items()}, "param_groups": groups}


def _split_optimizer_state(named: NamedOptimizerState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors go to safetensors, everything else (param groups, plain numbers) to JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, entries in named["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}{_SEPARATOR}{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{name}{_SEPARATOR}{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in named["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> NamedOptimizerState:
    state: dict[str, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(saved["scalars"].items()):
        name, entry = key.rsplit(_SEPARATOR, 1)
        state.setdefault(name, {})[entry] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: RunDir, info: CheckpointInfo, model: dict[str, torch.Tensor], optimizer: NamedOptimizerState, keep: int
) -> Path:
    """Write a complete checkpoint for `info.step`, then delete old ones (see `prune`).

    `model` must not hold one tensor under two names (drop tied aliases first). A full disk
    is one clear line (UnmaskError) and leaves no folder that looks like a checkpoint.
    """
    final = run_dir.checkpoint(info.step)
    optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer)
    needed = sum(t.nbytes for t in model.values()) + sum(t.nbytes for t in optimizer_tensors.values())
    with building(final, f"the checkpoint of step {info.step}", needed) as partial:
        save_file({k: v.detach().contiguous().cpu() for k, v in model.items()}, str(partial / MODEL_FILE))
        save_file(optimizer_tensors, str(partial / OPTIMIZER_FILE))
        files = {name: _sha256(partial / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}
        state = {"format": FORMAT, **info.to_state(), "optimizer": optimizer_json, "files": files}
        atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=1))
    _verified[final] = None
    prune(run_dir, keep, info.step)
    return final


_verified: dict[Path, str | None] = {}  # checkpoints this process has hashed: a checkpoint's files never change


def prune(run_dir: RunDir, keep: int, newest_step: int) -> None:
    """Keep the checkpoint of `newest_step` and the newest `keep - 1` older ones that verify;
    delete older ones.

    A damaged checkpoint never takes the place of a good one, so the last checkpoint that
    verifies is never deleted. Checkpoints of later steps (left by an earlier attempt) are
    left alone: reaching their step replaces them.
    """
    older = [p for step, p in run_dir.checkpoint_steps() if step < newest_step]
    kept = 1
    for path in reversed(older):
        if kept < keep:
            if path not in _verified:
                _verified[path] = verify(path)
            if _verified[path] is None:
                kept += 1
                continue
        remove_tree(path)
        _verified.pop(path, None)


def clean_up(run_dir: RunDir) -> None:
    """Delete the half-written checkpoint folders of processes of this machine that died."""
    remove_stale_building(run_dir.checkpoints)
    remove_stale_building(run_dir.path)


def verify(path: Path) -> str | None:
    """None if the checkpoint is whole, else what is wrong with it."""
    state_path = path / STATE_FILE
    if not state_path.is_file():
        return "no state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable state.json ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("files"), dict) or not state["files"] or "step" not in state:
        return "state.json lacks the step or the file checksums"
    for name, digest in state["files"].items():
        if not (path / name).is_file():
            return f"{name} is missing"
        if _sha256(path / name) != digest:
            return f"{name} does not match its recorded checksum"
    return None


def latest_checkpoint(run_dir: RunDir, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and passed over."""
    for _, path in reversed(run_dir.checkpoint_steps()):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"warning: skipping damaged checkpoint {path}: {problem}")
    return None


def read_checkpoint(path: Path) -> Checkpoint:
    """Load a verified checkpoint's contents onto the CPU (this format only: 0.1.0 has no older checkpoints to read)."""
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        model = load_file(str(path / MODEL_FILE))
        tensors = load_file(str(path / OPTIMIZER_FILE))
        if state.get("format") != FORMAT:
            raise UnmaskError(f"{path}: checkpoint format {state.get('format')} is not one this unmask reads ({FORMAT})")
        optimizer = _join_optimizer_state(tensors, state["optimizer"])
    except (OSError, KeyError, ValueError, IndexError, RuntimeError, SafetensorError) as e:
        raise UnmaskError(f"{path}: cannot read checkpoint: {e}") from None
    return Checkpoint(info=CheckpointInfo.from_state(state), model=model, optimizer=optimizer)


def read_info(path: Path) -> CheckpointInfo | None:
    """The record of a checkpoint folder without reading its tensors or verifying them (None
    when state.json is missing or unreadable: a checkpoint being written, or a damaged one)."""
    try:
        state = json.loads((Path(path) / STATE_FILE).read_text(encoding="utf-8"))
        return CheckpointInfo.from_state(state)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
