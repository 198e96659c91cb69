"""The model card (training/card.py) and the Hub uploader (training/hub.py) without a training run: the
parameter count with and without tied embeddings, names instead of paths, the base model of a continued
run, and uploads that fail offline (the real `huggingface_hub`, HF_HUB_OFFLINE=1) without touching what is
kept locally."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

from modeling import BCTConfig, BCTForCausalLM, convert_to_bct
from tests.train.cards import check_card
from tests.train.runner import REPO
from training.card import (
    SMOLLM2_HUB_ID,
    base_model_info,
    count_parameters,
    dataset_name,
    portable_command,
    write_model_card,
)
from training.config import config_dict, load_run_config
from training.hub import HubUploader


def _run_config(out, *overrides):
    return config_dict(
        load_run_config(
            REPO / "configs" / "debug.yaml", [f"output_dir={out}", "data.cache_dir=c", *overrides]
        )
    )


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_card_counts_parameters_and_parses(tied, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    fields = json.loads((REPO / "configs" / "model" / "debug.json").read_text())
    config = BCTConfig(**{**fields, "tie_word_embeddings": tied})
    model = BCTForCausalLM(config)
    assert count_parameters(config) == model.num_parameters()
    out = tmp_path / "export"
    model.save_pretrained(out)
    command = portable_command(tmp_path / "run", ["train.py", f"output_dir={tmp_path / 'run'}"])
    write_model_card(
        out,
        config,
        _run_config(tmp_path / "run"),
        metrics={"val/loss": 3.5, "val/ppl": 33.1},
        sample=None,
        step=20,
        command=command,
        repo_id="me/bct",
        revision="dev",
    )
    card = check_card(out, tmp_path)
    assert card.data.license == "apache-2.0" and card.data.base_model is None
    assert card.data.datasets == ["python-stdlib"] and card.data.language == ["code", "en"]
    assert "**40 key/value entries per KV head**" in card.text and "20,480" in card.text
    assert 'from_pretrained("me/bct", revision="dev", trust_remote_code=True)' in card.text
    assert "python train.py output_dir=run" in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == {
        "loss": 3.5,
        "perplexity": 33.1,
    }


def test_command_keeps_no_machine_path(tmp_path, monkeypatch):
    for name in ("ACCELERATE_MIXED_PRECISION", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "runs" / "try"
    argv = [
        str(REPO / "train.py"),
        "--config",
        str(REPO / "configs" / "debug.yaml"),
        f"output_dir={run}",
        f"resume={run / 'step_10'}",
        "data.cache_dir=/home/someone/.cache/bct",
        "data.source=hf:/root/corpora/books",
        "export.sample_prompt=def f(x):",
    ]
    assert portable_command(run, argv) == (
        "python train.py --config configs/debug.yaml output_dir=try resume=try/step_10 data.cache_dir=bct "
        "data.source=hf:books 'export.sample_prompt=def f(x):'"
    )
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert portable_command(run, ["train.py"]).startswith(
        "accelerate launch --num_processes 2 --use_deepspeed --zero_stage 3 train.py"
    )
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "launch" / "deepspeed" / "zero3.json"))
    assert portable_command(run, ["train.py"]).startswith(
        "accelerate launch --num_processes 2 --use_deepspeed --deepspeed_config_file launch/deepspeed/zero3.json"
    )


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("stdlib", "python-stdlib"),
        ("shakespeare", "shakespeare"),
        ("/home/me/corpus/books.jsonl", "books.jsonl"),
        ("/home/me/corpus/*.txt", "corpus"),
        ("hf:HuggingFaceFW/fineweb-edu", "HuggingFaceFW/fineweb-edu"),
        ("hf:/home/me/saved-dataset", "saved-dataset"),
    ],
    ids=["stdlib", "shakespeare", "file", "glob", "hub-id", "hf-folder"],
)
def test_dataset_is_a_name_not_a_path(source, name):
    assert dataset_name(source) == name


def test_base_model_of_continued_runs(tiny_llama_dir):
    smollm2 = base_model_info("smollm2", "llama")
    assert smollm2["hub_id"] == SMOLLM2_HUB_ID and smollm2["license"] == {"license": "apache-2.0"}
    local = base_model_info(str(tiny_llama_dir), "llama")
    assert local["hub_id"] is None and local["license"] is None and "llama" in local["description"]
    assert str(tiny_llama_dir.parent) not in local["description"]
    assert base_model_info("someone/llama-7b", "llama")["hub_id"] == "someone/llama-7b"
    assert not local["is_bct"]


def test_base_model_of_a_continued_bct(baseline):
    """A run continued from an earlier run's export names that BCT (and what it was built from), not a Llama."""
    info = base_model_info(str(baseline / "export"), None)
    assert info["is_bct"] and info["description"] == "a local BCT checkpoint `run/export`"
    converted = base_model_info(str(baseline / "export"), "llama")["description"]
    assert converted == "a local BCT checkpoint `run/export` (converted from llama)"


def test_uploads_fail_offline_and_keep_local_files(tmp_path, capsys):
    kept, staged = tmp_path / "export", tmp_path / ".hub" / "step_10" / "model"
    for folder in (kept, staged):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    uploader = HubUploader("me/bct-test", private=True, revision="dev")
    uploader.submit("step 10 model", staged, "Training in progress, step 10", staged=True)
    uploader.submit("final export", kept, "End of training")
    failures = uploader.close("retry later")
    assert len(failures) == 2 and all("the Hub is offline (HF_HUB_OFFLINE=1)" in f for f in failures)
    err = capsys.readouterr().err
    assert "warning: 2 of 2 uploads to the Hub repo me/bct-test (branch dev) failed" in err
    assert f"final export: the Hub is offline (HF_HUB_OFFLINE=1); kept at {kept}" in err
    assert "retry later" in err
    assert (kept / "config.json").is_file() and not staged.exists()  # staging copies go, the export stays


def test_card_of_a_local_continued_model_names_its_source(tiny_llama_dir, tmp_path, monkeypatch):
    """A local folder has no Hub id: no base_model, the source architecture named, its license unknown."""
    monkeypatch.chdir(REPO)
    model = convert_to_bct(str(tiny_llama_dir), memory_slots=4, window=16, chunk_size=16)
    out = tmp_path / "export"
    model.save_pretrained(out)
    run_config = _run_config(tmp_path / "run", f"init_from={tiny_llama_dir}", "model.config=null")
    write_model_card(
        out,
        model.config,
        run_config,
        metrics={"val/loss": 5.0, "val/ppl": 148.4},
        sample=None,
        step=8,
        command=None,
    )
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and card.data.license == "other"
    assert "a local llama checkpoint `model`" in card.text and "could not read" in card.text
    assert str(tiny_llama_dir) not in card.text
    assert int(card.text.split("**")[1].split()[0].replace(",", "")) == model.num_parameters()


@pytest.mark.parametrize("sinks", [0, 2])
def test_card_says_how_many_slots_are_sinks(sinks, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    fields = json.loads((REPO / "configs" / "model" / "debug.json").read_text())
    config = BCTConfig(**{**fields, "memory_write_rule": "retain", "memory_sink_slots": sinks})
    out = tmp_path / "export"
    BCTForCausalLM(config).save_pretrained(out)
    kwargs = dict(
        metrics={"val/loss": 3.5, "val/ppl": 33.1},
        sample=None,
        step=1,
        command="train.py",
        repo_id=None,
        revision=None,
    )
    write_model_card(out, config, _run_config(tmp_path / "run"), **kwargs)
    text = check_card(out, tmp_path).text
    assert "by the learned `retain` write rule" in text
    assert ("2 of them are learned sinks that are never written" in text) == (sinks == 2)
