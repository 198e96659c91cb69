"""One process, configs/debug.yaml, 20 steps: learning, logs, checkpoints, trackers and the export."""

from __future__ import annotations

import json
import math
import re
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.cards import check_card
from tests.train.runner import PYTHON, REPO, copy_checkpoint, debug_args, losses, run_train, train_env
from training.checkpoint import list_checkpoints
from training.config import OptimConfig, RunConfig
from training.hub import export_and_push
from training.optim import lr_factor
from training.plots import plot_metrics
from training.tracking import read_metrics


def test_debug_run_learns_and_writes_everything(baseline, baseline_metrics):
    loss = losses(baseline_metrics)
    assert sorted(loss) == list(range(1, 21))
    first, last = sum(loss[s] for s in (1, 2, 3)) / 3, sum(loss[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.3, f"loss did not fall: {first:.3f} -> {last:.3f}"
    val = [m["val/loss"] for m in baseline_metrics if "val/loss" in m]
    assert len(val) == 2 and val[1] < val[0]
    assert [p.name for p in list_checkpoints(baseline)] == ["step_10", "step_20"]
    assert not list(baseline.glob(".tmp-*"))
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"):
        assert (baseline / "export" / name).is_file(), name
    assert (baseline / "export" / "modeling_bct.py").is_file()  # trust_remote_code
    assert yaml.safe_load((baseline / "config.yaml").read_text())["max_steps"] == 20


def test_logged_keys_and_lr_curve(baseline, baseline_metrics):
    step1 = baseline_metrics[0]
    for key in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "memory/attn_share",
        "memory/write_gate",
    ):
        assert key in step1 and math.isfinite(step1[key]), key
    assert 0 < step1["memory/attn_share"] < 1 and 0 < step1["memory/write_gate"] < 1
    cfg = yaml.safe_load((baseline / "config.yaml").read_text())
    optim = OptimConfig.parse(cfg["optim"])
    for m in baseline_metrics:
        if "train/lr" in m:
            expected = optim.lr * lr_factor(m["step"] - 1, optim, cfg["max_steps"])
            assert m["train/lr"] == pytest.approx(expected, rel=1e-9)


def test_wandb_offline_run_folder_holds_logged_keys(baseline):
    runs = list((baseline / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((baseline / "wandb").iterdir())
    (record,) = runs[0].glob("run-*.wandb")
    raw = record.read_bytes()  # wandb's protobuf log: keys appear as plain strings
    for key in (b"train/loss", b"train/lr", b"memory/write_gate", b"val/ppl", b"optim.lr"):
        assert key in raw, key
    assert list((baseline / "tensorboard").rglob("events.out.tfevents.*"))


def test_export_loads_in_fresh_process_and_generates(baseline):
    export = baseline / "export"
    script = textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        model = AutoModelForCausalLM.from_pretrained({str(export)!r}, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained({str(export)!r}, trust_remote_code=True)
        ids = tok("def ", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 8, out.shape
        print(type(model).__module__.split(".")[0], type(model).__name__, model.config.kv_capacity)
        print(model.num_parameters())
        """
    )
    # A fresh interpreter, started outside the repository.
    proc = subprocess.run(
        [PYTHON, "-c", script], cwd=export.parent, env=train_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The class comes from the export's own code (transformers_modules), not from this repository.
    assert proc.stdout.split()[-4:-1] == ["transformers_modules", "BCTForCausalLM", "40"]
    card = check_card(export, baseline.parent)  # tied embeddings, one process
    assert f"**{int(proc.stdout.split()[-1]):,} parameters**" in card.text
    assert "**40 key/value entries per KV head**" in card.text and "20,480" in card.text  # 2*2*2*16*40*4 B
    assert "trust_remote_code=True" in card.text and "val/ppl" in card.text
    assert "python train.py --config configs/debug.yaml output_dir=run data.cache_dir=" in card.text
    assert card.data.base_model is None and card.data.license == "apache-2.0"


def test_export_cli_matches_end_of_run_export_and_push_fails_offline(baseline, tmp_path):
    """`train.py export RUN` exports the run's newest checkpoint; the push fails offline (exit 1)."""
    out = tmp_path / "export"
    proc = run_export(str(baseline), "--out", str(out), "--push-to-hub", "me/bct-test", "--revision", "dev")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "HF_HUB_OFFLINE=1" in proc.stderr and f"kept at {out}" in proc.stderr
    assert_same_weights(baseline / "export", out)
    assert json.loads((out / "config.json").read_text())["auto_map"]
    card, end_of_run = check_card(out, tmp_path, baseline), check_card(baseline / "export", baseline)
    assert 'from_pretrained("me/bct-test", revision="dev", trust_remote_code=True)' in card.text
    assert card.data.eval_results == end_of_run.data.eval_results
    command = re.search(r"```bash\n(.*)\n```", card.text).group(1)  # recorded with the checkpoint
    assert command == re.search(r"```bash\n(.*)\n```", end_of_run.text).group(1)
    assert export_and_push(baseline, tmp_path / "never", "me/bad//id") == 2  # checked before any export
    assert not (tmp_path / "never").exists()


def test_push_to_hub_offline_keeps_checkpoints_and_reports_failures(baseline, data_cache, tmp_path):
    """hub.strategy=checkpoint with the Hub unreachable: resume the baseline at step 10, save at 15 and 20.
    Every upload fails at once (HF_HUB_OFFLINE=1), training finishes (exit 0), every checkpoint and the
    export are kept, and a warning lists each failed upload with its reason."""
    run = tmp_path / "run"
    copy_checkpoint(baseline / "step_10", run)
    args = ["push_to_hub=me/bct-test", "hub.strategy=checkpoint", "train.save_every=5", "train.keep_last=5"]
    proc = run_train(debug_args(run, data_cache, *args))
    assert [p.name for p in list_checkpoints(run)] == ["step_10", "step_15", "step_20"]
    assert (run / "export" / "model.safetensors").is_file() and not (run / ".hub").exists()
    assert "warning: 4 of 4 uploads to the Hub repo me/bct-test failed" in proc.stderr
    offline = "the Hub is offline (HF_HUB_OFFLINE=1)"
    for what in (
        "step 15 model",
        "step 15 checkpoint (last-checkpoint/)",
        "step 20 checkpoint (last-checkpoint/)",
    ):
        assert f"  - {what}: {offline}" in proc.stderr, what
    assert f"  - final export: {offline}; kept at {run / 'export'}" in proc.stderr
    assert f"python train.py export {run} --push-to-hub me/bct-test" in proc.stderr
    check_card(run / "export", tmp_path)


def test_run_config_round_trips(baseline):
    saved = yaml.safe_load((Path(baseline) / "config.yaml").read_text())
    cfg = RunConfig.parse(saved)
    assert (
        cfg.tracking.trackers == ["wandb", "tensorboard"] and cfg.model.config == "configs/model/debug.json"
    )


def test_mixed_run_logs_recall_on_its_synthetic_answers(baseline_metrics, data_cache, tmp_path):
    out = tmp_path / "run"
    mixing = ("data.synthetic_fraction=1.0", "data.synthetic_tasks=[mqar]", "data.synthetic_loss_weight=0.5")
    steps = ("max_steps=4", "train.save_every=0", "train.eval_every=0")
    run_train(
        debug_args(out, data_cache, *mixing, "data.mqar_num_pairs=4", "data.mqar_num_queries=4", *steps)
    )
    logged = [m["train/answer_accuracy"] for m in read_metrics(out / "metrics.jsonl") if "train/loss" in m]
    assert len(logged) == 4 and all(0 <= accuracy <= 1 for accuracy in logged)
    assert not any("train/answer_accuracy" in m for m in baseline_metrics)  # only when rows are mixed in
    drawn = plot_metrics(read_metrics(out / "metrics.jsonl"), tmp_path / "curves.png")
    assert drawn[:3] == ["train/loss", "val/loss", "train/answer_accuracy"]  # its own panel, after the losses


def test_a_memory_free_run_resumes_and_its_checkpoint_exports(data_cache, tmp_path):
    """memory_slots=0 (the bench pair's full-attention twin): its empty slot tensors share one null storage,
    so a checkpoint keeps only one of them. Resuming and `train.py export --checkpoint` must still work, and
    the export of the last checkpoint equals the end-of-run export."""
    run = tmp_path / "full"
    full = ["model.memory_slots=0", "model.window=64", "train.save_every=2", "train.eval_every=0"]
    run_train(debug_args(run, data_cache, *full, "max_steps=2"))
    run_train(debug_args(run, data_cache, *full, "max_steps=4"))  # resumes from step_2
    assert [p.name for p in list_checkpoints(run)][-1] == "step_4"
    out = tmp_path / "export-step_4"
    proc = run_export("--checkpoint", str(run / "step_4"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(run / "export", out)


def run_export(*args: str) -> subprocess.CompletedProcess:
    """`train.py export ARGS` in a subprocess, Hub and wandb offline."""
    return subprocess.run(
        [PYTHON, "train.py", "export", *args],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_same_weights(a: Path, b: Path) -> None:
    """Two export folders hold the same tensor names and values."""
    a_weights, b_weights = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert a_weights.keys() == b_weights.keys()
    assert all(torch.equal(a_weights[k], b_weights[k]) for k in a_weights)
