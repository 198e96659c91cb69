"""The sink and sliding-window baselines hold the stated number of entries, compute what they claim, and
generate the same tokens as full attention while the context fits."""

import pytest
import torch
from transformers import DynamicCache

from eval.contenders.baselines.sink_cache import SinkCache, forward_blocks
from eval.contenders.baselines.sliding import sliding_window_cache, sliding_window_model
from eval.contenders.kv_bytes import entry_bytes
from eval.contenders.methods import make_method
from modeling.cache import CACHE_ARG

from .conftest import tiny_llama

BUDGET = 24


def budget_bytes(loaded, entries: int = BUDGET) -> int:
    """The KV bytes that buy `entries` entries per layer and KV head of this model (float32)."""
    return entry_bytes(loaded.model.config, torch.float32) * entries


def stream_logits(method, ids, cache=None):
    cache = cache if cache is not None else method.new_cache()
    return torch.cat([logits for _, logits in method.stream(ids, cache)], dim=1), cache


def test_bounded_caches_hold_their_budget(llama):
    ids = torch.randint(0, 300, (1, 5 * BUDGET), generator=torch.Generator().manual_seed(0))
    config = llama.model.config
    head_dim = config.hidden_size // config.num_attention_heads
    new_key = torch.randn(1, config.num_key_value_heads, 1, head_dim)
    # Both hold exactly the budget between steps; a sliding-window query also sees itself beyond it.
    for key, stored, visible in (("sinks", BUDGET, BUDGET), ("sliding", BUDGET, BUDGET + 1)):
        method = make_method(llama, key, budget_bytes(llama), segment=16)
        _, cache = stream_logits(method, ids)
        assert [layer.keys.shape[-2] for layer in cache.layers] == [stored] * config.num_hidden_layers, key
        # What the attention gets in the next decode step, from the layer's own update (the model's path):
        keys, values = cache.layers[0].update(new_key, new_key)
        assert keys.shape[-2] == values.shape[-2] == visible, key
        assert cache.layers[0].keys.shape[-2] == stored, key


def test_sink_blocks_equal_token_by_token(llama):
    ids = torch.randint(0, 300, (1, 3 * BUDGET + 5), generator=torch.Generator().manual_seed(1))
    blocks = torch.cat(
        [lg for _, lg in forward_blocks(llama.model, ids, SinkCache(llama.model, BUDGET), block=10)], 1
    )
    steps = torch.cat(
        [lg for _, lg in forward_blocks(llama.model, ids, SinkCache(llama.model, BUDGET), block=1)], 1
    )
    torch.testing.assert_close(blocks, steps, atol=1e-5, rtol=1e-4)


def test_sinks_follow_streamingllm_positions_in_the_cache(tokenizer):
    """One layer: the output at stream position t equals a fresh forward over [4 sinks ; last budget-4 tokens]
    at positions 0 .. budget-1, which is StreamingLLM's definition (positions assigned within the cache)."""
    model = tiny_llama(len(tokenizer), seed=5, layers=1)
    ids = torch.randint(0, 300, (1, 3 * BUDGET), generator=torch.Generator().manual_seed(2))
    streamed = torch.cat([lg for _, lg in forward_blocks(model, ids, SinkCache(model, BUDGET), block=7)], 1)
    with torch.no_grad():
        for t in range(BUDGET, ids.shape[1], 5):
            kept = torch.cat((ids[:, :4], ids[:, t - (BUDGET - 4) + 1 : t + 1]), dim=1)
            reference = model(kept, position_ids=torch.arange(BUDGET)[None]).logits[:, -1]
            torch.testing.assert_close(streamed[:, t], reference, atol=1e-5, rtol=1e-4)


def test_sliding_window_sees_only_its_window(tokenizer):
    """One layer: the output at position t equals a fresh forward over the last `budget` tokens."""
    model = tiny_llama(len(tokenizer), seed=6, layers=1)
    sliding = sliding_window_model(model, BUDGET)
    ids = torch.randint(0, 300, (1, 3 * BUDGET), generator=torch.Generator().manual_seed(3))
    cache = sliding_window_cache(sliding)
    with torch.no_grad():
        streamed = torch.cat(
            [sliding(ids[:, i : i + 16], **{CACHE_ARG: cache}).logits for i in range(0, ids.shape[1], 16)], 1
        )
        for t in range(BUDGET, ids.shape[1], 5):
            reference = model(ids[:, t - BUDGET + 1 : t + 1]).logits[:, -1]
            torch.testing.assert_close(streamed[:, t], reference, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("key", ["sliding", "sinks"])
def test_bounded_baselines_generate_like_full_attention_while_the_context_fits(llama, key):
    prompt = torch.randint(0, 300, (1, 9), generator=torch.Generator().manual_seed(4))
    full = make_method(llama, "full", None)
    bounded = make_method(llama, key, budget_bytes(llama))
    settings = dict(max_new_tokens=BUDGET - 9, do_sample=False, pad_token_id=0)
    expected = full.model.generate(prompt, **{CACHE_ARG: full.new_cache()}, **settings)
    got = bounded.model.generate(prompt, **{CACHE_ARG: bounded.new_cache()}, **settings)
    assert got.tolist() == expected.tolist()
    # Past the capacity they do differ from full attention (the test above is not vacuous).
    ids = torch.randint(0, 300, (1, 4 * BUDGET), generator=torch.Generator().manual_seed(5))
    full_logits, _ = stream_logits(full, ids)
    bounded_logits, _ = stream_logits(bounded, ids)
    torch.testing.assert_close(bounded_logits[:, :BUDGET], full_logits[:, :BUDGET], atol=1e-5, rtol=1e-4)
    assert (bounded_logits[:, 2 * BUDGET :] - full_logits[:, 2 * BUDGET :]).abs().max() > 1e-3


def test_sink_cache_refuses_an_overflowing_block_without_its_mask(llama):
    cache = SinkCache(llama.model, BUDGET)
    ids = torch.randint(0, 300, (1, BUDGET + 5))
    with pytest.raises(ValueError, match="forward_blocks"):
        llama.model(ids, **{CACHE_ARG: cache}, use_cache=True)


def test_sliding_copy_has_the_same_weights_and_leaves_the_model_alone(llama):
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    sliding = sliding_window_model(llama.model, BUDGET)
    assert sliding.config.sliding_window == BUDGET
    assert isinstance(
        DynamicCache(config=sliding.config).layers[0], type(sliding_window_cache(sliding).layers[0])
    )
    for name, tensor in llama.model.state_dict().items():
        torch.testing.assert_close(sliding.state_dict()[name], tensor)
        torch.testing.assert_close(before[name], tensor)
