"""What a run writes and reads besides its metrics: full state gathered from the processes,
checkpoints loaded back into a (possibly sharded) model, the base folder, the final model,
and any checkpoint exported as a model folder.

Checkpoints hold full state by Hugging Face parameter name whatever wrote them (one process,
DDP, or FSDP2 after gathering), so any checkpoint resumes under any world size and strategy.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from unmask import checkpoint, distributed
from unmask.config import TrainConfig, UnmaskError, length_changes, load_yaml, refused_resume_changes, to_dict
from unmask.data.windows import DataPosition
from unmask.files import building_path, disk_full_guard, publish_folder, remove_tree
from unmask.model import MaskedLM

if TYPE_CHECKING:
    from unmask.train import Run

_HF_PREFIX = "model."  # MaskedLM keeps the transformers model as `.model`
BASE_DIR = "base"


def check_run_folder(out: Path, config: TrainConfig, echo: Callable[[str], None]) -> None:
    """Refuse what would mix two runs; a folder with a config but no checkpoint is a start
    that failed before its first step was saved, and does not count as a run."""
    if out.exists() and not out.is_dir():
        raise UnmaskError(f"--out {out}: is a file, not a run folder")
    saved = out / "config.yaml"
    has_checkpoints = bool(checkpoint.complete_step_dirs(out / "checkpoints"))
    if not config.resume:
        if has_checkpoints:
            raise UnmaskError(f"--out {out}: already holds a run (pass --resume to continue it, or choose another --out)")
        return
    if not saved.exists() and not has_checkpoints:
        echo(f"note: --resume: nothing to resume in {out}; starting a new run")
        return
    if not has_checkpoints:
        raise UnmaskError(f"--resume: {out} holds a run's config.yaml but no checkpoint; to start it over, run again without --resume")
    if saved.exists():
        before, now = to_dict(load_yaml(TrainConfig, saved)), to_dict(config)
        changed = refused_resume_changes(before, now)
        if changed:
            raise UnmaskError(f"--resume: settings differ from {saved}: {', '.join(changed)}")
        longer = length_changes(before, now)
        if longer:
            echo(
                f"note: {', '.join(longer)}: the schedules continue from the checkpoint as if the run had been planned this long; "
                "the result is not identical to a run planned this long from the start"
            )


def names(lm: MaskedLM) -> dict[int, str]:
    return {id(p): name for name, p in lm.model.named_parameters()}


def _strip(state: dict) -> dict:
    return {(k[len(_HF_PREFIX):] if k.startswith(_HF_PREFIX) else k): v for k, v in state.items()}


def full_state(run: Run, with_optimizer: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Unsharded model weights (Hugging Face names, tied aliases once) and optimizer state by
    name; under FSDP every process must call this (it gathers), and only rank 0 gets them."""
    if run.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = _strip(get_model_state_dict(run.lm, options=options))
        named = get_optimizer_state_dict(run.lm, run.optimizer, options=options) if with_optimizer else {}
        if named:
            named = {"state": _strip(named["state"]), "param_groups": [{**g, "params": list(_strip(dict.fromkeys(g["params"])))} for g in named["param_groups"]]}
    else:
        weights = run.lm.model.state_dict()
        named = checkpoint.named_optimizer_state(run.optimizer, names(run.lm)) if with_optimizer else {}
    return {k: v for k, v in weights.items() if k not in run.tied_aliases}, named



def load_into(run: Run, saved: checkpoint.Checkpoint) -> None:
    """Put a checkpoint's weights and optimizer state into the run's (possibly sharded) model."""
    weights = dict(saved.model)
    for alias, name in run.tied_aliases.items():
        if alias not in weights and name in weights:
            weights[alias] = weights[name]
    if run.strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(run.lm, {_HF_PREFIX + k: v for k, v in weights.items()}, options=options)
        prefixed = {
            "state": {_HF_PREFIX + k: v for k, v in saved.optimizer["state"].items()},
            "param_groups": [{**g, "params": [_HF_PREFIX + n for n in g["params"]]} for g in saved.optimizer["param_groups"]],
        }
        set_optimizer_state_dict(run.lm, run.optimizer, prefixed, options=options)
    else:
        try:
            run.lm.model.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise UnmaskError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        run.optimizer.load_state_dict(checkpoint.indexed_optimizer_state(saved.optimizer, run.optimizer, names(run.lm)))


def restore(run: Run, echo: Callable[[str], None]) -> None:
    """Continue from the newest checkpoint that verifies (rank 0 checks, everyone loads it)."""
    latest = checkpoint.latest_checkpoint(run.out, warn=echo) if run.world.is_main else None
    step, = distributed.max_across([float(int(latest.name.split("-")[1]) if latest else -1)], run.world, run.device)
    if step < 0:
        if checkpoint.complete_step_dirs(run.out / "checkpoints"):
            raise UnmaskError(
                f"--resume: no checkpoint in {run.out / 'checkpoints'} verifies (see the warnings above); nothing was changed. "
                "Start a new run in another --out"
            )
        return
    path = run.out / "checkpoints" / f"step-{int(step):08d}"
    by_id = names(run.lm)
    saved = checkpoint.read_checkpoint(path, [by_id[id(p)] for group in run.optimizer.param_groups for p in group["params"]])
    trained_on = saved.info.get("device_type", run.device.type)
    if trained_on != run.device.type:
        raise UnmaskError(
            f"--resume: {path} was trained on {trained_on}, this run would continue on {run.device.type}; "
            f"its precision lives on the device, so continue on {trained_on} (--device {trained_on})"
        )
    was = saved.info.get("global_batch", run.global_batch)
    if was != run.global_batch:
        raise UnmaskError(
            f"--resume: {path} trained on {was} windows a step (batch-size x grad-accum x processes), this run would take "
            f"{run.global_batch}; keep the global batch, e.g. --grad-accum {max(1, was // (run.config.batch_size * run.world.size))} "
            f"with --batch-size {run.config.batch_size} on {run.world.size} process(es)"
        )
    load_into(run, saved)
    run.step = saved.step
    run.spent = float(saved.info.get("train_seconds", 0.0))
    run.skipped = int(saved.info.get("skipped_steps", 0))
    run.sampler.position = DataPosition(**saved.data)
    echo(f"resumed from {path} at step {run.step}")


BASE_DIR = "base"


def save_base(lm: MaskedLM, tokenizer, target: Path) -> None:
    """The model's config.json and tokenizer, without weights: with any checkpoint's weights
    it makes a model folder (`unmask export`), even of a run that never finished."""
    if (target / "config.json").is_file():
        return
    building = building_path(target, "partial")
    remove_tree(building)
    try:
        with disk_full_guard(building, "the model's config and tokenizer"):
            lm.model.config.save_pretrained(building)
            tokenizer.save_pretrained(building)
            publish_folder(building, target)
    except BaseException:
        remove_tree(building)
        raise


def export_checkpoint(run_dir: Path, out: Path, step: int | None = None, echo: Callable[[str], None] = print) -> Path:
    """Write the save_pretrained folder of a complete checkpoint of `run_dir` to `out`."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

    if out.exists():
        raise UnmaskError(f"--out {out}: already exists; choose a new folder")
    base = run_dir / BASE_DIR
    if not (base / "config.json").is_file():
        raise UnmaskError(f"{run_dir}: not a run folder unmask can export from (no {BASE_DIR}/config.json)")
    if step is None:
        path = checkpoint.latest_checkpoint(run_dir, warn=echo)
        if path is None:
            raise UnmaskError(f"{run_dir}: no complete checkpoint to export")
    else:
        path = run_dir / "checkpoints" / f"step-{step:08d}"
        if not path.is_dir():
            steps = ", ".join(str(int(p.name.split("-")[1])) for p in checkpoint.complete_step_dirs(run_dir / "checkpoints")) or "none"
            raise UnmaskError(f"--step {step}: {run_dir} has no checkpoint at that step (steps: {steps})")
        problem = checkpoint.verify(path)
        if problem:
            raise UnmaskError(f"{path}: damaged checkpoint ({problem})")
    with torch.random.fork_rng(devices=[]):
        model = AutoModelForMaskedLM.from_config(AutoConfig.from_pretrained(base))
    lm = MaskedLM(model)
    weights = load_file(str(path / checkpoint.MODEL_FILE))
    for alias, name in lm.tied_aliases().items():
        weights.setdefault(alias, weights.get(name))
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UnmaskError(f"{path}: the weights do not fit {base}/config.json: {str(e).splitlines()[0]}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    building = building_path(out, "partial")
    remove_tree(building)
    try:
        model.save_pretrained(building)
        AutoTokenizer.from_pretrained(base).save_pretrained(building)
        publish_folder(building, out)
    except BaseException:
        remove_tree(building)
        raise
    return path


def save_final_model(run: Run, target: Path) -> None:
    """save_pretrained into a folder of its own, then publish it: `target` is always whole.

    Under FSDP the weights are gathered first (every process takes part; rank 0 writes).
    """
    weights = full_state(run, with_optimizer=False)[0] if run.strategy == "fsdp" else None
    if not run.world.is_main:
        return
    building = building_path(target, "partial")
    remove_tree(building)
    needed = sum(p.numel() * p.element_size() for p in run.lm.model.parameters())
    try:
        with disk_full_guard(building, "the final model", needed):
            run.lm.model.save_pretrained(building, state_dict=weights)
            run.tokenizer.save_pretrained(building)
            publish_folder(building, target)
    except BaseException:
        remove_tree(building)
        raise
