"""The fast paths against the token-by-token reference: outputs, final memory and every gradient."""

import math

import pytest
import torch

from modeling import BCTCache
from modeling.attention import reference_attention
from modeling.rotary import apply_rotary

from .conftest import TINY, tiny_model

LENGTH = 6 * TINY["window"] + 3


def fast_layer(model, hidden, segment=None):
    """Run layer 0's attention through the model's own planning, whole or in segments; return (out, cache)."""
    attn = model.model.layers[0].self_attn
    cache = BCTCache(model.config)
    segment = segment or hidden.shape[1]
    outputs = []
    for start in range(0, hidden.shape[1], segment):
        part = hidden[:, start : start + segment]
        real = torch.ones(part.shape[:2], dtype=torch.bool)
        plan = model.model._plan(part, real, cache)
        outputs.append(attn(part, plan, cache.layers[0])[0])
        cache.advance(part.shape[1], plan.seen, plan.ring_len)
    return torch.cat(outputs, dim=1), cache.layers[0]


def reference_layer(model, hidden):
    attn = model.model.layers[0].self_attn
    q, k, v = attn.project(hidden)
    out, mem_k, mem_v, live = reference_attention(
        q, k, v, attn.memory, model.model.rotary, TINY["window"], TINY["chunk_size"]
    )
    batch, _, length, _ = out.shape
    return attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), mem_k, mem_v, live


@pytest.mark.parametrize("distance", [0, 37], ids=lambda d: f"read-distance{d}")
@pytest.mark.parametrize("rule", ["gated", "delta", "retain", "fifo"])
@pytest.mark.parametrize("segment", [None, 1, 5], ids=["parallel", "step", "segments5"])
def test_fast_path_matches_reference_outputs_and_memory(rule, segment, distance):
    model = tiny_model(memory_write_rule=rule, memory_read_distance=distance)
    hidden = torch.randn(2, LENGTH, TINY["hidden_size"])
    with torch.no_grad():
        fast, state = fast_layer(model, hidden, segment)
        ref, mem_k, mem_v, live = reference_layer(model, hidden)
    assert (fast - ref).abs().max() <= 1e-5
    assert (state.mem_keys - mem_k).abs().max() <= 1e-5
    assert (state.mem_values - mem_v).abs().max() <= 1e-5
    assert (state.mem_live is None) == (live is None) == (rule != "retain")
    if live is not None:
        assert torch.equal(state.mem_live, live)
    # the memory really moved away from its initial slots
    assert (mem_k - model.model.layers[0].self_attn.memory.init_keys).abs().max() > 1e-2


@pytest.mark.parametrize("distance", [0, 37], ids=lambda d: f"read-distance{d}")
@pytest.mark.parametrize("rule", ["gated", "delta", "retain", "fifo"])
def test_fast_path_matches_reference_gradients(rule, distance):
    model = tiny_model(memory_write_rule=rule, memory_read_distance=distance)
    attn = model.model.layers[0].self_attn
    hidden = torch.randn(2, LENGTH, TINY["hidden_size"], requires_grad=True)
    weights = torch.randn(2, LENGTH, TINY["hidden_size"])

    def gradients(run):
        attn.zero_grad()
        hidden.grad = None
        out, mem_k, mem_v = run()
        ((out * weights).sum() + (mem_k * 0.7).sum() + (mem_v**2).sum()).backward()
        grads = {name: p.grad.clone() for name, p in attn.named_parameters() if p.grad is not None}
        return grads, hidden.grad.clone()

    def fast():
        out, state = fast_layer(model, hidden)
        return out, state.mem_keys, state.mem_values

    fast_grads, fast_input = gradients(fast)
    ref_grads, ref_input = gradients(lambda: reference_layer(model, hidden)[:3])
    assert set(fast_grads) == set(ref_grads) == {n for n, p in attn.named_parameters()}
    for name in ref_grads:
        scale = ref_grads[name].abs().max().clamp_min(1e-3)
        assert (fast_grads[name] - ref_grads[name]).abs().max() / scale <= 1e-4, name
    assert (fast_input - ref_input).abs().max() <= 1e-4


@pytest.mark.parametrize("rule", ["gated", "delta", "retain"])
def test_rule_scan_matches_its_one_step_loop(rule):
    """A rule's batched `scan` against the interface's plain loop over its one-step rule (float64)."""
    from modeling.memory import MemoryWrite

    write = tiny_model(memory_write_rule=rule).model.layers[0].self_attn.memory.write.double()
    slots = TINY["memory_slots"]
    mem = torch.randn(3, 2, slots, 32, dtype=torch.float64)
    if rule == "retain":  # a rule with live flags: a random half of the slots empty
        mem = write.pack(*mem.chunk(2, dim=-1), torch.rand(3, 2, slots) < 0.5)
    mem.requires_grad_(True)
    k = torch.randn(3, 2, 4 * 6, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 2, 4 * 6, 16, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 2, 5, *mem.shape[2:], dtype=torch.float64)

    def run(scan):
        features = write.token_features(k, v).reshape(3, 2, 4, 6, -1)
        states, gates = scan(write, mem, features)
        for tensor in (mem, k, v, *write.parameters()):
            tensor.grad = None
        (states * weights).sum().backward()
        grads = [t.grad for t in (mem, k, v, *write.parameters())]
        return states.detach(), gates, [torch.zeros(()) if g is None else g.clone() for g in grads]

    batched = run(type(write).scan)
    stepped = run(MemoryWrite.scan)
    assert torch.allclose(batched[0], stepped[0], atol=1e-12)
    assert torch.allclose(batched[1], stepped[1], atol=1e-12)
    names = ["mem", "k", "v"] + [name for name, _ in write.named_parameters()]
    for name, a, b in zip(names, batched[2], stepped[2]):
        assert torch.allclose(a, b, atol=1e-10), name


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sinks", [0, 1, 3])
def test_retain_keeps_the_sinks_then_the_top_scored_entries_in_order(sinks, ties):
    """RetainWrite against a plain per-row selection: the S sink slots unchanged, then the M - S entries of
    [memory after the sinks ; chunk] with the highest scores, in their original order. Equal scores (a token
    repeated: same key and value) go to the entry that came first, as a stable sort puts them."""
    write = (
        tiny_model(memory_write_rule="retain", memory_sink_slots=sinks).model.layers[0].self_attn.memory.write
    )
    slots, chunk = TINY["memory_slots"], 6
    live = torch.rand(2, 2, slots) < 0.5  # some slots empty: they go before any entry
    live[..., :sinks] = True
    mem_k, mem_v = torch.randn(2, 2, slots, 16), torch.randn(2, 2, slots, 16)
    k, v = torch.randn(2, 2, chunk, 16), torch.randn(2, 2, chunk, 16)
    if ties:  # every chunk token appears three times, the last slot holds one of them too
        k, v = k[:, :, [0, 1, 0, 1, 0, 1]], v[:, :, [0, 1, 0, 1, 0, 1]]
        mem_k[:, :, -1], mem_v[:, :, -1], live[..., -1] = k[:, :, 1], v[:, :, 1], True
    mem = write.pack(mem_k, mem_v, live)
    features = write.token_features(k, v)
    with torch.no_grad():
        new_mem, took = write(mem, features)
    for b in range(2):
        for g in range(2):
            pool = list(mem[b, g, sinks:]) + list(features[b, g])
            u, c = write.score[g, :, 0].detach(), float(write.score_bias[g].detach())
            scores = [float(e[:32] @ u) / math.sqrt(16) + c if e[32] == 1 else -math.inf for e in pool]
            best = sorted(sorted(range(len(pool)), key=lambda i: -scores[i])[: slots - sinks])
            expected = torch.stack([*mem[b, g, :sinks], *(pool[i] for i in best)])
            assert torch.allclose(new_mem[b, g], expected)
            assert took[b, g].tolist() == [0.0] * sinks + [float(i >= slots - sinks) for i in best]
            assert new_mem[b, g, :, 32].tolist() == [1.0] * slots  # chunk > slots: every slot now live


def test_retain_reads_nothing_from_empty_slots_and_fills_them_first():
    """Nine retained slots fill over three writes of 4 tokens: the fast paths equal the reference while part
    of the memory is still empty, and an empty slot's initial contents cannot change any output."""
    model = tiny_model(memory_write_rule="retain", memory_slots=10, memory_sink_slots=1)
    hidden = torch.randn(2, LENGTH, TINY["hidden_size"])
    with torch.no_grad():
        ref, mem_k, _, live = reference_layer(model, hidden)
        for segment in (None, 1):
            fast, state = fast_layer(model, hidden, segment)
            assert (fast - ref).abs().max() <= 1e-5 and torch.equal(state.mem_live, live)
        assert (
            live.all() and (mem_k[:, :, 1:] != model.model.layers[0].self_attn.memory.init_keys[:, 1:]).all()
        )
        model.model.layers[0].self_attn.memory.init_keys[:, 1:] += 100.0
        model.model.layers[0].self_attn.memory.init_values[:, 1:] -= 100.0
        assert torch.equal(reference_layer(model, hidden)[0], ref)
        assert (fast_layer(model, hidden)[0] - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("distance", [0, 5, 3000])
def test_memory_is_read_as_a_key_that_many_positions_behind(distance):
    """`memory_read_distance` δ: a query at any position p scores a memory key as RoPE scores that key placed
    at p - δ (what the source model saw for a token δ behind), computed here from absolute-position tables."""
    model = tiny_model(memory_read_distance=distance)
    memory, rotary = model.model.layers[0].self_attn.memory, model.model.rotary
    head_dim = model.config.head_dim
    q, k = torch.randn(4, head_dim), torch.randn(4, head_dim)
    cos, sin = rotary.table(distance + 200, q.device, torch.float32)
    for p in (distance, distance + 17, distance + 199):
        rope = (apply_rotary(q, cos[p], sin[p]) * apply_rotary(k, cos[p - distance], sin[p - distance])).sum(
            -1
        )
        assert torch.allclose((q * memory.read_keys(k)).sum(-1), rope, atol=1e-4)
    if distance:  # and it differs from the position-free read
        assert not torch.allclose(memory.read_keys(k), k, atol=1e-3)
