"""Run `train.py` in a subprocess, plainly or under `accelerate launch`, with the Hub and wandb offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY_LLAMA_REPO = "bct-tests/tiny-llama"  # the Hub id under which conftest caches the tiny Llama


def train_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        TOKENIZERS_PARALLELISM="false",
        # Tiny models: one thread per process is fastest and keeps 2-process runs off each other's cores.
        OMP_NUM_THREADS="1",
        TORCH_EXTENSIONS_DIR=os.environ.get(
            "TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions")
        ),
    )
    env.pop("WANDB_DIR", None)
    env.update(extra)
    return env


def launch_prefix(kind: str) -> list[str]:
    """The command before `train.py` for one launch kind: single, ddp, zero2, zero3."""
    if kind == "single":
        return [PYTHON]
    config = {
        "ddp": "launch/cpu_ddp.yaml",
        "zero2": "launch/cpu_zero2.yaml",
        "zero3": "launch/cpu_zero3.yaml",
    }[kind]
    return [ACCELERATE, "launch", "--config_file", config]


def run_train(
    args: list[str], kind: str = "single", timeout: int = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    extra = {"ACCELERATE_USE_CPU": "1"} if kind == "ddp" else {}
    proc = subprocess.run(
        [*launch_prefix(kind), "train.py", *args],
        cwd=REPO,
        env=train_env(**extra, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def debug_args(output_dir: Path, data_cache: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "configs/debug.yaml",
        f"output_dir={output_dir}",
        f"data.cache_dir={data_cache}",
        *extra,
    ]


def losses(metrics: list[dict]) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics if "train/loss" in m}


def copy_checkpoint(src: Path, dst_run: Path) -> Path:
    dst_run.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(src, dst_run / src.name))


def start_train(args: list[str], prefix: list[str] | None = None, **env: str) -> subprocess.Popen:
    """`train.py` started in the background (single process unless `prefix`, e.g. `launch_prefix("ddp")`),
    output piped: for tests that signal or kill it mid-run."""
    return subprocess.Popen(
        [*(prefix or launch_prefix("single")), "train.py", *args],
        cwd=REPO,
        env=train_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(metrics: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until `metrics` (a run's metrics.jsonl) has logged `step`; fail if `proc` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.is_file() and any(
            json.loads(line).get("step", -1) >= step
            for line in metrics.read_text().splitlines()
            if line.strip()
        ):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    raise AssertionError("timed out waiting for training steps")
