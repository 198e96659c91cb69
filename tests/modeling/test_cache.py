"""BCTCache: fixed-size tensors whose bytes equal the docs/design.md §3 formula at any context length."""

import pytest
import torch
from transformers import DynamicCache

from modeling import BCTCache, BCTConfig, BCTForCausalLM
from modeling.cache import CACHE_ARG

from .conftest import TINY, tiny_model


def formula_bytes(config, batch, dtype_bytes):
    live_flags = config.memory_slots if config.memory_write_rule == "retain" else 0  # one byte per slot
    per_head = 2 * config.head_dim * (config.memory_slots + config.window + config.chunk_size) * dtype_bytes
    return config.num_hidden_layers * config.num_key_value_heads * batch * (per_head + live_flags)


@pytest.mark.parametrize("rule", ["gated", "retain"])
def test_capacity_formula(rule):
    config = BCTConfig(**{**TINY, "memory_write_rule": rule})
    assert config.kv_capacity == TINY["memory_slots"] + TINY["window"] + TINY["chunk_size"]
    assert config.kv_cache_bytes(batch_size=3) == formula_bytes(config, 3, 4)
    assert config.kv_cache_bytes(batch_size=1, dtype=torch.bfloat16) == formula_bytes(config, 1, 2)


@pytest.mark.slow
@torch.no_grad()
def test_cache_bytes_constant_from_1k_to_100k_tokens():
    torch.manual_seed(0)
    config = BCTConfig(
        vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        memory_slots=8, window=32, chunk_size=16, prefill_segment_len=8192,
    )  # fmt: skip
    model = BCTForCausalLM(config).eval()
    cache = BCTCache(config)
    sizes = {}
    seen = 0
    for target in (1_024, 20_000, 100_003):
        ids = torch.randint(0, 64, (1, target - seen))
        model(ids, cache=cache, use_cache=True, logits_to_keep=1)
        seen = target
        sizes[target] = cache.nbytes()
        model(torch.randint(0, 64, (1, 1)), cache=cache, use_cache=True)  # one decode step too
        seen += 1
    expected = formula_bytes(config, 1, 4)
    assert set(sizes.values()) == {expected} == {config.kv_cache_bytes()}
    assert cache.get_seq_length() == seen
    assert int(cache.seen[0]) == seen


@pytest.mark.parametrize("overrides", [{}, {"memory_write_rule": "retain", "memory_sink_slots": 2}])
@torch.no_grad()
def test_cache_tensors_never_grow(overrides):
    model = tiny_model(**overrides)
    cache = BCTCache(model.config)
    model(torch.randint(0, 101, (2, 5)), cache=cache)
    shapes = [tuple(t.shape) for layer in cache.layers for t in layer.tensors()]
    for _ in range(30):
        model(torch.randint(0, 101, (2, 1)), cache=cache)
    assert [tuple(t.shape) for layer in cache.layers for t in layer.tensors()] == shapes
    assert cache.nbytes() == model.config.kv_cache_bytes(batch_size=2)


@torch.no_grad()
def test_reorder_and_select_rows():
    model = tiny_model()
    ids = torch.randint(0, 101, (3, 30))
    cache = BCTCache(model.config)
    model(ids, cache=cache)
    order = torch.tensor([2, 0, 0])
    cache.reorder_cache(order)
    step = torch.randint(0, 101, (3, 1))
    reordered = model(step, cache=cache).logits
    fresh = BCTCache(model.config)
    model(ids[order], cache=fresh)
    assert torch.allclose(reordered, model(step, cache=fresh).logits, atol=1e-6)
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.seen.shape == (1,) and cache.layers[0].keys.shape[0] == 1


def test_cache_refuses_rollback_and_foreign_caches():
    model = tiny_model()
    cache = BCTCache(model.config)
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(3)
    with pytest.raises(TypeError, match="BCTCache"):
        model(torch.randint(0, 101, (1, 4)), cache=DynamicCache(config=model.config))


@torch.no_grad()
@pytest.mark.parametrize("name", ["cache", "past_key_values"])
def test_the_cache_is_read_under_either_name(name):
    model, ids = tiny_model(), torch.randint(0, 101, (1, 30))
    cache = BCTCache(model.config)
    model(ids[:, :-1], **{name: cache})
    assert cache.get_seq_length() == 29
    assert torch.allclose(
        model(ids[:, -1:], **{name: cache}).logits[:, -1], model(ids).logits[:, -1], atol=1e-5
    )


@torch.no_grad()
def test_a_cache_under_a_name_the_model_does_not_read_is_an_error():
    model, ids = tiny_model(), torch.randint(0, 101, (1, 6))
    cache = model(ids, use_cache=True)[CACHE_ARG]
    with pytest.raises(TypeError, match="cache_params=, a name it does not read"):
        model(ids[:, -1:], cache_params=cache)
    with pytest.raises(ValueError, match="not under both names"):
        model(ids[:, -1:], cache=cache, past_key_values=cache)
