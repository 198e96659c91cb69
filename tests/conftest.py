"""Shared test settings: offline Hub, offline wandb, tests that train marked `slow` (`make test-fast` skips
them), `gpu` tests skipped (with a reason) without CUDA, and a test fails when transformers logs that it was
handed an old cache name."""

import logging
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Fixtures that train a model or prepare a corpus (tests/train/conftest.py): a test using one is `slow`.
TRAINING_FIXTURES = {"baseline", "baseline_metrics", "data_cache", "tiny_llama_hub_cache"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


class _OldCacheNames(logging.Handler):
    """Records transformers' log line for `past_key_values`/`cache_params` used where `cache` is meant (it is a
    log line, not a warning, so `filterwarnings` cannot catch it; it is logged once per process)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record):
        if "Use `cache` instead" in record.getMessage():
            self.seen.append(record.getMessage())


_old_cache_names = _OldCacheNames()
logging.getLogger("transformers").addHandler(_old_cache_names)


@pytest.fixture(autouse=True)
def _no_old_cache_names():
    before = len(_old_cache_names.seen)
    yield
    assert len(_old_cache_names.seen) == before, f"transformers: {_old_cache_names.seen[-1]}"
