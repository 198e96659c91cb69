"""`eval retain-probe`: the oracle keeps exactly the first evicted tokens, the full read opens the written slots
(empty ones stay unread), and the model is left as it was."""

from __future__ import annotations

import pytest
import torch

from eval.tools.retain_probe import probed
from modeling import BCTConfig, BCTForCausalLM
from modeling.cache import CACHE_ARG
from tests.eval.conftest import SHAPE

SINKS, SLOTS, WINDOW, CHUNK = 2, 6, 16, 8  # 4 retained slots, each filled from the first evicted chunk


def retain_model() -> BCTForCausalLM:
    torch.manual_seed(0)
    config = BCTConfig(
        vocab_size=64,
        **SHAPE,
        memory_slots=SLOTS,
        window=WINDOW,
        chunk_size=CHUNK,
        memory_write_rule="retain",
        memory_sink_slots=SINKS,
        memory_read_distance=WINDOW,
    )
    model = BCTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory.read_bias.fill_(-6.0)  # a closed read, as conversion leaves it
    return model


def test_oracle_keeps_the_first_evicted_tokens_and_full_read_opens_them():
    model = retain_model()
    ids = torch.randint(0, 64, (1, 40))  # 40 > W + C: chunks 0 and 1 leave the window
    keys = {}
    hooks = [
        layer.self_attn.k_proj.register_forward_hook(lambda m, i, o, n=n: keys.__setitem__(n, o.detach()))
        for n, layer in enumerate(model.model.layers)
    ]
    with torch.no_grad(), probed(model, "first", "full"):
        cache = getattr(model(ids, use_cache=True), CACHE_ARG)
    for hook in hooks:
        hook.remove()
    heads, head_dim = model.config.num_key_value_heads, model.config.head_dim
    for n, layer in enumerate(cache.layers):
        first = keys[n][0].view(-1, heads, head_dim).transpose(0, 1)[:, : SLOTS - SINKS]  # (G, 4, d)
        assert torch.equal(layer.mem_keys[0, :, SINKS:], first), n  # the first tokens, kept for good
        assert torch.equal(
            layer.mem_keys[0, :, :SINKS], model.model.layers[n].self_attn.memory.init_keys[:, :SINKS]
        )


def test_full_read_opens_written_slots_only_and_the_model_is_restored():
    model = retain_model()
    short = torch.randint(0, 64, (1, WINDOW + CHUNK))  # nothing leaves the window: every retained slot empty
    long = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        before = [model(ids).logits for ids in (short, long)]
        with probed(model, "learned", "full"):
            opened = [model(ids).logits for ids in (short, long)]
        after = [model(ids).logits for ids in (short, long)]
    assert all(torch.equal(b, a) for b, a in zip(before, after))  # read bias and methods restored
    assert torch.equal(opened[0], before[0])  # empty slots are not read, whatever their bias
    assert not torch.allclose(opened[1], before[1], atol=1e-3)  # written ones are, at bias 0 instead of -6


def test_a_model_without_live_flags_is_refused():
    torch.manual_seed(0)
    model = BCTForCausalLM(BCTConfig(vocab_size=64, **SHAPE, memory_slots=4, window=16, chunk_size=8)).eval()
    with pytest.raises(ValueError, match="memory_write_rule='gated'"), probed(model, "first", "full"):
        pass
