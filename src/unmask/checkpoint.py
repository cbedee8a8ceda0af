"""Resumable checkpoints in safetensors and JSON only (nothing is ever unpickled).

A checkpoint is written into a hidden `checkpoints/.step-N.partial-PID/` folder, every file
fsynced, and then published as `checkpoints/step-N/` by a rename (`files.publish_folder`);
`state.json`, written last, records each file's SHA-256. A crash mid-write therefore leaves
only a hidden folder, which is never mistaken for a checkpoint, and a damaged one fails
verification and is passed over.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from unmask.config import UnmaskError
from unmask.files import atomic_write_text, building_path, publish_folder, remove_tree

_STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng.safetensors"
STATE_FILE = "state.json"


@dataclass
class Restored:
    step: int
    data: dict
    rng: dict[str, torch.Tensor]
    info: dict
    """What the run recorded besides (the device type it trained on, ...)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors go to safetensors, everything else (param groups, scalars) to JSON."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            key = f"{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().contiguous().cpu()
            else:
                scalars[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(saved["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in saved["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rng: dict[str, torch.Tensor],
    data: dict,
    keep: int,
    info: dict | None = None,
) -> Path:
    """Write a complete checkpoint for `step`, then delete all but the newest `keep`."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    partial = building_path(root / f"step-{step:08d}", "partial")
    remove_tree(partial)
    partial.mkdir(parents=True)
    try:
        save_model(model, str(partial / MODEL_FILE))
        optimizer_tensors, optimizer_json = _split_optimizer_state(optimizer)
        save_file(optimizer_tensors, str(partial / OPTIMIZER_FILE))
        save_file({k: v.contiguous().cpu() for k, v in rng.items()}, str(partial / RNG_FILE))
        files = {name: _sha256(partial / name) for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE)}
        state = {"step": step, "data": data, "optimizer": optimizer_json, "info": info or {}, "files": files}
        atomic_write_text(partial / STATE_FILE, json.dumps(state, indent=1))
        publish_folder(partial, final)
    except BaseException:
        remove_tree(partial)
        raise
    for old in complete_step_dirs(root)[:-keep]:
        remove_tree(old)
    return final


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
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable state.json ({e})"
    for name, digest in state.get("files", {}).items():
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


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Restored:
    """Restore model and optimizer in place; returns the step, data position and RNG states."""
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        load_model(model, str(path / MODEL_FILE), strict=True)
        optimizer.load_state_dict(_join_optimizer_state(load_file(str(path / OPTIMIZER_FILE)), state["optimizer"]))
        rng = load_file(str(path / RNG_FILE))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise UnmaskError(f"{path}: cannot restore checkpoint: {e}") from None
    return Restored(step=state["step"], data=state["data"], rng=rng, info=state.get("info", {}))
