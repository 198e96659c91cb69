"""Every bounded method holds exactly the configured byte budget after the prefill, and the reported figures
(after the prefill, after decoding, peak during the prefill) are the caches' real tensor bytes."""

import pytest
import torch

from eval.contenders.baselines.window_scores import Scoring
from eval.contenders.kv_bytes import PeakBytes, entry_bytes
from eval.contenders.methods import CompressorOptions, build_methods, make_method
from eval.tasks import speed

CAPACITY = 28  # the tiny BCT's kv_capacity: 4 slots + 16 window + 8 chunk
STEPS = 2


def held_tensors(cache) -> list[torch.Tensor]:
    """Every key/value tensor the cache's layers hold, found independently of the code under test."""
    names = ("keys", "values", "mem_keys", "mem_values")
    return [
        getattr(layer, n)
        for layer in cache.layers
        for n in names
        if isinstance(getattr(layer, n, None), torch.Tensor)
    ]


def real_bytes(cache) -> int:
    return sum(t.numel() * t.element_size() for t in held_tensors(cache))


def test_every_bounded_method_holds_the_byte_budget(bct, llama):
    """2 · L · G · d · entries · 4 bytes, the BCT's own cache size, for every bounded method."""
    config = bct.model.config
    budget = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * CAPACITY * 4
    assert budget == config.kv_cache_bytes(1, torch.float32)
    baselines = ["full", "sliding", "sinks", "snapkv", "fastkv"]
    options = CompressorOptions(scoring=Scoring(window=4, kernel=3), tsp_layer=0, tsp_len=48)
    methods = build_methods([bct, llama], baselines, False, None, segment=32, options=options)
    per_query_head = CompressorOptions(scoring=Scoring(window=4, kernel=3), per_query_head=True)
    methods.append(make_method(llama, "snapkv", budget, options=per_query_head))
    assert [m.kv_bytes for m in methods if m.key != "full"] == [budget] * 6
    entries = {m.key + str(m.settings.get("stored_heads", "")): m.budget for m in methods}
    heads = llama.model.config.num_attention_heads  # the per-query-head variant stores H heads: fewer entries
    assert entries == {"bct": CAPACITY, "full": None, "sliding": CAPACITY, "sinks": CAPACITY,
                       "snapkv2": CAPACITY, "fastkv": CAPACITY, f"snapkv{heads}": CAPACITY // 2}  # fmt: skip
    context = 5 * CAPACITY
    for method in methods:
        if method.key == "sliding":
            method.prefill_segment = 32
    rows = speed.measure_length(methods, context, steps=STEPS, one_call_max=0, skip=set(), seed=0)
    for method, row in zip(methods, rows):
        _, cache, peak = speed.time_prefill(method, torch.randint(0, 300, (1, context)))
        held = real_bytes(cache)
        assert method.cache_bytes(cache) == held == row["cache_bytes"], method.key
        if method.key == "full":
            assert held == entry_bytes(method.model.config, torch.float32) * context
            assert row["cache_bytes_after_decode"] == held + held // context * (STEPS + 2)
            assert peak == held
            continue
        assert held == budget, method.key
        decoded = row["cache_bytes_after_decode"]
        if method.compresses_prompt:  # the reference's decode cache grows by one entry per token
            assert decoded == budget + budget // method.budget * (STEPS + 2), method.key
        else:  # fixed size while decoding
            assert decoded == budget, method.key
        assert row["peak_prefill_bytes"] == peak, method.key


def test_peak_during_a_fastkv_prefill_is_a_whole_layer_before_compression(llama):
    """Layer 0 stores the whole prompt before keeping its budget; after the TSP layer only `tsp_len` tokens."""
    config = llama.model.config
    per_entry_layer = entry_bytes(config, torch.float32) // config.num_hidden_layers  # one layer, one entry
    options = CompressorOptions(scoring=Scoring(window=4, kernel=3), tsp_layer=0, tsp_len=48)
    method = make_method(llama, "fastkv", entry_bytes(config, torch.float32) * 20, options=options)
    cache = method.new_cache()
    with PeakBytes(cache) as peak:
        method.prefill(torch.randint(0, 300, (1, 100)), cache)
    assert peak.bytes == per_entry_layer * 100  # layer 0 whole; layer 1 then holds 48 beside layer 0's 20
    assert method.cache_bytes(cache) == per_entry_layer * 20 * config.num_hidden_layers


@pytest.mark.parametrize("context", [40, 400])
def test_bct_cache_bytes_do_not_grow_with_context(bct, context):
    method = build_methods([bct], [], False, None)[0]
    _, cache, peak = speed.time_prefill(method, torch.randint(0, 300, (1, context)))
    assert method.cache_bytes(cache) == peak == bct.model.config.kv_cache_bytes(1, torch.float32)
    assert method.cache_entries(cache) == CAPACITY
