"""Resumable checkpoints: `output_dir/step_N/`, written atomically.

A checkpoint holds what `accelerator.save_state` writes (model, optimizer, scheduler, RNG of every rank;
DeepSpeed shards under ZeRO), the data position of every rank (`loader_<rank>.pt`), the run config, the
model config and tokenizer (so that `train.py export` needs nothing else), and `trainer_state.json` (step,
processes, last metrics, and the training command without machine paths, for the model card).

Everything is written into `.tmp-step_N/` and renamed to `step_N/` only when every rank has finished,
so a crash mid-save never leaves a complete-looking `step_N/`. `trainer_state.json` is written last
and marks a checkpoint as complete. Pruning renames a checkpoint to `.trash-step_N/` before deleting it,
for the same reason, and never deletes the checkpoint just saved or the one the run resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import safe_open

from training.card import portable_command
from training.config import RunConfig, save_run_config

_STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.json"


def is_complete(path: Path) -> bool:
    return (path / STATE_FILE).is_file()


def step_of(path: Path) -> int:
    return int(path.name.removeprefix("step_"))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete `step_N` folders, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)
    ]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    accelerator: Accelerator,
    cfg: RunConfig,
    step: int,
    model: torch.nn.Module,
    loader: Any,
    tokenizer: Any,
    metrics: dict[str, float],
    extra_state: dict[str, Any] | None = None,
    protect: tuple[Path, ...] = (),
) -> Path:
    """Write `output_dir/step_<step>/`. Collective: every rank must call it at the same step. `extra_state`
    goes into trainer_state.json; `protect`: checkpoints that pruning must keep (the one resumed from)."""
    output_dir = Path(cfg.output_dir)
    final = output_dir / f"step_{step}"
    tmp = output_dir / f".tmp-step_{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    torch.save(loader.state_dict(), tmp / f"loader_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_run_config(cfg, tmp / "config.yaml")
        accelerator.unwrap_model(model).config.save_pretrained(tmp / "model")
        tokenizer.save_pretrained(tmp / "tokenizer")
        state = {
            "step": step,
            "num_processes": accelerator.num_processes,
            "metrics": metrics,
            "command": portable_command(output_dir),
            **(extra_state or {}),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # the same step saved again (resumed at a step that was already saved)
            _discard(final)
        tmp.rename(final)
        prune(output_dir, cfg.train.keep_last, protect=(final, *protect))
    accelerator.wait_for_everyone()
    return final


def prune(output_dir: str | Path, keep_last: int, protect: tuple[Path, ...] = ()) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and never one in `protect`."""
    kept = {p.resolve() for p in protect}
    for path in list_checkpoints(output_dir)[:-keep_last]:
        if path.resolve() not in kept:
            _discard(path)


def _discard(path: Path) -> None:
    """Rename, then delete: a kill midway leaves `.trash-step_N/`, never a half-deleted `step_N/`."""
    trash = path.with_name(f".trash-{path.name}")
    if trash.exists():
        shutil.rmtree(trash)
    path.rename(trash)
    shutil.rmtree(trash)


def remove_partial(output_dir: str | Path) -> None:
    """Delete leftovers of interrupted saves and prunes (main process, before training starts)."""
    root = Path(output_dir)
    if root.is_dir():
        for path in (*root.glob(".tmp-step_*"), *root.glob(".trash-step_*")):
            shutil.rmtree(path)


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer_state.json; ValueError when it is unreadable (e.g. cut short)."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{STATE_FILE} is unreadable ({err})") from err
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError(f"{STATE_FILE} holds no step")
    return state


def weights_a_save_may_drop(model: torch.nn.Module) -> set[str]:
    """State-dict names a checkpoint may lack without losing anything. A safetensors save keeps one tensor of
    each storage: tied weights (lm_head = embeddings) keep one name, and every empty tensor (a memory-free
    model's slots, shape (0, ...)) shares the null storage, so all but one of those are dropped."""
    tied = set(model.all_tied_weights_keys) if model.config.tie_word_embeddings else set()
    return tied | _empty_tensors(model)


def _empty_tensors(model: torch.nn.Module) -> set[str]:
    return {name for name, tensor in model.state_dict().items() if tensor.numel() == 0}


def _model_load_kwargs(path: Path, model: torch.nn.Module) -> dict[str, Any]:
    """accelerate's strict load refuses a memory-free model's checkpoint (its dropped empty tensors, above).
    Load non-strictly only after checking the file holds every other weight and nothing unknown, so a file
    that really lacks weights still fails. DeepSpeed checkpoints load through the engine: no change."""
    weights = path / "model.safetensors"
    if not weights.is_file() or not _empty_tensors(model):
        return {}
    with safe_open(weights, framework="pt") as f:
        saved = set(f.keys())
    expected = set(model.state_dict())
    missing, unexpected = expected - saved - weights_a_save_may_drop(model), saved - expected
    if missing or unexpected:
        raise RuntimeError(
            f"model.safetensors does not match the model (missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)})"
        )
    return {"strict": False}


def load_checkpoint(
    accelerator: Accelerator, path: Path, loader: Any, model: torch.nn.Module
) -> dict[str, Any]:
    """Restore model/optimizer/scheduler/RNG and this rank's data position; return trainer_state. `model` is
    the unwrapped model (the names its weights are saved under)."""
    state = read_state(path)
    if state.get("num_processes") != accelerator.num_processes:
        raise RuntimeError(
            f"{path} was written by {state.get('num_processes')} processes, this run has "
            f"{accelerator.num_processes}: resume with the same number of processes"
        )
    loader_file = path / f"loader_{accelerator.process_index}.pt"
    if not loader_file.is_file():  # checked first: load_state below would change the model before failing
        raise FileNotFoundError(f"{loader_file.name} is missing")
    accelerator.load_state(str(path), **_model_load_kwargs(path, model))
    loader.load_state_dict(torch.load(loader_file, weights_only=False))
    return state
