"""`unmask export`: any complete checkpoint of a run as a model folder that loads with plain
`transformers`."""

from __future__ import annotations

from pathlib import Path

from unmask.errors import UnmaskError, option


def export_checkpoint(run: Path, out: Path, step: int | None = None, echo=print) -> Path:
    """Write the save_pretrained folder (weights and tokenizer) of a complete checkpoint of
    the run folder `run` to `out`; the newest one that verifies when `step` is None."""
    from unmask.data.tokenizer import load_tokenizer
    from unmask.models.masked_lm import load_mlm
    from unmask.storage import checkpoint
    from unmask.storage.files import building
    from unmask.storage.names import checkpoint_source
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
