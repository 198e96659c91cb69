"""The tokenization cache is reused, invalidated by source, tokenizer and seq_len, and written atomically."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import data.corpus
from data import DataConfig, build_tokenizer, prepare_corpus
from data.cache import atomic_directory


def _no_build(*args, **kwargs):
    raise AssertionError("the cached corpus should have been reused")


@pytest.fixture
def dir_cfg(tmp_path, text_dir) -> DataConfig:
    return DataConfig(
        source=str(text_dir), cache_dir=str(tmp_path / "cache"), seq_len=32, validation_fraction=0.25
    )


def test_cache_is_reused(dir_cfg, tokenizer, monkeypatch):
    first = prepare_corpus(dir_cfg, tokenizer)
    assert not first.stats["cache_hit"]
    monkeypatch.setattr(data.corpus, "_build", _no_build)
    second = prepare_corpus(dir_cfg, tokenizer)
    assert second.stats["cache_hit"] and second.stats["cache_dir"] == first.stats["cache_dir"]
    assert torch.equal(first.train, second.train) and torch.equal(first.validation, second.validation)
    assert first.train.dtype == torch.int32 and first.train.shape[1] == 32


def test_cache_invalidated_by_tokenizer(dir_cfg, tokenizer):
    first = prepare_corpus(dir_cfg, tokenizer)
    other = build_tokenizer(dir_cfg.replace(vocab_size=300))
    second = prepare_corpus(dir_cfg, other)
    assert not second.stats["cache_hit"] and second.stats["cache_dir"] != first.stats["cache_dir"]
    assert not torch.equal(first.train[:1], second.train[:1])


def test_cache_invalidated_by_source(dir_cfg, text_dir, tokenizer):
    first = prepare_corpus(dir_cfg, tokenizer)
    (text_dir / "doc0000.txt").write_text("a rewritten document with other words in it\n" * 5)
    second = prepare_corpus(dir_cfg, tokenizer)
    assert not second.stats["cache_hit"] and second.stats["cache_dir"] != first.stats["cache_dir"]


def test_cache_invalidated_by_seq_len(dir_cfg, tokenizer):
    first = prepare_corpus(dir_cfg, tokenizer)
    second = prepare_corpus(dir_cfg.replace(seq_len=16), tokenizer)
    assert not second.stats["cache_hit"] and second.stats["cache_dir"] != first.stats["cache_dir"]
    assert second.train.shape[1] == 16
    # Same token stream, cut differently.
    assert torch.equal(first.train.flatten()[:64], second.train.flatten()[:64])


def test_cache_leaves_no_temporary_folders(dir_cfg, tokenizer):
    prepare_corpus(dir_cfg, tokenizer)
    leftovers = [name for name in os.listdir(dir_cfg.cache_dir) if name.startswith(".tmp")]
    assert leftovers == []


def test_atomic_directory(tmp_path):
    final = tmp_path / "entry"
    with pytest.raises(RuntimeError), atomic_directory(final) as staging:
        (tmp_path / "marker").write_text(staging)
        open(os.path.join(staging, "half-written"), "w").close()
        raise RuntimeError("killed mid-write")
    assert not final.exists() and os.listdir(tmp_path) == ["marker"]  # nothing half-written is visible
    with atomic_directory(final) as staging:
        open(os.path.join(staging, "winner"), "w").close()
    with atomic_directory(final) as staging:  # a second writer of the same entry loses the race quietly
        open(os.path.join(staging, "loser"), "w").close()
    assert os.listdir(final) == ["winner"]


_RANK = """
import sys
from data import DataConfig, build_tokenizer, prepare_corpus
cfg = DataConfig(max_documents=30, vocab_size=300, seq_len=64, cache_dir=sys.argv[1])
corpus = prepare_corpus(cfg, build_tokenizer(cfg))
print(corpus.stats["cache_hit"], int(corpus.train.sum()), corpus.stats["cache_dir"])
"""


@pytest.mark.slow  # two fresh interpreters importing torch/transformers: ~10-20 s on 2 busy cores
def test_concurrent_ranks_build_once_and_agree(tmp_path):
    root = Path(data.__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(root)}
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(tmp_path)], cwd=root, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = sorted(rank.communicate(timeout=300)[0].split() for rank in ranks)
    assert all(rank.returncode == 0 for rank in ranks)
    # One rank built the entry while the other waited for it, then both read the same rows.
    assert [hit for hit, _, _ in outputs] == ["False", "True"]
    assert outputs[0][1:] == outputs[1][1:]
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".tmp")]
