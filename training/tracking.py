"""Where metrics go: `metrics.jsonl` in the run dir (always) and Accelerate's trackers (when configured).

wandb follows its own environment (WANDB_MODE=offline writes `wandb/offline-run-*` for a later
`wandb sync`; WANDB_PROJECT, WANDB_DIR). The run id is kept in `output_dir/tracking.json`, so a
resumed run continues the same wandb run.
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from training.config import RunConfig, flat_config


class MetricsFile:
    """One JSON object per line: {"step": N, "train/loss": ..., ...}. Main process only. A non-finite value
    is written as null (bare NaN is not JSON), and a line cut short by a killed run is dropped on resume."""

    def __init__(self, path: str | Path, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (they will be logged again)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [json.dumps(r) for r in read_metrics(self.path) if r["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def set_aside(self) -> Path | None:
        """A fresh run (nothing resumed) in a folder with an old metrics.jsonl: rename that file to
        `metrics.before-<time>.jsonl`, so its rows are kept and not mixed with the new run's."""
        if not (self.enabled and self.path.is_file()):
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.path.stat().st_mtime))
        kept = self.path.with_name(f"metrics.before-{stamp}.jsonl")
        self.path.rename(kept)
        return kept


def _finite_or_null(record: dict[str, Any]) -> dict[str, Any]:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that does not parse (a run killed mid-write) is skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def init_trackers(accelerator: Accelerator, cfg: RunConfig) -> None:
    """Start the configured trackers (a no-op when `tracking.report_to` is none)."""
    if not cfg.tracking.trackers:
        return
    out = Path(cfg.output_dir)
    run_name = cfg.tracking.run_name or out.resolve().name
    init_kwargs: dict[str, dict[str, Any]] = {}
    if "wandb" in cfg.tracking.trackers:
        wandb_kwargs: dict[str, Any] = {
            "name": run_name,
            "id": _wandb_run_id(accelerator, out),
            "resume": "allow",
        }
        if "WANDB_DIR" not in os.environ:
            wandb_kwargs["dir"] = str(out)
        init_kwargs["wandb"] = wandb_kwargs
    project = cfg.tracking.project or os.environ.get("WANDB_PROJECT", "bct")
    accelerator.init_trackers(project, config=flat_config(cfg), init_kwargs=init_kwargs)


def _wandb_run_id(accelerator: Accelerator, out: Path) -> str:
    path = out / "tracking.json"
    if path.is_file():
        return json.loads(path.read_text())["wandb_run_id"]
    run_id = uuid.uuid4().hex[:8]
    if accelerator.is_main_process:  # only the main process starts wandb
        path.write_text(json.dumps({"wandb_run_id": run_id}))
    return run_id
