"""The cache-byte figures the speed task reports equal the caches' real tensor sizes, and the formulas."""

import pytest
import torch

from eval import speed
from eval.methods import build_methods

BUDGET = 28  # the tiny BCT's kv_capacity: 4 slots + 16 window + 8 chunk


def held_tensors(cache) -> list[torch.Tensor]:
    """Every key/value tensor the cache's layers hold, found independently of the code under test."""
    names = ("keys", "values", "mem_keys", "mem_values")
    return [
        getattr(layer, n)
        for layer in cache.layers
        for n in names
        if isinstance(getattr(layer, n, None), torch.Tensor)
    ]


def expected_bytes(key: str, config, context: int) -> int:
    """2 (keys, values) · layers · KV heads · head_dim · entries · 4 bytes (float32)."""
    head_dim = config.hidden_size // config.num_attention_heads
    entries = {"bct": BUDGET, "full": context, "sliding": BUDGET - 1, "sinks": BUDGET, "fastkv": BUDGET}[key]
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * entries * 4


def test_speed_rows_report_the_real_cache_bytes(bct, llama):
    methods = build_methods([bct, llama], ["full", "sliding", "sinks", "fastkv"], False, None, segment=32)
    assert {m.key: m.budget for m in methods} == {
        "bct": BUDGET,
        "full": None,
        "sliding": BUDGET,
        "sinks": BUDGET,
        "fastkv": BUDGET,
    }
    context = 5 * BUDGET
    for method in methods:
        if method.key == "sliding":
            method.prefill_segment = 32
    rows = speed.measure_length(methods, context, steps=2, one_call_max=0, skip=set(), seed=0)
    for method, row in zip(methods, rows):
        _, cache = speed.time_prefill(method, torch.randint(0, 300, (1, context)))
        real = sum(t.numel() * t.element_size() for t in held_tensors(cache))
        assert method.cache_bytes(cache) == real, method.key
        assert row["cache_bytes"] == real, method.key
        assert real == expected_bytes(method.key, method.model.config, context), method.key
    bct_row = rows[0]
    assert bct_row["cache_bytes"] == bct.model.config.kv_cache_bytes(1, torch.float32)
    assert bct_row["cache_bytes_after_decode"] == bct_row["cache_bytes"]  # fixed size while decoding


@pytest.mark.parametrize("context", [40, 400])
def test_bct_cache_bytes_do_not_grow_with_context(bct, context):
    method = build_methods([bct], [], False, None)[0]
    _, cache = speed.time_prefill(method, torch.randint(0, 300, (1, context)))
    assert method.cache_bytes(cache) == bct.model.config.kv_cache_bytes(1, torch.float32)
    assert method.cache_entries(cache) == BUDGET
