"""What a run records as it goes: metrics.jsonl, one JSON object a line (read back through
`RunDir.read_metrics`, the one reader of it), and the trackers it also goes to. Only rank 0 writes.
"""

from __future__ import annotations

import json

from unmask.storage.files import atomic_write_text, disk_full_guard
from unmask.storage.rundir import RunDir


class MetricsLog:
    """metrics.jsonl: one JSON object a line; a resumed run drops lines past its checkpoint."""

    def __init__(self, run_dir: RunDir, resume_step: int | None, enabled: bool = True, trackers=None):
        self.path, self.enabled, self.trackers = run_dir.metrics, enabled, trackers
        self.evals: dict[int, dict] = {}
        if enabled and resume_step is not None and self.path.exists():
            kept = [r for r in run_dir.read_metrics()[0] if isinstance(r.get("step"), int) and r["step"] <= resume_step]
            self.evals = {r["step"]: r for r in kept if "eval_loss" in r}
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def eval_at(self, step: int) -> dict:
        """The held-out record already logged at `step` ({} if none)."""
        return self.evals.get(step, {})

    def write(self, record: dict) -> None:
        if self.enabled:
            with disk_full_guard(self.path, "a metrics line"), open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if self.trackers is not None:
                self.trackers.log(record)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
