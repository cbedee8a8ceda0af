"""The run folder's layout, in one place: every path a run writes, and how to read them back.

    RUN/
      config.yaml        the resolved settings (feed back with --config)
      metrics.jsonl      one JSON object a line, appended as the run goes
      summary.json       written when the run finishes
      .lock              held while a process trains in the folder
      base/              the model's config.json and tokenizer, without weights
      checkpoints/step-00000500/   resumable checkpoints (see `checkpoint`)
      model/             the final model (save_pretrained), once the run finishes
      tensorboard/       event files with --report-to tensorboard
      downstream/        fine-tuning and probe results of the run's checkpoints
      compare/           `unmask compare BASE RUN`'s report, chart and numbers
      curves.png         `unmask plot RUN`'s chart

A fine-tuning's folder (`unmask finetune --out OUT`) has the same config.yaml, metrics.jsonl,
summary.json, checkpoints/ and model/, and `result.json`, one seed's result; with several
seeds, each seed's run is `OUT/seed-N/`.

Every other module asks a `RunDir` for these paths; none spells them itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from unmask.storage.files import is_building, read_json_lines

_STEP_DIR = re.compile(r"^step-(\d+)$")
PRETRAINING_RUN, FINE_TUNING_RUN = "pretraining", "fine-tuning"
"""What `RunDir.kind` tells apart."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def step_of(path: Path) -> int | None:
    """The step a checkpoint folder is named for; None for any other name."""
    match = _STEP_DIR.match(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunDir:
    """A run folder: the paths in it, its checkpoints by step, and whether it is a run at all."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def lock(self) -> Path:
        return self.path / ".lock"

    @property
    def base(self) -> Path:
        return self.path / "base"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def downstream(self) -> Path:
        return self.path / "downstream"

    @property
    def compare(self) -> Path:
        return self.path / "compare"

    @property
    def result(self) -> Path:
        """A fine-tuning seed's result.json."""
        return self.path / "result.json"

    def seed(self, seed: int) -> RunDir:
        """The run of one seed of a fine-tuning of several."""
        return RunDir(self.path / f"seed-{seed}")

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    def foreign_entries(self) -> list[str]:
        """Names in the folder that no run writes (the user's own files), sorted."""
        own = {p.name for p in (self.config, self.metrics, self.summary, self.lock, self.base, self.model, self.checkpoints)}
        own |= {p.name for p in (self.tensorboard, self.downstream, self.compare, self.curves)}
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in own and not is_building(p.name))

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / step_dir_name(step)

    def checkpoint_steps(self) -> list[tuple[int, Path]]:
        """(step, folder) of every checkpoint folder by its name (not yet verified), oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [(step, p) for p in self.checkpoints.iterdir() if p.is_dir() and (step := step_of(p)) is not None]
        return sorted(found)

    def has_model(self) -> bool:
        return (self.model / "config.json").is_file()

    def has_base(self) -> bool:
        return (self.base / "config.json").is_file()

    def is_run(self) -> bool:
        """Whether the folder is (or was begun as) an unmask run: it has checkpoints, or its
        config.yaml beside the metrics or the base model that training writes with it (a
        config.yaml alone could be anyone's)."""
        if not self.path.is_dir():
            return False
        return self.checkpoints.is_dir() or (self.config.is_file() and (self.metrics.is_file() or self.base.is_dir()))

    def kind(self) -> str | None:
        """What trained in the folder, from its config.yaml (or, for one seed of several, its
        parent's): `pretraining` (`unmask train`, with its --data stores), `fine-tuning`
        (`unmask finetune`, with its --train data and --task), or None for neither."""
        for settings in (self.read_settings(), RunDir(self.path.parent).read_settings() if self.path.name.startswith("seed-") else {}):
            if "train" in settings and "task" in settings:
                return FINE_TUNING_RUN
            if "data" in settings:
                return PRETRAINING_RUN
        return None

    def read_settings(self) -> dict:
        """config.yaml as written, untyped ({} when it is missing or unreadable): for a glance at
        a run's settings; `--config` and `--resume` read it typed and checked instead."""
        try:
            values = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return {}
        return values if isinstance(values, dict) else {}

    def read_metrics(self, after: int = 0, strict: bool = False) -> tuple[list[dict], int]:
        """Records of metrics.jsonl from line `after` on, and the number of complete lines
        (`files.read_json_lines`: a torn last line is left out)."""
        return read_json_lines(self.metrics, after, strict)
