"""AdamW groups (decay, no decay, memory write/gate at its own rate), the schedule, and options that must
not change the numbers (gradient checkpointing, gradient accumulation)."""

from __future__ import annotations

import json

import pytest
import torch

from modeling import BCTConfig, BCTForCausalLM
from tests.train.runner import REPO, debug_args, losses, run_train
from training.config import OptimConfig
from training.optim import build_optimizer, build_scheduler, lr_factor
from training.tracking import read_metrics


def test_param_groups():
    model = BCTForCausalLM(BCTConfig(**json.loads((REPO / "configs/model/debug.json").read_text())))
    cfg = OptimConfig(lr=1e-3, memory_lr_multiplier=10.0, weight_decay=0.1)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {k: {names[id(p)] for p in g["params"]} for k, g in groups.items()}
    assert (groups["decay"]["weight_decay"], groups["decay"]["lr"]) == (0.1, 1e-3)
    assert (groups["no_decay"]["weight_decay"], groups["no_decay"]["lr"]) == (0.0, 1e-3)
    assert (groups["memory_write"]["weight_decay"], groups["memory_write"]["lr"]) == (0.0, 1e-2)
    assert by_group["memory_write"] and all(
        ".memory.write." in n or n.endswith(".memory.read_bias") for n in by_group["memory_write"]
    )
    assert "model.layers.0.self_attn.memory.init_keys" in by_group["no_decay"]
    assert (
        "model.norm.weight" in by_group["no_decay"]
        and "model.layers.0.input_layernorm.weight" in by_group["no_decay"]
    )
    assert (
        "model.layers.0.self_attn.q_proj.weight" in by_group["decay"]
        and "model.embed_tokens.weight" in by_group["decay"]
    )
    assert sum(len(v) for v in by_group.values()) == len(
        names
    )  # every parameter once (tied head counted once)


@pytest.mark.parametrize("num_processes", [1, 2, 4])
def test_schedule_counts_optimizer_steps_whatever_the_process_count(num_processes):
    """accelerate steps a prepared scheduler num_processes times per update; the curve must not care."""
    cfg = OptimConfig(lr=1.0, warmup_steps=3, min_lr_ratio=0.1)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg, max_steps=10, num_processes=num_processes)
    seen = []
    for _ in range(10):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        for _ in range(num_processes):
            scheduler.step()
    expected = [lr_factor(k, cfg, 10) for k in range(10)]
    assert seen == pytest.approx(expected)
    assert expected[0] == pytest.approx(1 / 3) and expected[2] == 1.0 and expected[-1] > 0.1
    assert lr_factor(10, cfg, 10) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(["train.gradient_checkpointing=true"], id="gradient-checkpointing"),
        pytest.param(["train.micro_batch_size=2", "train.grad_accum=2"], id="grad-accum-2x2"),
    ],
)
def test_options_that_keep_the_numbers(overrides, baseline_metrics, data_cache, tmp_path):
    """Recomputing activations, or splitting the batch of 4 into 2 accumulated halves, trains the same."""
    out = tmp_path / "run"
    run_train(debug_args(out, data_cache, *overrides, "train.save_every=0", "train.eval_every=0"))
    got = losses(read_metrics(out / "metrics.jsonl"))
    for step, loss in losses(baseline_metrics).items():
        assert got[step] == pytest.approx(loss, abs=1e-5), step
