"""Shared fixtures for the data tests: a small real corpus (the first stdlib files), a 400-token BPE trained
on it, and its packed corpus, each built once per session in a temporary cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from data import DataConfig, build_tokenizer, prepare_corpus

SMALL = {"max_documents": 60, "vocab_size": 400, "seq_len": 64, "validation_fraction": 0.1}


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bct-data-cache")


@pytest.fixture(scope="session")
def small_cfg(session_cache) -> DataConfig:
    return DataConfig(source="stdlib", cache_dir=str(session_cache), **SMALL)


@pytest.fixture(scope="session")
def tokenizer(small_cfg):
    return build_tokenizer(small_cfg)


@pytest.fixture(scope="session")
def corpus(small_cfg, tokenizer):
    return prepare_corpus(small_cfg, tokenizer)


@pytest.fixture
def texts() -> list[str]:
    """40 distinct documents, each starting with a unique marker word so it can be found again in rows."""
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "and",
        "keeps",
        "running",
        "through",
        "the",
        "field",
    ]
    return [
        f"docmarker{i:04d} " + " ".join(words[(i + j) % len(words)] for j in range(60)) + "\n"
        for i in range(40)
    ]


@pytest.fixture
def text_dir(tmp_path, texts) -> Path:
    """The `texts` as one .txt file each."""
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"doc{i:04d}.txt").write_text(text)
    return folder
