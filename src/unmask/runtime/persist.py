"""What a training run writes and reads besides its metrics: full state gathered from the
processes, checkpoints loaded back into a (possibly sharded) model, the base folder and
the final model.

Checkpoints hold full state by Hugging Face parameter name whatever wrote them (one process,
DDP, or FSDP2 after gathering), so any checkpoint resumes under any world size and strategy.
These functions take the pieces they use (the model, its optimizer, the strategy) and
return what they read; `train.setup` applies it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from unmask.config import TrainConfig, length_changes, load_yaml, refused_resume_changes, to_dict
from unmask.data.windows import WINDOW_ORDER
from unmask.errors import UnmaskError, option, setting
from unmask.models.masked_lm import MaskedLM, tied_aliases
from unmask.runtime import distributed
from unmask.runtime.distributed import World
from unmask.storage import checkpoint
from unmask.storage.checkpoint import CheckpointInfo
from unmask.storage.files import building
from unmask.storage.rundir import RunDir

_HF_PREFIX = "model."  # MaskedLM keeps the transformers model as `.model`


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


def _strip(state: dict) -> dict:
    return {(k[len(_HF_PREFIX) :] if k.startswith(_HF_PREFIX) else k): v for k, v in state.items()}


def full_state(
    lm: MaskedLM, optimizer: torch.optim.Optimizer | None, strategy: str
) -> tuple[dict[str, torch.Tensor], checkpoint.NamedOptimizerState]:
    """Unsharded model weights (Hugging Face names, tied aliases once) and, given an optimizer,
    its state by name; under FSDP every process must call this (it gathers), and only rank 0
    gets them."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = _strip(get_model_state_dict(lm, options=options))
        named = get_optimizer_state_dict(lm, optimizer, options=options) if optimizer is not None else {}
        if named:
            groups = [{**g, "params": list(_strip(dict.fromkeys(g["params"])))} for g in named["param_groups"]]
            named = {"state": _strip(named["state"]), "param_groups": groups}
    else:
        return module_state(lm.model, optimizer)
    tied = lm.tied_aliases()
    return {k: v for k, v in weights.items() if k not in tied}, named


def module_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], checkpoint.NamedOptimizerState]:
    """A whole (unsharded) model's weights, tied aliases once, and its optimizer's state by
    parameter name: what a checkpoint keeps, for pretraining and fine-tuning alike."""
    tied = tied_aliases(model)
    weights = {k: v for k, v in model.state_dict().items() if k not in tied}
    names = {id(p): n for n, p in model.named_parameters()}
    return weights, (checkpoint.named_optimizer_state(optimizer, names) if optimizer is not None else {})


def with_tied_aliases(weights: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights (each tied tensor once) with every alias of `aliases` filled back in."""
    return {**weights, **{alias: weights[name] for alias, name in aliases.items() if alias not in weights and name in weights}}


def load_module_state(model: nn.Module, optimizer: torch.optim.Optimizer, saved: checkpoint.Checkpoint, source: Path) -> None:
    """Put a checkpoint's weights (tied aliases filled back in) and optimizer state into a whole model."""
    weights = with_tied_aliases(saved.model, tied_aliases(model))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UnmaskError(f"{source}: does not fit this model: {str(e).splitlines()[0]}") from None
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer.load_state_dict(checkpoint.indexed_optimizer_state(saved.optimizer, optimizer, names))


def load_into(lm: MaskedLM, optimizer: torch.optim.Optimizer, strategy: str, saved: checkpoint.Checkpoint, source: Path) -> None:
    """Put a checkpoint's weights and optimizer state into the (possibly sharded) model."""
    if strategy != "fsdp":
        load_module_state(lm.model, optimizer, saved, source)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    weights = with_tied_aliases(saved.model, lm.tied_aliases())
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(lm, {_HF_PREFIX + k: v for k, v in weights.items()}, options=options)
    prefixed = {
        "state": {_HF_PREFIX + k: v for k, v in saved.optimizer["state"].items()},
        "param_groups": [{**g, "params": [_HF_PREFIX + n for n in g["params"]]} for g in saved.optimizer["param_groups"]],
    }
    set_optimizer_state_dict(lm, optimizer, prefixed, options=options)


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


def save_base(lm: MaskedLM, tokenizer, run_dir: RunDir) -> None:
    """The model's config.json and tokenizer, without weights: with any checkpoint's weights
    it makes a model folder (`unmask export`), even of a run that never finished."""
    if run_dir.has_base():
        return
    with building(run_dir.base, "the model's config and tokenizer") as folder:
        lm.model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def save_final_model(lm: MaskedLM, tokenizer, strategy: str, world: World, target: Path) -> None:
    """save_pretrained into a folder of its own, then publish it: `target` is always whole.

    Under FSDP the weights are gathered first (every process takes part; rank 0 writes).
    """
    weights = full_state(lm, None, strategy)[0] if strategy == "fsdp" else None
    if not world.is_main:
        return
    needed = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    with building(target, "the final model", needed) as folder:
        lm.model.save_pretrained(folder, state_dict=weights)
        tokenizer.save_pretrained(folder)


def export_checkpoint(run: Path, out: Path, step: int | None = None, echo=print) -> Path:
    """Write the save_pretrained folder (weights and tokenizer) of a complete checkpoint of
    the run folder `run` to `out`; the newest one that verifies when `step` is None."""
    from unmask.data.tokenizer import load_tokenizer
    from unmask.models.masked_lm import load_mlm
    from unmask.storage import checkpoint
    from unmask.storage.files import building
    from unmask.storage.hub import checkpoint_source
    from unmask.storage.rundir import RunDir, step_of

    if out.exists():
        raise UnmaskError(f"{option('out', str(out))}: already exists; choose a new folder")
    run_dir = RunDir(run)
    if not run_dir.has_base():
        raise UnmaskError(f"{run}: not a run folder unmask can export from (no {run_dir.base.name}/config.json)")
    if step is None:
        newest = checkpoint.latest_checkpoint(run_dir, warn=echo)
        if newest is None:
            raise UnmaskError(f"{run}: no complete checkpoint to export")
        step = step_of(newest)
    source = checkpoint_source(str(run), run_dir, step)
    lm = load_mlm(source)
    tokenizer = load_tokenizer(source)
    with building(out, "the exported model") as folder:
        lm.model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return source.checkpoint
