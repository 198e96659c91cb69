"""docs/design.md §6: the parallel forward, chunked prefill of any segment length and cached decoding are one
function (≤ 1e-4 max abs logit difference in float32, at lengths ≥ 8 × window)."""

import pytest
import torch

from modeling import BCTCache

from .conftest import TINY, tiny_model

LENGTH = 8 * TINY["window"] + 13  # ≥ 8 × window, not a multiple of the chunk
TOL = 1e-4


def prefill_in_segments(model, ids, segment, mask=None):
    cache, logits = BCTCache(model.config), []
    for start in range(0, ids.shape[1], segment):
        stop = start + segment
        kwargs = {} if mask is None else {"attention_mask": mask[:, :stop]}
        logits.append(model(ids[:, start:stop], cache=cache, use_cache=True, **kwargs).logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("rule", ["gated", "delta", "retain", "fifo"])
@pytest.mark.parametrize(
    "segment", [1, 7, TINY["chunk_size"], 3 * TINY["chunk_size"] + 5], ids=lambda s: f"segment{s}"
)
@torch.no_grad()
def test_chunked_prefill_matches_parallel(segment, rule):
    model = tiny_model(memory_write_rule=rule)
    ids = torch.randint(0, TINY["vocab_size"], (2, LENGTH))
    parallel = model(ids, use_cache=False).logits
    chunked, cache = prefill_in_segments(model, ids, segment)
    assert (chunked - parallel).abs().max() <= TOL
    assert cache.get_seq_length() == LENGTH


@pytest.mark.parametrize("rule", ["gated", "retain"])
@pytest.mark.parametrize("segment", [1, 7], ids=lambda s: f"segment{s}")
@torch.no_grad()
def test_memory_read_distance_keeps_prefill_and_decode_equal_to_parallel(segment, rule):
    model = tiny_model(memory_write_rule=rule, memory_read_distance=TINY["window"] + 3)
    ids = torch.randint(0, TINY["vocab_size"], (2, LENGTH))
    parallel = model(ids, use_cache=False).logits
    chunked, _ = prefill_in_segments(model, ids, segment)
    assert (chunked - parallel).abs().max() <= TOL
    position_free = tiny_model(memory_write_rule=rule)(ids, use_cache=False).logits  # same seed, δ = 0
    assert (position_free - parallel).abs().max() > 1e-3


@torch.no_grad()
def test_long_prompt_runs_segment_by_segment():
    """A cached call longer than prefill_segment_len is split internally; same logits."""
    model = tiny_model(prefill_segment_len=24)
    ids = torch.randint(0, TINY["vocab_size"], (1, LENGTH))
    parallel = model(ids, use_cache=False).logits
    cached = model(ids, cache=BCTCache(model.config), use_cache=True).logits
    assert (cached - parallel).abs().max() <= TOL


def left_pad(prompts, pad_id=0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


@pytest.mark.parametrize("rule", ["gated", "retain"])
@pytest.mark.parametrize("mode", ["parallel", "prefill_segments", "decode"])
@torch.no_grad()
def test_left_padded_batch_matches_rows_alone(mode, rule):
    model = tiny_model(memory_write_rule=rule)
    lengths = [LENGTH, LENGTH - 29, LENGTH - 50]
    prompts = [torch.randint(1, TINY["vocab_size"], (n,)) for n in lengths]
    ids, mask = left_pad(prompts)
    if mode == "parallel":
        batch = model(ids, attention_mask=mask, use_cache=False).logits
    elif mode == "prefill_segments":
        batch, _ = prefill_in_segments(model, ids, 11, mask)
    else:
        batch, _ = prefill_in_segments(model, ids, 1, mask)
    for row, prompt in enumerate(prompts):
        alone = model(prompt[None], use_cache=False).logits[0]
        assert (batch[row, ids.shape[1] - len(prompt) :] - alone).abs().max() <= TOL, f"row {row}"


@torch.no_grad()
def test_decoding_after_padded_prefill_matches_rows_alone():
    """Rows of different phases evict at different steps; each must match its own uncached run."""
    model = tiny_model()
    prompts = [torch.randint(1, TINY["vocab_size"], (n,)) for n in (37, 50, 23)]
    ids, mask = left_pad(prompts)
    cache = BCTCache(model.config)
    model(ids, attention_mask=mask, cache=cache, use_cache=True)
    continuation = torch.randint(1, TINY["vocab_size"], (3, 3 * TINY["window"]))
    steps = []
    for t in range(continuation.shape[1]):
        mask = torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), dim=1)
        steps.append(model(continuation[:, t : t + 1], attention_mask=mask, cache=cache).logits)
    decoded = torch.cat(steps, dim=1)
    for row, prompt in enumerate(prompts):
        alone = model(torch.cat((prompt, continuation[row]))[None], use_cache=False).logits[0, len(prompt) :]
        assert (decoded[row] - alone).abs().max() <= TOL, f"row {row}"


@torch.no_grad()
def test_padding_after_real_tokens_is_refused_with_a_cache():
    model = tiny_model()
    ids = torch.randint(1, TINY["vocab_size"], (1, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]])
    with pytest.raises(ValueError, match="left padding"):
        model(ids, attention_mask=mask, cache=BCTCache(model.config), use_cache=True)


@torch.no_grad()
def test_memory_changes_the_output():
    """Guard against a silently inert memory: closing every write must change late logits."""
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (1, LENGTH))
    with_writes = model(ids, use_cache=False).logits
    model.set_memory_writes(False)
    closed = model(ids, use_cache=False).logits
    window_end = TINY["window"] + TINY["chunk_size"]
    assert torch.equal(with_writes[:, :window_end], closed[:, :window_end])  # no write happened yet there
    assert (with_writes[:, window_end:] - closed[:, window_end:]).abs().max() > 1e-3


@torch.no_grad()
def test_bf16_forward_and_decode_follow_float32():
    model = tiny_model()
    ids = torch.randint(0, TINY["vocab_size"], (1, LENGTH))
    reference = model(ids, use_cache=False).logits
    model_bf16 = tiny_model().to(torch.bfloat16)
    parallel = model_bf16(ids, use_cache=False).logits.float()
    decoded, _ = prefill_in_segments(model_bf16, ids, 1)
    assert parallel.dtype == torch.float32 and decoded.isfinite().all()
    assert (parallel - reference).abs().max() < 0.1
    assert (decoded.float() - reference).abs().max() < 0.1


@pytest.mark.parametrize("segment", [1, 5], ids=lambda s: f"segment{s}")
@torch.no_grad()
def test_retain_sink_slots_are_never_written(segment):
    """`memory_sink_slots`: the first S slots keep their initial contents through a long prefill and decode,
    the other M - S take evicted tokens, and chunked prefill/decode still equal the parallel forward."""
    sinks = 2
    model = tiny_model(memory_write_rule="retain", memory_sink_slots=sinks)
    ids = torch.randint(0, TINY["vocab_size"], (2, LENGTH))
    parallel = model(ids, use_cache=False).logits
    chunked, cache = prefill_in_segments(model, ids, segment)
    assert (chunked - parallel).abs().max() <= TOL
    for layer, state in zip(model.model.layers, cache.layers):
        memory = layer.self_attn.memory
        assert torch.equal(state.mem_keys[:, :, :sinks], memory.init_keys[:, :sinks].expand(2, -1, -1, -1))
        assert torch.equal(
            state.mem_values[:, :, :sinks], memory.init_values[:, :sinks].expand(2, -1, -1, -1)
        )
        assert (
            state.mem_keys[:, :, sinks:] - memory.init_keys[:, sinks:]
        ).abs().max() > 1e-2  # the rest moved
