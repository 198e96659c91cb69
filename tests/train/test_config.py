"""The run config: YAML + overrides, types, validation messages, and failing before anything heavy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from data.schema import ConfigError
from tests.train.runner import REPO, run_train
from training.config import RunConfig, load_run_config, save_run_config

DEBUG = REPO / "configs" / "debug.yaml"


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name model JSONs relative to the repository root


def load(*overrides: str):
    return load_run_config(DEBUG, list(overrides))


def test_overrides_reach_every_section():
    cfg = load(
        "max_steps=7", "optim.lr=1e-3", "model.window=32", "data.seq_len=128", "tracking.report_to=[wandb]"
    )
    assert (cfg.max_steps, cfg.optim.lr, cfg.model.window, cfg.data.seq_len) == (7, 1e-3, 32, 128)
    assert cfg.tracking.trackers == ["wandb"]
    assert load("model.num_hidden_layers=3").model.fields["num_hidden_layers"] == 3  # inline BCTConfig field


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        pytest.param(
            "optim.lrr=1e-3", ["unknown key 'optim.lrr'", "Did you mean 'optim.lr'?"], id="unknown-key"
        ),
        pytest.param(
            "max_step=5", ["unknown key 'max_step'", "Did you mean 'max_steps'?"], id="unknown-top-key"
        ),
        pytest.param(
            "model.windw=32",
            ["unknown key 'model.windw'", "Did you mean 'model.window'?"],
            id="unknown-model-key",
        ),
        pytest.param(
            "train.micro_batch_size=four",
            ["train.micro_batch_size = 'four'", "expected an integer"],
            id="wrong-type",
        ),
        pytest.param("train.compile=3", ["train.compile = 3", "true/false"], id="wrong-type-bool"),
        pytest.param("optim.lr=-0.001", ["optim.lr = -0.001", "a learning rate >= 0"], id="negative-lr"),
        pytest.param("optim.lr=.inf", ["optim.lr = inf", "a learning rate >= 0"], id="infinite-lr"),
        pytest.param("optim.eps=.nan", ["optim.eps = nan", "a number > 0"], id="nan-eps"),
        pytest.param("optim.betas=[0.9]", ["optim.betas = [0.9]", "two numbers in [0, 1)"], id="short-betas"),
        pytest.param("seed=-1", ["seed = -1", "an integer >= 0"], id="negative-seed"),
        pytest.param(
            "data.seq_len=100",
            ["data.seq_len = 100", "multiple of model.chunk_size=16"],
            id="seq-len-not-multiple-of-chunk",
        ),
        pytest.param(
            "init_from=/nonexistent/model",
            ["init_from = '/nonexistent/model'", "no such file or folder"],
            id="missing-init-from",
        ),
        pytest.param(
            "init_from=missing.gguf",
            ["init_from = 'missing.gguf'", "an existing .gguf file"],
            id="missing-gguf",
        ),
        pytest.param(
            "model.window=24", ["model.window = 24", "multiple of chunk_size=16"], id="bct-config-check"
        ),
        pytest.param(
            "train.mixed_precision=fp8",
            ["train.mixed_precision = 'fp8'", "'auto', 'no', 'bf16'"],
            id="literal",
        ),
        pytest.param(
            "resume=runs/nowhere/step_3",
            ["resume = 'runs/nowhere/step_3'", "auto, none"],
            id="missing-resume",
        ),
        pytest.param(
            "push_to_hub=me/my/bct",
            ["push_to_hub = 'me/my/bct'", "a Hub repo id, `name` or `namespace/name`"],
            id="bad-repo-id",
        ),
        pytest.param(
            "hub.strategy=always",
            ["hub.strategy = 'always'", "'end', 'every_save', 'checkpoint'"],
            id="hub-strategy",
        ),
        pytest.param(
            "hub.strategy=checkpoint",
            ["hub.strategy = 'checkpoint'", "'end' unless push_to_hub names a repo"],
            id="hub-strategy-without-repo",
        ),
        pytest.param(
            "hub.private=yes please",
            ["hub.private = 'yes please'", "true/false"],
            id="hub-private",
        ),
        pytest.param(
            "train.cpu_threads=0", ["train.cpu_threads = 0", "an integer >= 1, or null"], id="threads"
        ),
        pytest.param("export.temperature=0", ["export.temperature = 0", "a number > 0"], id="temperature"),
        pytest.param("export.top_p=1.5", ["export.top_p = 1.5", "a number in (0, 1]"], id="top-p"),
        pytest.param(
            "data.piece_chars=0", ["data.piece_chars = 0", "a positive integer or null"], id="piece-chars"
        ),
        pytest.param(
            "train.keep_best=probe/passkey",
            ["train.keep_best = 'probe/passkey'", "only with probe.every > 0"],
            id="keep-best-without-probe",
        ),
        pytest.param(
            "train.keep_best=val/acc",
            ["train.keep_best = 'val/acc'", "'val/loss', 'probe/passkey' or null"],
            id="keep-best-metric",
        ),
        pytest.param(
            "probe.depths=[0.5, 2]", ["probe.depths = [0.5, 2.0]", "fractions in [0, 1]"], id="probe-depths"
        ),
        pytest.param(
            "data.passkey_depth_range=[0.5, 0.2]",
            ["data.passkey_depth_range = (0.5, 0.2)", "two fractions [low, high]"],
            id="passkey-depths",
        ),
        pytest.param(
            "data.synthetic_answer_mean=row",
            ["data.synthetic_answer_mean = 'row'", "'tokens', 'rows'"],
            id="answer-mean",
        ),
    ],
)
def test_bad_configs_name_field_value_and_allowed(override, expected):
    with pytest.raises(ConfigError) as err:
        load(override)
    for text in expected:
        assert text in str(err.value)


def test_hub_branch_is_checked_and_a_good_one_passes():
    with pytest.raises(
        ConfigError, match=r"hub.revision = '\.\./main' is not allowed: expected null \(main\) or"
    ):
        load("push_to_hub=me/bct", "hub.revision=../main")
    cfg = load("push_to_hub=me/bct", "hub.revision=exp/run-1", "hub.private=true", "hub.strategy=every_save")
    assert (cfg.hub.revision, cfg.hub.private, cfg.hub.strategy) == ("exp/run-1", True, "every_save")


def test_yaml_exponent_without_dot_reads_as_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(DEBUG.read_text() + "\n")
    assert load_run_config(path, ["optim.lr=3e-4"]).optim.lr == 3e-4  # YAML 1.1 reads 3e-4 as a string


def test_resume_none_refuses_a_dir_with_checkpoints(tmp_path):
    (tmp_path / "step_5").mkdir()
    (tmp_path / "step_5" / "trainer_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        load(f"output_dir={tmp_path}", "resume=none")
    assert load(f"output_dir={tmp_path}", "resume=auto").resume == "auto"


def test_saved_config_reloads_identically(tmp_path):
    cfg = load("optim.betas=[0.9, 0.99]", "model.memory_write_rule=fifo")
    save_run_config(cfg, tmp_path / "config.yaml")
    assert load_run_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_validate(path, tiny_llama_dir, monkeypatch):
    # The multi-GPU template names a Hub model; offline, point it at a local checkpoint of the same family.
    overrides = [f"init_from={tiny_llama_dir}"] if "multigpu" in path else []
    # The GPU configs stream Hub datasets: validate them as a machine online would (nothing is downloaded).
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = load_run_config(REPO / "configs" / path, overrides)
    assert cfg.max_steps >= 1


@pytest.mark.parametrize("path", sorted(p.name for p in (REPO / "eval" / "configs").glob("*.yaml")))
def test_eval_configs_parse(path):
    """The bench's run configs: every field is known and allowed (their init_from runs exist only after the
    bench's earlier stages, so the files are not checked here)."""
    cfg = RunConfig.parse(yaml.safe_load((REPO / "eval" / "configs" / path).read_text()))
    assert cfg.max_steps >= 1


def test_uncached_hub_dataset_offline_is_refused_up_front(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"data.source = 'hf:nobody/no-such-set' .*local datasets cache"):
        load("data.source=hf:nobody/no-such-set")


def test_bad_config_fails_before_anything_heavy(tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    proc = run_train(["--config", "configs/debug.yaml", f"output_dir={out}", "optim.lr=-1"], check=False)
    assert proc.returncode == 2
    assert "config error: optim.lr = -1.0 is not allowed" in proc.stderr
    assert not Path(out).exists()  # no run dir, no tokenizer, no model
    assert time.monotonic() - start < 60


def test_unknown_key_in_model_json_is_caught(tmp_path):
    path = tmp_path / "size.json"
    path.write_text('{"hiden_size": 64}')
    with pytest.raises(
        ConfigError, match=r"unknown key 'model.hiden_size'. Did you mean 'model.hidden_size'\?"
    ):
        load(f"model.config={path}")
