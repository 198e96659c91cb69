"""`python -m eval train-pair --warmup`: a memory-free warm-up run, then a BCT and its full-attention twin that
both start from the warm-up's weights (converted to a plain Llama), on the debug shape."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from eval.tools import train_pair as train_pair_tool
from tests.train.runner import PYTHON, REPO, train_env

DEBUG = yaml.safe_load((REPO / "configs" / "debug.yaml").read_text())


def write_config(path: Path, **sections) -> Path:
    config = {**DEBUG, "max_steps": 2, **sections}
    config["train"] = {**DEBUG["train"], "eval_every": 0, "save_every": 2}
    path.write_text(yaml.safe_dump(config))
    return path


# The capacity of every BCT these tests train (the pair's and the far stages').
RETAIN_MODEL = {"memory_slots": 4, "window": 16, "chunk_size": 8, "memory_write_rule": "retain"}


def warmup_config(tmp_path: Path, data: dict) -> Path:
    """A memory-free warm-up on induction rows: the debug shape, its window covering the row."""
    shape = yaml.safe_load(Path(REPO / DEBUG["model"]["config"]).read_text())
    return write_config(
        tmp_path / "warmup.yaml",
        model={**shape, "memory_slots": 0, "window": data["seq_len"]},
        data={**data, "synthetic_tasks": ["induction"], "synthetic_fraction": 1.0},
    )


def train_pair(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "eval", "train-pair", *args],
        cwd=REPO,
        env=train_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_warm_started_pair_starts_from_the_warmup_weights(data_cache, tmp_path):
    """With one `--stretch` stage and two `--far` stages: warm-up -> longer look-back stage -> pair -> the twin
    continued as a BCT -> that BCT continued, each from the last's weights."""
    data = {**DEBUG["data"], "cache_dir": str(data_cache)}
    warmup = warmup_config(tmp_path, data)
    pair = write_config(tmp_path / "pair.yaml", init_from="set/by/train-pair", model=RETAIN_MODEL, data=data)
    far = [
        write_config(
            tmp_path / f"far{stage}.yaml", init_from="set/by/train-pair", model=RETAIN_MODEL, data=data
        )
        for stage in (1, 2)
    ]
    out = tmp_path / "pair"
    proc = train_pair(
        *("--out", str(out), "--config", str(pair), "--warmup", str(warmup), "--stretch", "40:64:2"),
        *("--far", *map(str, far)),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first, llama = out / "warmup" / "llama", out / "warmup-lookback40" / "llama"
    assert yaml.safe_load((llama / "config.json").read_text())["model_type"] == "llama"
    stage = yaml.safe_load((out / "warmup-lookback40" / "config.yaml").read_text())
    assert stage["init_from"] == str(first) and stage["data"]["induction_lookback"] == 40
    stage_init = load_file(out / "warmup-lookback40" / "init" / "model.safetensors")
    name = "model.layers.1.self_attn.q_proj.weight"
    assert torch.equal(stage_init[name], load_file(first / "model.safetensors")[name])
    warm = load_file(llama / "model.safetensors")
    for member in ("bct", "full"):
        assert yaml.safe_load((out / member / "config.yaml").read_text())["init_from"] == str(llama)
        init = load_file(out / member / "init" / "model.safetensors")  # before its own training
        assert torch.equal(init["model.embed_tokens.weight"], warm["model.embed_tokens.weight"])
        assert torch.equal(init[name], warm[name])
    assert yaml.safe_load((out / "bct" / "export" / "config.json").read_text())["memory_slots"] == 4
    assert (out / "llama" / "config.json").is_file()  # the twin, as a plain Llama for the baselines
    # The far stages: the twin's Llama -> far1 (a retain BCT) -> far2, from far1's last export (no keep_best).
    far1, far2 = out / "far-far1", out / "far-far2"
    assert yaml.safe_load((far1 / "config.yaml").read_text())["init_from"] == str(out / "llama")
    assert yaml.safe_load((far2 / "config.yaml").read_text())["init_from"] == str(far1 / "export")
    name = "model.layers.0.self_attn.memory.write.score"
    assert torch.equal(
        load_file(far2 / "init" / "model.safetensors")[name],
        load_file(far1 / "export" / "model.safetensors")[name],
    )
    assert yaml.safe_load((far2 / "export" / "config.json").read_text())["memory_write_rule"] == "retain"


def test_far_stages_from_the_warmup_skip_the_pair(data_cache, tmp_path):
    """`--far-from warmup`: warm-up -> a far stage from the warm-up's Llama; no pair is trained."""
    data = {**DEBUG["data"], "cache_dir": str(data_cache)}
    warmup = warmup_config(tmp_path, data)
    far = write_config(tmp_path / "far.yaml", init_from="set/by/train-pair", model=RETAIN_MODEL, data=data)
    out = tmp_path / "pair"
    proc = train_pair("--out", str(out), "--warmup", str(warmup), "--far", str(far), "--far-from", "warmup")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert yaml.safe_load((out / "far-far" / "config.yaml").read_text())["init_from"] == str(
        out / "warmup" / "llama"
    )
    assert (out / "far-far" / "export" / "config.json").is_file()
    assert not (out / "bct").exists() and not (out / "full").exists()


def test_far_from_the_warmup_needs_a_warmup():
    proc = train_pair("--far", "x.yaml", "--far-from", "warmup", timeout=120)
    assert proc.returncode == 2
    assert (
        "--far-from warmup starts the --far stages from the warm-up: give --warmup CONFIG and --far"
        in proc.stderr
    )


def test_far_pair_is_the_recipe_and_later_arguments_add_to_it(monkeypatch):
    """`--far-pair` parses as FAR_PAIR_RECIPE written out; `--out`, `--far-from` and key=value after it still
    reach the run (not swallowed by the recipe's --far), and every config it names is in the repository."""
    monkeypatch.chdir(REPO)
    recipe = train_pair_tool.FAR_PAIR_RECIPE.split()
    late = ["--out", "runs/x", "--far-from", "warmup", "max_steps=3"]
    assert train_pair_tool.parse_args(["--far-pair", *late]) == train_pair_tool.parse_args([*recipe, *late])
    args = train_pair_tool.parse_args(["--far-pair", *late])
    assert args.out == "runs/x" and args.far_from == "warmup" and args.overrides == ["max_steps=3"]
    assert args.parallel and [stage[0] for stage in args.stretch] == [64, 128, 256, 504]
    for config in [args.config, args.warmup, *args.far]:
        assert (REPO / config).is_file(), config
    assert args.far[-1].stem == train_pair_tool.FAR_PAIR_BCT.split("/")[0].removeprefix("far-")
