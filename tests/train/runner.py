"""Run `train.py` in a subprocess, plainly or under `accelerate launch`, with the Hub and wandb offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
