"""Checkpoints: exact resume, preemption by SIGTERM, atomic saves, keep-last-K."""

from __future__ import annotations

import signal

import pytest
import torch

from tests.train.runner import (
    copy_checkpoint,
    debug_args,
    launch_prefix,
    losses,
    run_train,
    start_train,
    wait_for_step,
)
from training.checkpoint import list_checkpoints, prune, remove_partial
from training.tracking import read_metrics


def test_resume_from_step_10_matches_the_straight_run(baseline, baseline_metrics, data_cache, tmp_path):
    """The baseline's step_10 is the state after 10 steps; resuming it must replay steps 11-20 exactly."""
    run = tmp_path / "run"
    copy_checkpoint(baseline / "step_10", run)
    proc = run_train(debug_args(run, data_cache))
    assert "resumed from" in proc.stdout and "at step 10" in proc.stdout
    straight, resumed = losses(baseline_metrics), losses(read_metrics(run / "metrics.jsonl"))
    assert sorted(resumed) == list(range(11, 21))
    for step in range(11, 21):
        assert abs(resumed[step] - straight[step]) <= 1e-6, (step, resumed[step], straight[step])
    # Same data order: the loader sits at the same position after step 20 in both runs.
    a = torch.load(baseline / "step_20" / "loader_0.pt", weights_only=False)
    b = torch.load(run / "step_20" / "loader_0.pt", weights_only=False)
    assert a == b and a["batch"] == 20


def test_sigterm_saves_and_resume_auto_completes(data_cache, tmp_path):
    run = tmp_path / "run"
    args = debug_args(run, data_cache, "max_steps=60", "train.save_every=0", "train.eval_every=0")
    proc = start_train(args)
    wait_for_step(run / "metrics.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by a signal" in stdout
    (ckpt,) = list_checkpoints(run)
    stopped_at = int(ckpt.name.removeprefix("step_"))
    assert 3 <= stopped_at < 60 and not (run / "export").exists()

    run_train(args)  # resume: auto is the default
    steps = sorted(losses(read_metrics(run / "metrics.jsonl")))
    assert steps == list(range(1, 61))
    assert (run / "step_60" / "trainer_state.json").is_file() and (
        run / "export" / "model.safetensors"
    ).is_file()


@pytest.mark.distributed
def test_sigterm_to_one_rank_stops_both_at_the_same_step(data_cache, tmp_path):
    import psutil

    run = tmp_path / "run"
    args = debug_args(
        run,
        data_cache,
        "max_steps=200",
        "train.micro_batch_size=2",
        "train.save_every=0",
        "train.eval_every=0",
    )
    proc = start_train(args, launch_prefix("ddp"), ACCELERATE_USE_CPU="1")
    wait_for_step(run / "metrics.jsonl", 3, proc)
    workers = [
        p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())
    ]
    (rank1,) = [p for p in workers if p.environ().get("RANK") == "1"]
    rank1.send_signal(signal.SIGTERM)  # rank 0 never sees a signal
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    (ckpt,) = list_checkpoints(run)
    states = [torch.load(ckpt / f"loader_{r}.pt", weights_only=False) for r in (0, 1)]
    step = int(ckpt.name.removeprefix("step_"))
    assert step < 200 and states[0]["batch"] == states[1]["batch"] == step


def test_partial_saves_are_never_resumed_and_get_cleaned(tmp_path):
    for name, complete in (("step_4", True), ("step_8", True), ("step_12", False), (".tmp-step_16", False)):
        (tmp_path / name).mkdir()
        if complete:
            (tmp_path / name / "trainer_state.json").write_text("{}")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_8"]  # step_12 lacks its marker
    remove_partial(tmp_path)
    assert not (tmp_path / ".tmp-step_16").exists()
    prune(tmp_path, keep_last=1)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_8"]
