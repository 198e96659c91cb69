"""Training never loses good work: the non-finite guard, branches on resume, one trainer per folder, the
walk back past a damaged checkpoint, refusal of a changed model, and metrics.jsonl without bare NaN."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.runner import (
    ACCELERATE,
    REPO,
    copy_checkpoint,
    debug_args,
    losses,
    run_train,
    start_train,
    train_env,
    wait_for_step,
)
from training.checkpoint import list_checkpoints, prune
from training.guard import NonFiniteError, NonFiniteGuard
from training.lines import plan_resume, record_line
from training.tracking import MetricsFile, read_metrics


def _finite(step_dir: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(step_dir / "model.safetensors").values())


@pytest.mark.slow  # trains in a subprocess
def test_nan_run_keeps_its_finite_checkpoints_and_exits_naming_the_step(data_cache, tmp_path):
    """The issue's repro: an absurd learning rate makes step 2 non-finite."""
    run = tmp_path / "run"
    args = ["optim.lr=1000000.0", "optim.warmup_steps=0", "train.save_every=1", "train.keep_last=2"]
    proc = run_train(debug_args(run, data_cache, *args), check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "step 2: non-finite loss" in line and "before its optimizer step" in line
    assert [p.name for p in list_checkpoints(run)] == ["step_1"] and _finite(run / "step_1")
    text = (run / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]


class _OneProcess:
    num_processes = 1
    printed: list[str]

    def __init__(self) -> None:
        self.printed = []

    def print(self, text: str) -> None:
        self.printed.append(text)


def test_guard_skips_bad_updates_up_to_the_limit_then_stops():
    accelerator = _OneProcess()
    guard = NonFiniteGuard(accelerator, max_skips=2)
    assert guard.update_ok(1, torch.tensor(2.0), torch.tensor(0.5))
    assert not guard.update_ok(2, torch.tensor(math.nan), torch.tensor(0.5))
    assert not guard.update_ok(3, torch.tensor(2.0), torch.tensor(math.inf))
    assert "step 3: non-finite gradient norm; update skipped (2 of" in accelerator.printed[-1]
    with pytest.raises(NonFiniteError, match=r"step 4: non-finite loss and gradient norm"):
        guard.update_ok(4, torch.tensor(math.inf), torch.tensor(math.nan))
    with pytest.raises(NonFiniteError, match="after DeepSpeed's optimizer step"):
        NonFiniteGuard(accelerator, max_skips=5).update_ok(1, torch.tensor(math.nan), None, stepped=True)


def test_metrics_file_writes_null_for_non_finite_and_drops_a_cut_line(tmp_path):
    metrics = MetricsFile(tmp_path / "metrics.jsonl", enabled=True)
    metrics.log({"step": 1, "train/loss": 2.0})
    metrics.log({"step": 2, "train/loss": math.nan, "train/grad_norm": math.inf})
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "train/lo')  # a run killed mid-write
    assert read_metrics(tmp_path / "metrics.jsonl")[1] == {
        "step": 2,
        "train/loss": None,
        "train/grad_norm": None,
    }
    metrics.truncate_after(1)
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 1, "train/loss": 2.0}]
    kept = metrics.set_aside()  # a fresh run in this folder
    assert not (tmp_path / "metrics.jsonl").exists() and kept.name.startswith("metrics.before-")
    assert read_metrics(kept) == [{"step": 1, "train/loss": 2.0}]


def test_prune_keeps_what_it_is_told_to_and_leaves_no_half_deleted_checkpoint(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"step_{step}").mkdir()
        (tmp_path / f"step_{step}" / "trainer_state.json").write_text("{}")
    prune(tmp_path, keep_last=1, protect=(tmp_path / "step_4",))
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_4", "step_8"]
    assert not list(tmp_path.glob(".trash-*"))


def _checkpoints(folder: Path, *steps: int) -> None:
    for step in steps:
        (folder / f"step_{step}").mkdir(parents=True)
        (folder / f"step_{step}" / "trainer_state.json").write_text(json.dumps({"step": step}))


def test_where_a_run_continues(tmp_path):
    top, other = tmp_path / "run", tmp_path / "other"
    _checkpoints(other, 4)
    fresh = plan_resume(top, str(other / "step_4"))  # an empty folder: its main line, from the other run
    assert (fresh.run_dir, fresh.checkpoint, fresh.note) == (top, (other / "step_4").resolve(), None)
    _checkpoints(top, 8, 10)
    assert plan_resume(top, "auto").checkpoint == top / "step_10"
    assert plan_resume(top, str(top / "step_10")).run_dir == top  # the newest: the same line goes on
    older = plan_resume(top, str(top / "step_8"))
    assert older.run_dir == top / "branch-1-from-step_8" and "both lines are kept" in older.note
    record_line(top, older)  # the branch was started, then stopped before its first save
    assert plan_resume(top, "auto").checkpoint == (top / "step_8").resolve()
    _checkpoints(top / "branch-1-from-step_8", 9)
    for again in ("auto", str(top / "step_8")):  # resume=auto, or the same command once more
        plan = plan_resume(top, again)
        assert (plan.run_dir, plan.checkpoint) == (
            top / "branch-1-from-step_8",
            top / "branch-1-from-step_8" / "step_9",
        )
    from_other = plan_resume(top, str(other / "step_4"))  # another run's checkpoint: a branch of its own
    assert from_other.run_dir == top / "branch-2-from-step_4"


@pytest.mark.slow  # trains in a subprocess
def test_branch_resume_and_sigterm_keep_both_lines(baseline, data_cache, tmp_path):
    """The issue's case: resume another run's step_10 into a folder holding step_20, stop it with SIGTERM,
    rerun the same command: the branch continues; the folder's own step_20 and the source are untouched."""
    run = tmp_path / "run"
    copy_checkpoint(baseline / "step_20", run)
    before = (run / "step_20" / "model.safetensors").read_bytes()
    args = debug_args(
        run,
        data_cache,
        f"resume={baseline / 'step_10'}",
        "max_steps=40",
        "train.save_every=2",
        "train.keep_last=1",
        "train.eval_every=0",
    )
    branch = run / "branch-1-from-step_10"
    proc = start_train(args)
    wait_for_step(branch / "metrics.jsonl", 13, proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "starting the branch" in stdout and "stopped by a signal" in stdout
    (stopped,) = list_checkpoints(branch)
    assert (run / "step_20" / "model.safetensors").read_bytes() == before
    assert [p.name for p in list_checkpoints(baseline)] == ["step_10", "step_20"]

    rerun = run_train(args)  # the same command: continues the branch, not the folder's step_20
    assert "continuing branch-1-from-step_10" in rerun.stdout and f"resumed from {stopped}" in rerun.stdout
    assert sorted(losses(read_metrics(branch / "metrics.jsonl"))) == list(range(11, 41))
    # keep_last=1, and the checkpoint this run resumed from is never pruned by it
    assert [p.name for p in list_checkpoints(branch)] == [stopped.name, "step_40"]
    assert [p.name for p in list_checkpoints(run)] == ["step_20"]
    assert (run / "step_20" / "model.safetensors").read_bytes() == before
    assert json.loads((run / "lines.json").read_text())["active"] == branch.name


@pytest.mark.slow  # trains in a subprocess
def test_sigterm_to_the_accelerate_launcher_reaches_the_trainer(data_cache, tmp_path):
    """`accelerate launch` with one process does not forward signals; the trainer asks for SIGTERM when its
    launcher dies (training/launcher.py), so it saves and stops instead of running on as an orphan."""
    run = tmp_path / "run"
    args = debug_args(run, data_cache, "max_steps=100000", "train.save_every=0", "train.eval_every=0")
    launcher = subprocess.Popen(
        [ACCELERATE, "launch", "--num_processes", "1", "--cpu", "train.py", *args],
        cwd=REPO,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(run / "metrics.jsonl", 3, launcher)
    launcher.send_signal(signal.SIGTERM)
    stdout, _ = launcher.communicate(timeout=120)  # EOF only once the trainer, which shares the pipe, is gone
    assert "stopped by a signal" in stdout
    (saved,) = list_checkpoints(run)
    assert 3 <= int(saved.name.removeprefix("step_")) < 100000


@pytest.mark.slow  # trains in a subprocess
def test_a_second_trainer_is_refused_and_touches_nothing_and_a_killed_holder_frees_the_folder(
    baseline, data_cache, tmp_path
):
    run = tmp_path / "run"
    copy_checkpoint(baseline / "step_20", run)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from training.lock import RunLock; lock = RunLock({str(run)!r}); lock.acquire(); input()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        deadline = time.monotonic() + 60
        while not (run / ".lock.owner").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        files = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.name != ".lock"}
        proc = run_train(debug_args(run, data_cache, "max_steps=22"), check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith("error: output_dir") and f"pid {holder.pid} on " in line
        assert {
            p: (p.stat().st_mtime_ns, p.stat().st_size) for p in run.rglob("*") if p.name != ".lock"
        } == files
    finally:
        holder.kill()  # SIGKILL: the OS drops its lock, the owner file stays behind
        holder.wait()
    proc = run_train(debug_args(run, data_cache, "max_steps=22", "train.eval_every=0"))
    assert "resumed from" in proc.stdout and (run / "step_22").is_dir()


@pytest.mark.slow  # trains in a subprocess
def test_resume_walks_back_past_damaged_checkpoints(data_cache, tmp_path):
    """Four damaged checkpoints, one per kind of damage; resume loads step_2 and replays the same losses."""
    run = tmp_path / "run"
    args = debug_args(
        run, data_cache, "max_steps=10", "train.save_every=2", "train.keep_last=5", "train.eval_every=0"
    )
    run_train(args)
    straight = losses(read_metrics(run / "metrics.jsonl"))
    for step, name in ((10, "trainer_state.json"), (8, "model.safetensors"), (6, "optimizer.bin")):
        path = run / f"step_{step}" / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut short
    (run / "step_4" / "loader_0.pt").unlink()
    proc = run_train(args)
    for step in (10, 8, 6, 4):
        assert f"skipped checkpoint {run / f'step_{step}'}" in proc.stdout, proc.stdout[-3000:]
    assert f"resumed from {run / 'step_2'} at step 2" in proc.stdout
    resumed = losses(read_metrics(run / "metrics.jsonl"))
    assert resumed == straight
    assert [p.name for p in list_checkpoints(run)] == [f"step_{s}" for s in (2, 4, 6, 8, 10)]


@pytest.mark.slow  # trains in a subprocess
def test_resume_with_a_changed_model_or_data_is_refused_with_the_differences(baseline, data_cache, tmp_path):
    run = tmp_path / "run"
    copy_checkpoint(baseline / "step_20", run)
    proc = run_train(debug_args(run, data_cache, "model.window=32", "data.max_chars=200000"), check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert (
        "refused" in line and "model.window: 16 -> 32" in line and "data.max_chars: 300000 -> 200000" in line
    )
    assert "resume_allow_changes=true" in line
    assert [p.name for p in list_checkpoints(run)] == ["step_20"]


@pytest.mark.slow  # trains in a subprocess
def test_the_export_card_holds_no_machine_path_and_no_config_dump(baseline):
    text = (baseline / "export" / "README.md").read_text()
    for fragment in (str(REPO), str(baseline), "/tmp/", "/home/", "keep_last", "optim:", "save_every"):
        assert fragment not in text, fragment


@pytest.mark.slow
def test_sigkill_at_random_points_of_saves_then_resume_is_bit_identical(
    baseline, baseline_metrics, data_cache, tmp_path
):
    """Saving every step, the trainer is killed (SIGKILL) at a random moment after it has made progress,
    five times; every resume must end exactly where the uninterrupted baseline did."""
    run = tmp_path / "run"
    args = debug_args(run, data_cache, "train.save_every=1", "train.keep_last=2")
    rng = random.Random(0)
    kills, points = 0, []
    while kills < 5:
        logged = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
        proc = start_train(args)
        try:  # progress beyond anything logged before: this process has resumed and trains
            wait_for_step(run / "metrics.jsonl", max((r["step"] for r in logged), default=0) + 1, proc)
        except AssertionError:
            assert proc.returncode == 0
            break  # it finished before a kill: nothing left to interrupt
        if kills % 2 == 0:  # inside a save: once its temporary folder exists
            deadline = time.monotonic() + 10
            while not list(run.glob(".tmp-step_*")) and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.03))
        else:  # anywhere: in a step, a save, a prune or a metrics write
            time.sleep(rng.uniform(0.0, 0.3))
        points.append(sorted(p.name for p in run.iterdir() if "step_" in p.name))
        proc.kill()
        proc.communicate()
        kills += 1
    run_train(args)  # resume: auto, to the end
    assert losses(read_metrics(run / "metrics.jsonl")) == losses(baseline_metrics)
    final, straight = (
        load_file(run / "step_20" / "model.safetensors"),
        load_file(baseline / "step_20" / "model.safetensors"),
    )
    assert final.keys() == straight.keys() and all(torch.equal(final[k], straight[k]) for k in final)
    assert kills >= 4, points
