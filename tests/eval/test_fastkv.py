"""FastKV against a plain reference built from HF's eager attention weights: what it keeps per KV head,
what it propagates past the TSP layer, and how it decodes afterwards."""

import copy

import pytest
import torch

from eval.baselines.fastkv import FastKVCache, FastKVSettings, fastkv_prefill
from eval.methods import make_method
from eval.scoring import predict_answers
from modeling.cache import CACHE_ARG

from .conftest import tiny_llama

N, WINDOW, KERNEL = 48, 4, 3


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_llama(len(tokenizer), seed=7, layers=4)


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 300, (1, N), generator=torch.Generator().manual_seed(8))


def eager_run(model, ids):
    """Attention probabilities (B, H, n, n) and hidden states of every layer, with HF's eager attention."""
    eager = copy.deepcopy(model)
    eager.config._attn_implementation = "eager"
    with torch.no_grad():
        out = eager(ids, output_attentions=True, output_hidden_states=True)
    return out.attentions, out.hidden_states, out.logits


def reference_scores(probs, groups=None):
    """Window votes (B, [G,] n - w): summed over the window queries, averaged over heads (in groups), pooled."""
    votes = probs[:, :, -WINDOW:, :-WINDOW].sum(dim=2)  # (B, H, n - w)
    if groups is None:
        votes = votes.mean(dim=1, keepdim=True)
    else:
        votes = votes.view(votes.shape[0], groups, -1, votes.shape[-1]).mean(dim=2)
    pooled = torch.zeros_like(votes)
    n = votes.shape[-1]
    for i in range(n):  # centred average over the in-range neighbours
        lo, hi = max(0, i - KERNEL // 2), min(n, i + KERNEL // 2 + 1)
        pooled[..., i] = votes[..., lo:hi].mean(dim=-1)
    return pooled


def keep_set(scores, count, n):
    best = scores.topk(count, dim=-1).indices
    return [sorted(set(row.tolist()) | set(range(n - WINDOW, n))) for row in best.reshape(-1, count)]


def test_no_compression_equals_full_attention(model, prompt):
    cache = FastKVCache(4)
    settings = FastKVSettings(budget=N + 8, tsp_rate=1.0, window=WINDOW, kernel=KERNEL)
    last = fastkv_prefill(model, prompt[:, :40], cache, settings)
    with torch.no_grad():
        rest = model(prompt[:, 40:], **{CACHE_ARG: cache}).logits
        full = model(prompt).logits
    torch.testing.assert_close(last[:, -1], full[:, 39], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rest, full[:, 40:], atol=1e-5, rtol=1e-4)


def test_gqa_aware_compression_keeps_the_reference_tokens_per_kv_head(model, prompt):
    budget = 16
    settings = FastKVSettings(budget=budget, tsp_layer=3, tsp_rate=1.0, window=WINDOW, kernel=KERNEL)
    cache = FastKVCache(4)
    last = fastkv_prefill(model, prompt, cache, settings)
    probs, _, logits = eager_run(model, prompt)
    # The prefill itself is not changed by compressing the cache (each layer compresses after attending).
    torch.testing.assert_close(last[:, -1], logits[:, -1], atol=1e-4, rtol=1e-4)
    full_cache = FastKVCache(4)
    fastkv_prefill(model, prompt, full_cache, FastKVSettings(budget=N + 8, tsp_rate=1.0, window=WINDOW))
    groups = model.config.num_key_value_heads
    for layer in range(4):
        expected = keep_set(reference_scores(probs[layer].float(), groups), budget - WINDOW, N)
        stored, everything = (
            cache.layers[layer].keys[0],
            full_cache.layers[layer].keys[0],
        )  # (G, k, d), (G, N, d)
        assert cache.layers[layer].keys.shape[-2] == budget and cache.layers[layer].seen == N
        for head in range(groups):
            distance = torch.cdist(stored[head], everything[head])  # which prompt token each kept key is
            kept = sorted(distance.argmin(dim=-1).tolist())
            assert kept == expected[head], (layer, head)


def test_token_selective_propagation_matches_the_reference(model, prompt):
    """Layers after the TSP layer run on the selected tokens only, at their original positions."""
    tsp_layer, tsp_len = 1, 24
    settings = FastKVSettings(
        budget=12, tsp_layer=tsp_layer, tsp_rate=tsp_len / N, window=WINDOW, kernel=KERNEL
    )
    last = fastkv_prefill(model, prompt, FastKVCache(4), settings)

    probs, hidden_states, full_logits = eager_run(model, prompt)
    chosen = keep_set(reference_scores(probs[tsp_layer].float()), tsp_len - WINDOW, N)[0]
    index = torch.tensor(chosen)
    hidden = hidden_states[tsp_layer + 1][:, index]  # the TSP layer's output at the chosen tokens
    positions = index[None]
    inner = model.model
    with torch.no_grad():
        for layer in inner.layers[tsp_layer + 1 :]:
            hidden = layer(
                hidden, position_embeddings=inner.rotary_emb(hidden, positions), position_ids=positions
            )
        reference = model.lm_head(inner.norm(hidden[:, -1:]))
    torch.testing.assert_close(last, reference, atol=1e-4, rtol=1e-4)
    assert (last[:, -1] - full_logits[:, -1]).abs().max() > 1e-4  # dropping tokens did change something


def test_fastkv_method_keeps_the_whole_stream_within_the_budget(tokenizer, model, prompt):
    from eval.methods import LoadedModel

    method = make_method(LoadedModel("tiny", model, tokenizer), "fastkv", 20, fastkv={"window": WINDOW})
    answers = torch.tensor([N - 5, N - 3, N - 1])
    predicted = predict_answers(method, prompt[0], answers)
    assert predicted.shape == (3,)
    cache = method.new_cache()
    method.prefill(prompt[:, : N - 5], cache, reserve=4)
    for _, _ in method.stream(prompt[:, N - 5 : N - 1], cache):
        pass
    assert [layer.keys.shape[-2] for layer in cache.layers] == [20] * 4  # 16 prompt entries + 4 fed
    assert cache.get_seq_length() == N - 1


def test_settings_are_validated():
    with pytest.raises(ValueError, match="observation window"):
        FastKVSettings(budget=8, window=8)
    with pytest.raises(ValueError, match="odd"):
        FastKVSettings(budget=16, kernel=4)
    with pytest.raises(ValueError, match="tsp_layer"):
        FastKVSettings(budget=16, tsp_layer=9).resolve_tsp_layer(4)
