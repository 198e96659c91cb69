"""The metrics are right on constructed cases: a model that sees the whole context solves passkey and MQAR,
a random model is near chance, and the perplexity buckets equal a loss computed by hand."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from data import make_passkey_grid, passkey_min_length
from data.text_recall import text_mqar_fixed_length
from eval.contenders.methods import make_method
from eval.tasks import mqar, passkey, perplexity

from .conftest import prose


def passkey_grid(tokenizer, lengths_over_min=(40, 160), depths=(0.0, 0.5, 1.0), samples=2):
    filler = np.asarray(tokenizer(prose(2000, seed=7))["input_ids"])
    lengths = [passkey_min_length(tokenizer) + extra for extra in lengths_over_min]
    return make_passkey_grid(tokenizer, filler, lengths, list(depths), samples, seed=0)


def test_oracle_that_sees_everything_solves_passkey(oracle, tokenizer):
    rows = passkey.evaluate([make_method(oracle, "full", None)], passkey_grid(tokenizer))
    assert len(rows) == 6
    assert all(row["accuracy"] == 1.0 for row in rows), rows


def test_oracle_that_sees_everything_solves_mqar(oracle, tokenizer):
    vocab = mqar.mqar_vocab_size(tokenizer, oracle.model.config.vocab_size)
    examples = mqar.token_examples(vocab, 160, 3, seed=0)
    rows = mqar.evaluate([make_method(oracle, "full", None)], examples, [2, 8, 16], 4)
    assert [row["accuracy"] for row in rows] == [1.0, 1.0, 1.0]
    assert [row["total"] for row in rows] == [6, 12, 12]  # queries = min(4, pairs) per example, 3 examples


def text_mqar(tokenizer, seq_len: int, samples: int = 3):
    filler = np.asarray(tokenizer(prose(3000, seed=5))["input_ids"])
    return mqar.text_examples(tokenizer, filler, seq_len, samples, seed=0)


def test_oracle_that_sees_everything_solves_text_mqar(oracle, tokenizer):
    """In words an answer is several tokens; it counts once, when all of them are right."""
    seq_len = text_mqar_fixed_length(tokenizer, 8, 4) + 200
    rows = mqar.evaluate([make_method(oracle, "full", None)], text_mqar(tokenizer, seq_len), [2, 8], 4)
    assert [row["accuracy"] for row in rows] == [1.0, 1.0]
    assert [row["total"] for row in rows] == [6, 12]  # answers, not answer tokens


def test_oracle_behind_a_bounded_cache_loses_distant_text_pairs(oracle, tokenizer):
    method = make_method(oracle, "full", None, segment=8)
    method.prefill_segment = 8
    method.new_cache = lambda: Cache(layers=[DynamicSlidingWindowLayer(sliding_window=48)])
    seq_len = text_mqar_fixed_length(tokenizer, 8, 4) + 400
    rows = mqar.evaluate([method], text_mqar(tokenizer, seq_len), [8], 4)
    assert rows[0]["accuracy"] < 0.2


def test_oracle_behind_a_bounded_cache_loses_distant_keys(oracle, tokenizer):
    """The same oracle streamed through HF's sliding-window cache layer (24 entries, 8-token segments): the
    pairs fall out of what the cache returns before the queries come, so recall fails."""
    method = make_method(oracle, "full", None, segment=8)
    method.prefill_segment = 8
    method.new_cache = lambda: Cache(layers=[DynamicSlidingWindowLayer(sliding_window=24)])
    vocab = mqar.mqar_vocab_size(tokenizer, oracle.model.config.vocab_size)
    rows = mqar.evaluate([method], mqar.token_examples(vocab, 160, 3, seed=0), [8], 4)
    assert rows[0]["accuracy"] < 0.2


def test_random_model_is_near_chance(llama, tokenizer):
    method = make_method(llama, "full", None)
    rows = passkey.evaluate([method], passkey_grid(tokenizer, depths=(0.0, 1.0)))
    assert np.mean([row["accuracy"] for row in rows]) <= 0.1  # five-digit keys: chance is ~0
    vocab = mqar.mqar_vocab_size(tokenizer, llama.model.config.vocab_size)
    rows = mqar.evaluate([method], mqar.token_examples(vocab, 96, 6, seed=0), [4, 8], 4)
    values = len(range(3 * vocab // 4, vocab))
    assert np.mean([row["accuracy"] for row in rows]) <= 0.1, (rows, 1 / values)
    seq_len = text_mqar_fixed_length(tokenizer, 8, 4) + 100
    rows = mqar.evaluate([method], text_mqar(tokenizer, seq_len), [4, 8], 4)
    assert np.mean([row["accuracy"] for row in rows]) <= 0.1, rows  # 3-digit values: chance is 1/900


@pytest.mark.parametrize("key", ["full", "bct"])
def test_perplexity_buckets_equal_a_hand_computed_loss(key, llama, bct):
    loaded = bct if key == "bct" else llama
    method = make_method(loaded, key, None, segment=19)  # odd segments: boundaries fall mid-bucket
    generator = torch.Generator().manual_seed(3)
    windows = [torch.randint(0, 300, (90,), generator=generator).numpy() for _ in range(2)]
    edges = [0, 32, 64, 90]
    rows, summary = perplexity.evaluate([method], windows, edges)

    by_hand = []  # loss of token p given tokens < p, from one plain forward over the whole window
    for window in windows:
        ids = torch.from_numpy(window)
        with torch.no_grad():
            logits = loaded.model(ids[None]).logits[0]
        by_hand.append(F.cross_entropy(logits[:-1], ids[1:], reduction="none").double())
    for row, (start, end) in zip(rows, itertools.pairwise(edges)):
        first = max(start, 1)  # position 0 has no loss
        expected = torch.cat([loss[first - 1 : end - 1] for loss in by_hand])
        assert row["tokens"] == len(expected)
        assert row["loss"] == pytest.approx(float(expected.mean()), abs=1e-5)
    assert summary[method.label] == pytest.approx(float(torch.cat(by_hand).mean()), abs=1e-5)
