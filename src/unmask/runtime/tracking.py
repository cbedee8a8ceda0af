"""Where a run's metrics go besides metrics.jsonl: TensorBoard and Weights & Biases.

`--report-to tensorboard wandb` (any combination) sends every record metrics.jsonl gets
through the libraries themselves: TensorBoard event files in RUN/tensorboard/, and a W&B
run that is offline (a folder in RUN/wandb/ to `wandb sync` later) unless the user is
logged in. Only rank 0 reports.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from unmask.errors import optional_import
from unmask.storage.rundir import RunDir


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc, as `wandb login` leaves it."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class Trackers:
    """The trackers a run reports to; `log` takes a metrics.jsonl record."""

    def __init__(self, names: list[str], run_dir: RunDir, config: dict[str, Any], resume_step: int, enabled: bool = True):
        self.writers: list[Any] = []
        self.wandb = None
        if not enabled:
            return
        if "tensorboard" in names:
            optional_import("tensorboard", "--report-to tensorboard", "tracking")
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a resumed run is about to write again.
            self.writers.append(SummaryWriter(log_dir=str(run_dir.tensorboard), purge_step=resume_step + 1 if resume_step else None))
        if "wandb" in names:
            wandb = optional_import("wandb", "--report-to wandb", "tracking")
            mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
            self.wandb = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "unmask"),
                name=run_dir.path.name,
                dir=str(run_dir.path),
                config=config,
                mode=mode,
                resume="allow",
                id=f"unmask-{hashlib.sha256(str(run_dir.path.resolve()).encode()).hexdigest()[:10]}",
                settings=wandb.Settings(silent=True),
            )

    def log(self, record: dict) -> None:
        step = record["step"]
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for writer in self.writers:
            for key, value in values.items():
                writer.add_scalar(key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log(
                {(key.replace("eval_", "eval/") if key.startswith("eval_") else f"train/{key}"): v for key, v in values.items()}, step=step
            )

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.wandb is not None:
            self.wandb.finish()
