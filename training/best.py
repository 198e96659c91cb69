"""The best checkpoint of a run (`train.keep_best`), kept whatever the later steps do.

A run's newest checkpoints are not always its best: in one continued run, far passkey accuracy rose to 14
of 64 and fell to 0 while validation loss kept falling (docs/design.md §8.8), and `keep_last` pruning would
have deleted the peak. When the metric improves the trainer saves a checkpoint at that step, and this record
names it: `output_dir/best.json` = {"metric", "value", "step", "checkpoint"}, replaced atomically. Pruning
never deletes the checkpoint it names; at the end of the run it is exported to `output_dir/export-best`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BEST_FILE = "best.json"
LOWER_IS_BETTER = {"val/loss": True, "probe/passkey": False}


class BestCheckpoint:
    """The best value of `metric` so far and the checkpoint saved at its step (None before any). With
    `metric` None (keep_best off) nothing improves, and `restore` only clears an earlier run's record."""

    def __init__(self, output_dir: Path, metric: str | None) -> None:
        self.file = Path(output_dir) / BEST_FILE
        self.metric = metric
        self.value: float | None = None
        self.step: int | None = None

    @property
    def checkpoint(self) -> Path | None:
        return None if self.step is None else self.file.parent / f"step_{self.step}"

    def improved_by(self, measured: dict[str, float]) -> bool:
        """Whether `measured` (this step's metrics) holds the metric at a better value than the best so far
        (a tie does not: the earlier checkpoint stays)."""
        value = measured.get(self.metric) if self.metric is not None else None
        if value is None:
            return False
        if self.value is None:
            return True
        return value < self.value if LOWER_IS_BETTER[self.metric] else value > self.value

    def record(self, step: int, measured: dict[str, float], write: bool) -> None:
        """`step`'s checkpoint, just saved, is the new best (`measured` holds its value); `write`: this
        process writes best.json (main)."""
        value = measured[self.metric]
        self.step, self.value = step, value
        if write:
            record = {"metric": self.metric, "value": value, "step": step, "checkpoint": self.checkpoint.name}
            tmp = self.file.with_name(f".tmp-{BEST_FILE}")
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, self.file)  # a kill leaves the old record or the new one, never half of one

    def restore(self, resumed_step: int | None, write: bool) -> None:
        """Continue the record of a resumed run. A fresh run (`resumed_step` None) starts empty; so does a
        record of another metric, of a step past the one resumed from (that future is being redone), or one
        whose checkpoint is gone. `write`: this process deletes a record that does not apply (main)."""
        if self.file.is_file() and resumed_step is not None:
            try:
                record = json.loads(self.file.read_text())
                step, value, metric = int(record["step"]), float(record["value"]), record["metric"]
            except (OSError, ValueError, KeyError, TypeError):
                step, value, metric = -1, 0.0, None
            if (
                metric == self.metric
                and 0 <= step <= resumed_step
                and (self.file.parent / f"step_{step}").is_dir()
            ):
                self.step, self.value = step, value
                return
        if write:
            self.file.unlink(missing_ok=True)
