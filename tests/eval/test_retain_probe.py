"""`eval retain-probe`: the oracle keeps exactly the first evicted tokens, the full read hides unwritten slots,
and the model is left as it was."""

from __future__ import annotations

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


def test_full_read_hides_unwritten_slots_and_the_model_is_restored():
    model = retain_model()
    ids = torch.randint(
        0, 64, (1, WINDOW + CHUNK)
    )  # nothing leaves the window: every retained slot unwritten
    with torch.no_grad():
        before = model(ids).logits
        with probed(model, "learned", "full"):
            opened = model(ids).logits
        after = model(ids).logits
        for layer in model.model.layers:  # the same model with its retained slots shut outright
            layer.self_attn.memory.read_bias[:, SINKS:] = -1e4
        shut = model(ids).logits
    assert torch.equal(before, after)  # read bias and methods restored
    assert torch.allclose(opened, shut, atol=1e-5)  # unwritten slots hidden, not read at bias 0
    assert not torch.allclose(opened, before, atol=1e-3)  # and the -6 read was visible before
