"""Session fixtures of the training tests: a data cache, one single-process debug run reused by the tests
that only read it, and a tiny Llama checkpoint to continue from (as a folder and as a cached Hub repo)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.train.runner import TINY_LLAMA_REPO, debug_args, run_train
from training.tracking import read_metrics


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture(scope="session")
def baseline(tmp_path_factory, data_cache) -> Path:
    """configs/debug.yaml, 20 steps, one process, reporting to wandb (offline) and TensorBoard.
    Global batch 4 x 64 tokens; checkpoints at steps 10 and 20; export at the end."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    run_train(
        debug_args(out, data_cache, "tracking.report_to=[wandb,tensorboard]", "tracking.project=bct-tests")
    )
    return out


@pytest.fixture(scope="session")
def baseline_metrics(baseline) -> list[dict]:
    return read_metrics(baseline / "metrics.jsonl")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer LlamaForCausalLM and a 300-token BPE, saved like a Hub checkpoint."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from data import DataConfig, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = build_tokenizer(
        DataConfig(source="stdlib", max_documents=30, vocab_size=300, cache_dir=str(root / "cache"))
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    folder = root / "model"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_hub_cache(tmp_path_factory, tiny_llama_dir) -> Path:
    """A Hugging Face Hub cache (for HF_HUB_CACHE) holding `tiny_llama_dir` as the downloaded repo
    TINY_LLAMA_REPO, with a model card that states its license: `init_from` a Hub id, offline."""
    cache = tmp_path_factory.mktemp("hf-hub-cache")
    repo, commit = cache / f"models--{TINY_LLAMA_REPO.replace('/', '--')}", "0" * 40
    snapshot = Path(shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit))
    (snapshot / "README.md").write_text("---\nlicense: mit\nlibrary_name: transformers\n---\n# tiny llama\n")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache
