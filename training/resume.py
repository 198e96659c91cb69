"""Resuming safely: refuse a checkpoint whose run trained something else, walk back past one that will not load.

Refused (exit 2, every difference listed) unless `resume_allow_changes: true`: a model config that differs
from the checkpoint's `model/config.json`, and changed data settings, seed, micro batch size or gradient
accumulation (they decide which tokens each step sees). Skipped, with the reason printed: a checkpoint whose
marker, config, weights, optimizer or data position does not load; the previous checkpoint of the same
line is tried next (only when resuming `auto`-matically; a checkpoint named by `resume=` must load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from modeling import BCTConfig
from training.checkpoint import list_checkpoints, load_checkpoint, read_state, step_of
from training.guard import any_rank

# Saved-config keys that change where files go, not what is trained.
_DATA_PATHS = ("cache_dir", "hf_cache_dir")
# BCTConfig bookkeeping that differs between transformers versions or save paths.
_MODEL_BOOKKEEPING = (
    "transformers_version",
    "architectures",
    "auto_map",
    "_name_or_path",
    "dtype",
    "torch_dtype",
)
# Run-config fields outside `data:` that decide which tokens each step sees.
_ORDER_FIELDS = (("seed",), ("train", "micro_batch_size"), ("train", "grad_accum"))


class ResumeError(RuntimeError):
    """The run cannot resume: `str()` is the one line to print, `exit_code` the status to exit with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def config_differences(checkpoint: Path, run_config: dict[str, Any], model_config: Any) -> list[str]:
    """`name: saved -> now` for each setting of this run that differs from what `checkpoint` was trained with."""
    saved_run = yaml.safe_load((checkpoint / "config.yaml").read_text())
    saved_model = BCTConfig.from_pretrained(checkpoint / "model").to_dict()
    now_model = model_config.to_dict()
    found = [
        f"model.{k}: {saved_model.get(k)!r} -> {now_model.get(k)!r}"
        for k in sorted(set(saved_model) | set(now_model))
        if k not in _MODEL_BOOKKEEPING and saved_model.get(k) != now_model.get(k)
    ]
    saved_data, now_data = saved_run.get("data", {}), run_config.get("data", {})
    # Keys of both only: a setting added to the schema since the save is not a change of this run's.
    found += [
        f"data.{k}: {saved_data[k]!r} -> {now_data[k]!r}"
        for k in sorted(set(saved_data) & set(now_data))
        if k not in _DATA_PATHS and saved_data[k] != now_data[k]
    ]
    for keys in _ORDER_FIELDS:
        saved, now = _get(saved_run, keys), _get(run_config, keys)
        if saved is not None and now is not None and saved != now:
            found.append(f"{'.'.join(keys)}: {saved!r} -> {now!r}")
    return found


def _get(tree: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def resume(
    accelerator: Accelerator,
    checkpoint: Path,
    walk_back: bool,
    loader: Any,
    run_config: dict[str, Any],
    model: torch.nn.Module,
    allow_changes: bool,
) -> tuple[Path, dict[str, Any]]:
    """Load `checkpoint` (or, with `walk_back`, the newest older one of its folder that loads) into the
    unwrapped `model` and the rest of the run: returns the checkpoint loaded and its trainer_state. Collective: every rank takes the same decision."""
    candidates = [checkpoint]
    if walk_back:
        older = [c for c in list_checkpoints(checkpoint.parent) if step_of(c) < step_of(checkpoint)]
        candidates += older[::-1]
    skipped = []
    for candidate in candidates:
        try:
            state = read_state(candidate)
            differences = config_differences(candidate, run_config, model.config)
        except (OSError, ValueError, yaml.YAMLError) as err:
            skipped.append(_skip(accelerator, candidate, err))
            continue
        _refuse_changes(candidate, state, differences, accelerator.num_processes, allow_changes)
        if differences:  # allowed by resume_allow_changes
            accelerator.print(
                f"warning: resuming {candidate} with changed settings: {'; '.join(differences)}"
            )
        error = None
        try:
            load_checkpoint(accelerator, candidate, loader, model)
        # Anything a damaged file can raise: safetensors, torch.load (pickle, zip, EOF), a missing file.
        except Exception as err:
            error = err
        if any_rank(accelerator, error is not None):
            skipped.append(_skip(accelerator, candidate, error or "another process could not load it"))
            continue
        return candidate, state
    raise ResumeError(
        f"no checkpoint could be loaded ({'; '.join(skipped)}); nothing was changed. Repair or move them "
        "aside, or resume from another checkpoint with resume=<path to step_N>",
        exit_code=1,
    )


def _refuse_changes(
    checkpoint: Path, state: dict[str, Any], differences: list[str], processes: int, allow_changes: bool
) -> None:
    if state.get("num_processes") != processes:
        raise ResumeError(
            f"resume from {checkpoint} refused: it was written by {state.get('num_processes')} processes and "
            f"this run has {processes}; resume with the same number of processes",
            exit_code=2,
        )
    if differences and not allow_changes:
        raise ResumeError(
            f"resume from {checkpoint} refused: this run's settings differ from the checkpoint's "
            f"({'; '.join(differences)}). Resume with the saved settings, use another output_dir, or set "
            "resume_allow_changes=true to go on with the new ones",
            exit_code=2,
        )


def _skip(accelerator: Accelerator, checkpoint: Path, reason: object) -> str:
    text = f"{checkpoint.name}: {reason}".replace("\n", " ")[:300]
    accelerator.print(f"warning: skipped checkpoint {checkpoint}: it does not load ({text})")
    return text
