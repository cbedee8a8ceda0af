"""Whether and from where a training run continues: the run folder checked against the
settings (`--resume` or not, what may change), the stores checked against the checkpoint, and
the newest checkpoint that verifies loaded back (`persist.load_into`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from unmask.config import TrainConfig, length_changes, load_yaml, refused_resume_changes, to_dict
from unmask.data.windows import WINDOW_ORDER
from unmask.errors import UnmaskError, option, setting
from unmask.models.masked_lm import MaskedLM
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.runtime.persist import load_into
from unmask.storage import checkpoint
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.rundir import RunDir


def refuse_foreign_folder(run_dir: RunDir) -> None:
    """Never write a run in among someone's own files: a folder that is not a run must be empty
    (checked before the run's lock is taken, so that nothing is written there)."""
    if not run_dir.path.is_dir() or run_dir.is_run():
        return
    foreign = run_dir.foreign_entries()
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise UnmaskError(f"{option('out', str(run_dir.path))}: a folder of other files ({shown}), not a run; choose a new or empty folder")


def refuse_changed_stores(info: CheckpointInfo, stores: list[tuple[str, object]], windows_now: list[int]) -> None:
    """Refuse to resume on stores that changed under the run (shrank, grew, or were replaced):
    the data position would point at other windows, or past the end. Checked before any step,
    with nothing written. `stores` are (name, TokenStore) as --data gave them."""
    for number, (name, store) in enumerate(stores):
        now = windows_now[number]
        then = info.windows[number] if info.windows and number < len(info.windows) else None
        epoch, position = info.data_positions()[number] if number < len(info.data_positions()) else (0, 0)
        label = f"--data {store.path}" + (f" ({name})" if len(stores) > 1 else "")
        if then is not None and then != now:
            raise UnmaskError(
                f"{label}: {now:,} training windows now, {then:,} when the checkpoint was written: the store changed under the run "
                "(it shrank, grew or was replaced); resume with the store it trained on, or start a new run"
            )
        if position > now:
            raise UnmaskError(
                f"{label}: the checkpoint's data position (epoch {epoch}, window {position:,}) is past the store's {now:,} training "
                "windows: the store changed under the run; resume with the store it trained on, or start a new run"
            )


def check_run_folder(run_dir: RunDir, config: TrainConfig, echo: Callable[[str], None]) -> None:
    """Refuse what would mix two runs. A folder with a config but no checkpoint is a start
    that stopped before its first checkpoint: there is nothing to lose, so it starts over
    from step 0, with --resume too (a requeued job always passes --resume) as long as the
    settings do not conflict with the saved ones."""
    out = run_dir.path
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a run folder")
    has_checkpoints = bool(run_dir.checkpoint_steps())
    if not config.resume:
        if has_checkpoints:
            raise UnmaskError(
                f"{option('out', str(out))}: already holds a run (pass {option('resume')} to continue it, or choose another {setting('out')})"
            )
        return
    if not run_dir.config.exists():
        if not has_checkpoints:
            echo(f"note: --resume: nothing to resume in {out}; starting a new run")
        return
    before, now = to_dict(load_yaml(TrainConfig, run_dir.config)), to_dict(config)
    changed = refused_resume_changes(before, now)
    if changed and not has_checkpoints:
        raise UnmaskError(
            f"--resume: {out} has no checkpoint yet, and these settings differ from its {run_dir.config.name}: {', '.join(changed)}; "
            f"run without {setting('resume')} to start it over with the new settings, or choose another {setting('out')}"
        )
    if changed:
        raise UnmaskError(f"--resume: settings differ from {run_dir.config}: {', '.join(changed)}")
    if not has_checkpoints:
        echo(f"note: --resume: {out} stopped before its first checkpoint; starting it over from step 0")
        return
    longer = length_changes(before, now)
    if longer:
        echo(
            f"note: {', '.join(longer)}: the schedules continue from the checkpoint as if the run had been planned this long; "
            "the result is not identical to a run planned this long from the start"
        )


def restore(
    run_dir: RunDir,
    config: TrainConfig,
    lm: MaskedLM,
    optimizer: torch.optim.Optimizer,
    strategy: str,
    world: World,
    device: torch.device,
    echo: Callable[[str], None],
) -> CheckpointInfo | None:
    """Load the newest checkpoint that verifies (rank 0 checks, everyone loads it) into the
    model and optimizer, and return its record; None when there is none to continue from."""
    latest = checkpoint.latest_checkpoint(run_dir, warn=echo) if world.is_main else None
    latest_step = checkpoint.read_info(latest).step if latest is not None else -1
    (step,) = distributed.max_across([float(latest_step)], world, device)
    if step < 0:
        if run_dir.checkpoint_steps():
            raise UnmaskError(
                f"--resume: no checkpoint in {run_dir.checkpoints} verifies (see the warnings above); nothing was changed. "
                f"Start a new run in another {setting('out')}"
            )
        return None
    path = run_dir.checkpoint(int(step))
    saved = checkpoint.read_checkpoint(path)
    info = saved.info
    if info.device_type is not None and info.device_type != device.type:
        raise UnmaskError(
            f"--resume: {path} was trained on {info.device_type}, this run would continue on {device.type}; "
            f"its precision lives on the device, so continue on {info.device_type} (--device {info.device_type})"
        )
    global_batch = config.windows_per_step(world.size)
    if info.global_batch is not None and info.global_batch != global_batch:
        raise UnmaskError(
            f"--resume: {path} trained on {info.global_batch} windows a step (batch-size x grad-accum x processes), this run would "
            f"take {global_batch}; keep the global batch, e.g. --grad-accum {max(1, info.global_batch // (config.batch_size * world.size))} "
            f"with --batch-size {config.batch_size} on {world.size} process(es)"
        )
    load_into(lm, optimizer, strategy, saved, path)
    echo(f"resumed from {path} at step {info.step}")
    if info.window_order != WINDOW_ORDER and any(position for _, position in info.data_positions()):
        echo(
            f"note: {path} was written by an unmask that ordered windows otherwise ({info.window_order or 'NumPy permutations'}); "
            f"the rest of its epoch is drawn in the {WINDOW_ORDER} order, so a few windows of that epoch may come twice or not at all"
        )
    return info
