"""Continued training: `init_from` a Llama checkpoint (converted once into output_dir/init/, then loaded)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from tests.train.cards import check_card
from tests.train.runner import TINY_LLAMA_REPO, losses, run_train
from training.card import SMOLLM2_HUB_ID
from training.tracking import read_metrics


def continued_debug_run(out, data_cache, init_from: str, *overrides: str, **env: str) -> None:
    """configs/debug.yaml continued from `init_from` (its architecture: `model.config=null`), no checkpoints."""
    run_train(
        [
            "--config",
            "configs/debug.yaml",
            f"output_dir={out}",
            f"data.cache_dir={data_cache}",
            f"init_from={init_from}",
            "model.config=null",
            "train.save_every=0",
            *overrides,
        ],
        **env,
    )


def test_continue_from_tiny_llama_checkpoint(tiny_llama_dir, tiny_llama_hub_cache, data_cache, tmp_path):
    """From a Hub id (offline: the repo sits in the Hub cache). The export's card names it as base_model."""
    out = tmp_path / "run"
    overrides = ("model.memory_slots=4", "max_steps=8", "train.eval_every=0")
    continued_debug_run(out, data_cache, TINY_LLAMA_REPO, *overrides, HF_HUB_CACHE=str(tiny_llama_hub_cache))
    init = json.loads((out / "init" / "config.json").read_text())
    assert init["model_type"] == "bct" and init["memory_slots"] == 4 and init["num_hidden_layers"] == 2
    # The source's weights arrive unchanged in the converted init; only memory parameters are new.
    source = load_file(tiny_llama_dir / "model.safetensors")
    converted = load_file(out / "init" / "model.safetensors")
    assert torch.equal(
        source["model.layers.1.mlp.down_proj.weight"], converted["model.layers.1.mlp.down_proj.weight"]
    )
    assert any(".memory." in k for k in converted) and not any(".memory." in k for k in source)
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and "val/ppl" in metrics[0]  # the converted model, before any update
    assert math.isfinite(metrics[0]["val/source_ppl"])  # and the source model, on the same batches
    loss = losses(metrics)
    assert sorted(loss) == list(range(1, 9)) and all(torch.isfinite(torch.tensor(v)) for v in loss.values())
    assert (out / "step_8" / "trainer_state.json").is_file()
    assert (out / "export" / "model.safetensors").is_file() and (out / "export" / "tokenizer.json").is_file()
    card = check_card(out / "export", tmp_path, tiny_llama_hub_cache)  # untied embeddings
    assert card.data.base_model == TINY_LLAMA_REPO and card.data.license == "mit"  # the base model's
    assert f"continued from {TINY_LLAMA_REPO} (llama)" in card.text


def test_continue_from_a_bct_export(baseline, baseline_metrics, data_cache, tmp_path):
    """`init_from` an earlier run's export continues that BCT as it is: same weights and capacity (restated
    capacity is allowed), and its first evaluation is where the earlier run's last one ended."""
    export = baseline / "export"
    slots = json.loads((export / "config.json").read_text())["memory_slots"]
    out = tmp_path / "run"
    continued_debug_run(out, data_cache, str(export), f"model.memory_slots={slots}", "max_steps=2")
    exported, init = load_file(export / "model.safetensors"), load_file(out / "init" / "model.safetensors")
    assert exported.keys() == init.keys() and all(torch.equal(exported[k], init[k]) for k in exported)
    first = read_metrics(out / "metrics.jsonl")[0]
    assert first["step"] == 0 and "val/source_ppl" not in first  # a BCT checkpoint is its own source
    last_eval = [m for m in baseline_metrics if "val/ppl" in m][-1]
    assert last_eval["step"] == 20 and first["val/ppl"] == pytest.approx(last_eval["val/ppl"], rel=1e-4)
    assert (out / "export" / "model.safetensors").is_file()


@pytest.mark.slow
def test_continue_from_packaged_smollm2_gguf(data_cache, tmp_path):
    """configs/continue_smollm2.yaml shrunk to 2 steps of 2 x 128 tokens on CPU."""
    out = tmp_path / "run"
    proc = run_train(
        [
            "--config",
            "configs/continue_smollm2.yaml",
            f"output_dir={out}",
            f"data.cache_dir={data_cache}",
            "data.max_chars=1000000",
            "data.validation_fraction=0.2",
            "data.seq_len=128",
            "data.synthetic_tasks=[passkey]",  # 8 text MQAR pairs and questions do not fit 128 tokens
            "model.memory_slots=8",
            "model.window=64",
            "model.chunk_size=64",
            "max_steps=2",
            "optim.warmup_steps=1",
            "train.micro_batch_size=2",
            "train.grad_accum=1",
            "train.eval_batches=1",
            "train.save_every=0",
            "tracking.report_to=none",
            "export.max_new_tokens=8",
        ],
        timeout=900,
    )
    config = json.loads((out / "export" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    loss = losses(read_metrics(out / "metrics.jsonl"))
    assert list(loss) == [2] and loss[2] < 6.0, loss  # pretrained: far below uniform (ln 49152 = 10.8)
    assert "sample:" in proc.stdout
    card = check_card(out / "export", tmp_path)
    assert card.data.base_model == SMOLLM2_HUB_ID and card.data.license == "apache-2.0"
