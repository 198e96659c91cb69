"""`train.py relayout`: a retain checkpoint's cache laid out anew (M, W, C) keeps its weights, meets the
equivalence contract, and continues training; rules with per-slot addresses are refused."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from modeling import BCTCache
from tests.modeling.conftest import TINY, tiny_model
from tests.train.runner import PYTHON, REPO, debug_args, run_train, train_env
from training.relayout import relayout_model

RETAIN = {"memory_write_rule": "retain", "memory_sink_slots": 2, "memory_slots": 6}


@torch.no_grad()
def test_unchanged_layout_gives_the_same_logits():
    model = tiny_model(**RETAIN)
    ids = torch.randint(0, TINY["vocab_size"], (2, 8 * TINY["window"] + 5))
    same = relayout_model(model)
    assert torch.equal(model(ids).logits, same(ids).logits)


@torch.no_grad()
def test_slots_traded_for_chunk_entries_at_equal_capacity():
    """M 6 -> 8, C 4 -> 2 (W 8): 18 entries both; sinks and every other weight kept, the retained slots
    resampled, and the new layout's parallel forward equals its token-by-token decode."""
    model = tiny_model(**RETAIN)
    wider = relayout_model(model, memory_slots=8, chunk_size=2)
    assert wider.config.kv_capacity == model.config.kv_capacity == 18
    old, new = model.state_dict(), wider.state_dict()
    for name, tensor in old.items():
        if name.endswith("memory.read_bias"):
            assert torch.equal(new[name][:, :2], tensor[:, :2])  # the sinks
            assert new[name].shape == (2, 8)
            # retained slots 2..7 take old slots 2, 2, 3, 4, 4, 5
            assert torch.equal(new[name][:, 2:], tensor[:, [2, 2, 3, 4, 4, 5]])
        elif ".memory.init_" not in name:
            assert torch.equal(new[name], tensor), name
    ids = torch.randint(0, TINY["vocab_size"], (1, 8 * TINY["window"] + 3))
    parallel = wider(ids).logits
    cache = BCTCache(wider.config)
    decoded = torch.cat(
        [wider(ids[:, i : i + 1], cache=cache, use_cache=True).logits for i in range(ids.shape[1])], 1
    )
    assert (decoded - parallel).abs().max() <= 1e-4
    assert (parallel - model(ids).logits).abs().max() > 1e-3  # the layout is read: not the old model


def test_addressed_rules_and_bad_capacity_are_refused():
    with pytest.raises(ValueError, match=r"memory_write_rule = 'gated'.*\['retain'\]"):
        relayout_model(tiny_model(memory_write_rule="gated"), memory_slots=8)
    with pytest.raises(ValueError, match=r"window = 6 .*multiple of chunk_size=4"):
        relayout_model(tiny_model(**RETAIN), window=6)


def test_relayout_command_then_continue(tmp_path, data_cache):
    """A retain run's export laid out anew by the command (M 8 -> 16, W 16 -> 8, C 16 -> 8: 40 -> 32 entries)
    and continued from with the new capacity restated."""
    run = tmp_path / "run"
    retain = (
        "model.memory_write_rule=retain",
        "model.memory_sink_slots=2",
        "max_steps=2",
        "train.save_every=0",
    )
    run_train(debug_args(run, data_cache, *retain, "train.eval_every=0"))
    out = tmp_path / "m16"
    command = [PYTHON, "train.py", "relayout", str(run / "export"), "--out", str(out)]
    done = subprocess.run(
        [*command, "--memory-slots", "16", "--window", "8", "--chunk-size", "8"],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "M 8 -> 16, W 16 -> 8, C 16 -> 8; cache entries per layer and head 40 -> 32" in done.stdout
    saved = json.loads((out / "config.json").read_text())
    assert (saved["memory_slots"], saved["window"], saved["chunk_size"]) == (16, 8, 8)
    assert (out / "tokenizer.json").is_file() and (out / "modeling_bct.py").is_file()
    continued = tmp_path / "continued"
    capacity = ("model.memory_slots=16", "model.window=8", "model.chunk_size=8", "model.config=null")
    run_train(debug_args(continued, data_cache, *retain, *capacity, f"init_from={out}", "train.eval_every=0"))
    assert json.loads((continued / "export" / "config.json").read_text())["memory_slots"] == 16
    refused = subprocess.run(
        [*command, "--window", "12"], cwd=REPO, env=train_env(), capture_output=True, text=True
    )
    assert (
        refused.returncode == 2
        and "window = 12" in refused.stderr
        and "multiple of chunk_size=16" in refused.stderr
    )
