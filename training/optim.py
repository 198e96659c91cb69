"""AdamW parameter groups and the warmup + cosine learning-rate schedule.

Groups (empty ones are dropped):
- `decay`:        weight matrices and embeddings, weight decay `weight_decay`, base lr;
- `no_decay`:     norms, biases and memory slots (`.memory.`), no weight decay, base lr;
- `memory_write`: the memory write rule, its gates and the slots' read bias, no weight decay,
                  lr × `memory_lr_multiplier` (a gate at the base rate barely moves, docs/design.md §7).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from training.config import OptimConfig


def param_group_name(name: str, param: torch.Tensor) -> str:
    if ".memory.write." in name or name.endswith(".memory.read_bias"):
        return "memory_write"
    if ".memory." in name or "norm" in name or name.endswith(".bias") or param.ndim < 2:
        return "no_decay"
    return "decay"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "no_decay": [], "memory_write": []}
    for name, param in model.named_parameters():  # tied weights appear once
        if param.requires_grad:
            groups[param_group_name(name, param)].append(param)
    settings = {
        "decay": {"weight_decay": cfg.weight_decay, "lr": cfg.lr},
        "no_decay": {"weight_decay": 0.0, "lr": cfg.lr},
        "memory_write": {"weight_decay": 0.0, "lr": cfg.lr * cfg.memory_lr_multiplier},
    }
    param_groups = [
        {"params": params, "name": name, **settings[name]} for name, params in groups.items() if params
    ]
    # The fused/foreach kernels change float summation order across devices; the default keeps CPU runs exact.
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: float, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of each group's lr for the update at optimizer step `step` (0-based): linear warmup
    from lr/warmup_steps to lr, then cosine down to lr * min_lr_ratio at `max_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int, num_processes: int
) -> LambdaLR:
    """A prepared scheduler is stepped `num_processes` times per optimizer step (accelerate assumes the
    per-process dataloader got shorter). Counting in scheduler steps / num_processes keeps the curve in
    optimizer steps, whatever the number of processes."""

    def factor(scheduler_step: int) -> float:
        return lr_factor(scheduler_step // num_processes, cfg, max_steps)

    return LambdaLR(optimizer, factor)
