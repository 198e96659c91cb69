"""User mistakes end in one line naming the file, field or value and what to do, with exit status 2, before
the accelerator, tokenizer or data start (`train.main` in-process: an escaping exception fails the test)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

import train
from tests.train.runner import ACCELERATE, REPO, train_env

DEBUG = str(REPO / "configs" / "debug.yaml")


def one_line_error(capsys, argv: list[str]) -> str:
    status = train.main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_steps: 5\noptim: {lr: 1e-3\n")
    err = one_line_error(capsys, ["--config", str(bad)])
    assert f"--config '{bad}': not valid YAML at line" in err


@pytest.mark.parametrize("case", ["output-dir-is-a-file", "empty-file", "empty-folder", "no-text-files"])
def test_paths_that_cannot_work(tmp_path, capsys, case):
    data = tmp_path / "data"
    data.mkdir()
    if case == "output-dir-is-a-file":
        (tmp_path / "out").write_text("")
        overrides, expected = [f"output_dir={tmp_path / 'out'}"], "is a file: expected a folder"
    elif case == "empty-file":
        (data / "a.txt").write_text("")
        overrides, expected = [f"data.source={data / 'a.txt'}"], "it is empty"
    elif case == "empty-folder":
        (data / "a.txt").write_text("")
        (data / "b.jsonl").write_text("")
        overrides, expected = [f"data.source={data}"], "no non-empty documents"
    else:
        (data / "notes.csv").write_text("a,b\n")
        overrides, expected = [f"data.source={data}"], "a directory holding .txt/.jsonl/.parquet files"
    err = one_line_error(capsys, ["--config", DEBUG, f"output_dir={tmp_path / 'run'}", *overrides])
    assert expected in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no unwritable folder to test with")
def test_unwritable_output_dir(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    err = one_line_error(capsys, ["--config", DEBUG, f"output_dir={locked / 'run'}"])
    assert "is not writable" in err


def test_uncached_dataset_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    err = one_line_error(
        capsys, ["--config", DEBUG, f"output_dir={tmp_path}", "data.source=hf:nobody/missing-set"]
    )
    assert "local datasets cache" in err


@pytest.mark.parametrize("content", ["", "{}"], ids=["empty", "no-model-type"])
def test_init_from_folder_with_a_useless_config(tmp_path, capsys, content):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(content)
    err = one_line_error(capsys, ["--config", DEBUG, f"output_dir={tmp_path / 'run'}", f"init_from={folder}"])
    assert f"init_from = '{folder}'" in err


def test_init_from_a_bct_export_with_another_capacity(tmp_path, capsys, baseline):
    """A BCT checkpoint is continued as it is: restating its capacity is allowed, changing it is refused."""
    export = baseline / "export"
    slots = json.loads((export / "config.json").read_text())["memory_slots"]
    run = ["--config", DEBUG, f"output_dir={tmp_path / 'run'}", f"init_from={export}", "model.config=null"]
    err = one_line_error(capsys, [*run, f"model.memory_slots={slots + 1}"])
    assert (
        f"model.memory_slots = {slots + 1}" in err and f"{slots} or unset" in err and "BCT checkpoint" in err
    )


def test_export_of_nothing(tmp_path, capsys):
    err = one_line_error(capsys, ["export", str(tmp_path / "nowhere")])
    assert "neither a step_N checkpoint nor a run folder" in err


def test_export_of_a_corrupt_checkpoint_or_to_a_file(tmp_path, capsys, baseline):
    step = sorted((p for p in baseline.glob("step_*") if p.is_dir()), key=lambda p: int(p.name[5:]))[-1]
    copy = tmp_path / "run" / step.name
    shutil.copytree(step, copy)
    (tmp_path / "out.txt").write_text("")
    err = one_line_error(capsys, ["export", str(copy), "--out", str(tmp_path / "out.txt")])
    assert "is a file" in err
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    err = one_line_error(capsys, ["export", str(copy)])
    assert f"checkpoint {copy} cannot be exported" in err and "try an older step_N" in err


@pytest.mark.slow
def test_config_error_through_accelerate_launch_is_one_line(tmp_path):
    # `-q`: the launcher itself prints no traceback when the trainer fails (its status is then 1).
    launcher = [ACCELERATE, "launch", "-q", "--num_processes", "1", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run(
        [*launcher, "train.py", "--config", DEBUG, f"output_dir={tmp_path}", "optim.lr=-1"],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1] == "config error: optim.lr = -1.0 is not allowed: expected a learning rate >= 0.", lines
    assert json.dumps(lines).count("config error") == 1
