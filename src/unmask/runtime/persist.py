"""What a training run writes and reads besides its metrics: full state gathered from the
processes, checkpoints loaded back into a (possibly sharded) model, the base folder and
the final model. Whether and from where a run continues is `runtime.resume`; a checkpoint
written out as a model folder, `runtime.export`.

Checkpoints hold full state by Hugging Face parameter name whatever wrote them (one process,
DDP, or FSDP2 after gathering), so any checkpoint resumes under any world size and strategy.
These functions take the pieces they use (the model, its optimizer, the strategy) and
return what they read; `train.setup` applies it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from unmask.errors import UnmaskError
from unmask.models.masked_lm import MaskedLM, tied_aliases
from unmask.runtime.distributed import World, barrier
from unmask.storage import checkpoint
from unmask.storage.files import building
from unmask.storage.rundir import RunDir

_HF_PREFIX = "model."  # MaskedLM keeps the transformers model as `.model`


def _strip(state: dict) -> dict:
    return {(k[len(_HF_PREFIX) :] if k.startswith(_HF_PREFIX) else k): v for k, v in state.items()}


def full_state(
    lm: MaskedLM | nn.Module, optimizer: torch.optim.Optimizer | None, strategy: str
) -> tuple[dict[str, torch.Tensor], checkpoint.NamedOptimizerState]:
    """Unsharded model weights (Hugging Face names, tied aliases once) and, given an optimizer,
    its state by name, of a `MaskedLM` or a whole transformers model (fine-tuning's); under
    FSDP every process must call this (it gathers), and only rank 0 gets them."""
    if strategy == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = _strip(get_model_state_dict(lm, options=options))
        named = get_optimizer_state_dict(lm, optimizer, options=options) if optimizer is not None else {}
        if named:
            groups = [{**g, "params": list(_strip(dict.fromkeys(g["params"])))} for g in named["param_groups"]]
            named = {"state": _strip(named["state"]), "param_groups": groups}
    else:
        return module_state(lm.model if isinstance(lm, MaskedLM) else lm, optimizer)
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


def write_checkpoint(
    run_dir: RunDir, info: checkpoint.CheckpointInfo, lm: MaskedLM | nn.Module, optimizer: torch.optim.Optimizer, world: World, keep: int
) -> Path:
    """The one checkpoint save of both loops: every process gathers its part where the model is
    sharded (`full_state`), rank 0 writes the checkpoint of `info.step` (keeping the newest
    `keep`), and all wait for it to be whole. Returns its folder."""
    if info.strategy == "fsdp" or world.is_main:
        weights, named = full_state(lm, optimizer, info.strategy)
    if world.is_main:
        checkpoint.save_checkpoint(run_dir, info, weights, named, keep=keep)
    barrier(world)
    return run_dir.checkpoint(info.step)


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
