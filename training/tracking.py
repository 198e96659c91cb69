"""Where metrics go: `metrics.jsonl` in the run dir (always) and Accelerate's trackers (when configured).

wandb follows its own environment (WANDB_MODE=offline writes `wandb/offline-run-*` for a later
`wandb sync`; WANDB_PROJECT, WANDB_DIR). The run id is kept in `output_dir/tracking.json`, so a
resumed run continues the same wandb run.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from training.config import RunConfig, flat_config


class MetricsFile:
    """One JSON object per line: {"step": N, "train/loss": ..., ...}. Main process only."""

    def __init__(self, path: str | Path, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def log(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """On resume: drop records of steps after the checkpoint (they will be logged again)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


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
