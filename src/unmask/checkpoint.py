"""Resumable checkpoints in safetensors and JSON only (nothing is ever unpickled).

A checkpoint holds full, unsharded state keyed by parameter name, whatever wrote it (one
process, DDP, or FSDP2 after gathering), so that any checkpoint resumes under any world
size and strategy:

    model.safetensors       the model's weights by Hugging Face name (a tied alias once)
    optimizer.safetensors   AdamW's tensors, `NAME:exp_avg`, `NAME:exp_avg_sq`, `NAME:step`
    state.json              step, data position, optimizer param groups (by name), what the
                            run recorded (device type, world size, global batch), and the
                            SHA-256 of every file

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
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unmask.config import UnmaskError
from unmask.files import atomic_write_text, building_path, disk_full_guard, publish_folder, remove_stale_building, remove_tree

_STEP_DIR = re.compile(r"^step-(\d+)$")
FORMAT = 2
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
_SEPARATOR = ":"

# Optimizer state by parameter name: {"state": {name: {key: tensor}}, "param_groups": [{..., "params": [name, ...]}]},
# the layout torch.distributed.checkpoint's full optimizer state dicts use.
NamedOptimizerState = dict[str, Any]


@dataclass
class Checkpoint:
    step: int
    data: dict
    info: dict
    """What the run recorded besides (device type, world size, global batch, ...)."""
    model: dict[str, torch.Tensor]
    optimizer: NamedOptimizerState


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
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [order[i] for i in group["params"]]} for group in state_dict["param_groups"]]
    return {"state": {order[index]: entries for index, entries in state_dict["state"].items()}, "param_groups": groups}


def indexed_optimizer_state(named: NamedOptimizerState, optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict:
    """The inverse: a state dict `optimizer.load_state_dict` takes."""
    index = {names[id(p)]: i for i, p in enumerate(p for group in optimizer.param_groups for p in group["params"])}
    missing = sorted(set(index) - {n for g in named["param_groups"] for n in g["params"]})
    if missing:
        raise UnmaskError(f"the checkpoint's optimizer has no state for {len(missing)} parameter(s) of this model: {', '.join(missing[:3])}")
    groups = [{**{k: v for k, v in group.items() if k != "params"}, "params": [index[n] for n in group["params"]]} for group in named["param_groups"]]
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


def _format1_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any], names_in_order: list[str]) -> NamedOptimizerState:
    """Checkpoints before format 2 keyed the optimizer by parameter index; translate to names."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(saved["scalars"].items()):
        index, entry = key.split(".", 1)
        state.setdefault(names_in_order[int(index)], {})[entry] = value
    groups = [
        {**{k: tuple(v) if isinstance(v, list) else v for k, v in g.items() if k != "params"}, "params": [names_in_order[i] for i in g["params"]]}
        for g in saved["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path, step: int, model: dict[str, torch.Tensor], optimizer: NamedOptimizerState, data: dict, info: dict, keep: int
) -> Path:
    """Write a complete checkpoint for `step`, then delete old ones (see `prune`).

    `model` must not hold one tensor under two names (drop tied aliases first). A full disk
    is one clear line (UnmaskError) and leaves no folder that looks like a checkpoint.
    """
    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    partial = building_path(final, "partial")
    remove_tree(partial)
    partial.mkdir(parents=True)
    optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer)
    needed = sum(t.nbytes for t in model.values()) + sum(t.nbytes for t in optimizer_tensors.values())
    try:
        with disk_full_guard(partial, f"the checkpoint of step {step}", needed):
            save_file({k: v.detach().contiguous().cpu() for k, v in model.items()}, str(partial / MODEL_FILE))
            save_file(optimizer_tensors, str(partial / OPTIMIZER_FILE))
            files = {name: _sha256(partial / name) for name in (MODEL_FILE, OPTIMIZER_FILE)}
            state = {"format": FORMAT, "step": step, "data": data, "optimizer": optimizer_json, "info": info, "files": files}
            atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=1))
            publish_folder(partial, final)
    except BaseException:
        remove_tree(partial)
        raise
    _verified[final] = None
    prune(root, keep, final)
    return final


_verified: dict[Path, str | None] = {}  # checkpoints this process has hashed: a checkpoint's files never change


def prune(root: Path, keep: int, newest: Path) -> None:
    """Keep `newest` and the newest `keep - 1` older checkpoints that verify; delete older ones.

    A damaged checkpoint never takes the place of a good one, so the last checkpoint that
    verifies is never deleted. Checkpoints of later steps (left by an earlier attempt) are
    left alone: reaching their step replaces them.
    """
    step = int(newest.name.split("-")[1])
    older = [p for p in complete_step_dirs(root) if int(p.name.split("-")[1]) < step]
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


def clean_up(run_dir: Path) -> None:
    """Delete the half-written checkpoint folders of processes of this machine that died."""
    remove_stale_building(run_dir / "checkpoints")
    remove_stale_building(run_dir)


def complete_step_dirs(root: Path) -> list[Path]:
    """Checkpoint folders by name (not yet verified), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


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


def latest_checkpoint(run_dir: Path, warn: Callable[[str], None] = print) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are reported and passed over."""
    for path in reversed(complete_step_dirs(run_dir / "checkpoints")):
        problem = verify(path)
        if problem is None:
            return path
        warn(f"warning: skipping damaged checkpoint {path}: {problem}")
    return None


def read_checkpoint(path: Path, names_in_order: list[str]) -> Checkpoint:
    """Load a verified checkpoint's contents onto the CPU.

    `names_in_order` (the optimizer's parameters, group by group) translates the
    index-keyed optimizer state of checkpoints written before format 2.
    """
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        model = load_file(str(path / MODEL_FILE))
        tensors = load_file(str(path / OPTIMIZER_FILE))
        if state.get("format", 1) >= 2:
            optimizer = _join_optimizer_state(tensors, state["optimizer"])
        else:
            optimizer = _format1_optimizer_state(tensors, state["optimizer"], names_in_order)
    except (OSError, KeyError, ValueError, IndexError, RuntimeError, SafetensorError) as e:
        raise UnmaskError(f"{path}: cannot read checkpoint: {e}") from None
    return Checkpoint(step=state["step"], data=state["data"], info=state.get("info", {}), model=model, optimizer=optimizer)
