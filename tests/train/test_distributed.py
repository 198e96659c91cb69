"""Two CPU processes under DDP, DeepSpeed ZeRO-2 and ZeRO-3 reproduce the single-process run at the same
global batch (4 sequences: 1 process x 4 vs 2 processes x 2), including the learning-rate curve."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.train.cards import check_card
from tests.train.runner import debug_args, losses, run_train
from training.checkpoint import list_checkpoints
from training.tracking import read_metrics

# Float32 sums in a different order (all-reduce of two half-batch gradients) drift by a few 1e-6 in 20 steps.
TOLERANCE = 1e-4


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["ddp", "zero2", "zero3"])
def test_two_processes_match_single_process(kind, baseline, baseline_metrics, data_cache, tmp_path):
    out = tmp_path / "run"
    # A probe of 3 passkeys: dealt to 2 ranks, one repeats an example that must not count (training/probe.py).
    probe = ("probe.every=10", "probe.lengths=[192]", "probe.depths=[0]", "probe.samples=3")
    run_train(debug_args(out, data_cache, "train.micro_batch_size=2", *probe), kind=kind, timeout=900)
    metrics = read_metrics(out / "metrics.jsonl")
    probed = {m["step"]: m["probe/passkey"] for m in metrics if "probe/passkey" in m}
    assert sorted(probed) == [10, 20] and all(v in (0, 1 / 3, 2 / 3, 1) for v in probed.values())
    single, multi = losses(baseline_metrics), losses(metrics)
    assert sorted(multi) == list(range(1, 21))
    for step in single:
        assert multi[step] == pytest.approx(single[step], abs=TOLERANCE), step
    lr = {m["step"]: m["train/lr"] for m in metrics if "train/lr" in m}
    assert lr == {
        m["step"]: m["train/lr"] for m in baseline_metrics if "train/lr" in m
    }  # scheduler sized right
    val = [m["val/loss"] for m in metrics if "val/loss" in m]
    assert val == pytest.approx([m["val/loss"] for m in baseline_metrics if "val/loss" in m], abs=TOLERANCE)
    # Both ranks saved their data position; the export holds the full (gathered) weights.
    assert [p.name for p in list_checkpoints(out)] == ["step_10", "step_20"]
    assert {p.name for p in (out / "step_20").glob("loader_*.pt")} == {"loader_0.pt", "loader_1.pt"}
    exported, reference = (
        load_file(out / "export" / "model.safetensors"),
        load_file(baseline / "export" / "model.safetensors"),
    )
    assert exported.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(exported[name], reference[name], atol=1e-3, rtol=0)
    # The card counts the whole model (not this rank's shard) and records the launch without machine paths.
    card = check_card(out / "export", tmp_path, baseline.parent)
    assert card.text.count("parameters**") == 1 and "accelerate launch --num_processes 2" in card.text
    if kind != "ddp":
        assert f"--use_deepspeed --deepspeed_config_file launch/deepspeed/{kind}.json train.py" in card.text
