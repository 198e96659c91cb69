"""SnapKV and FastKV select what the authors' code selects (`window_scores.REFERENCE`).

`reference_update_kv` below restates that code's `update_kv` (baselines/fastkv/utils.py; its SnapKV baseline
is the same without the group sum and the propagation) in plain loops over heads, window queries and
positions, on the rotated queries and keys it receives; `reference_forward` restates its model loop (full
layers up to the TSP layer, then only the propagated tokens at their original positions). Both are held
against the code under test on a GQA model (4 query heads on 2 KV heads), with `avg` and `max` pooling.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from eval.contenders.baselines.fastkv import FastKVSettings, fastkv_cache, fastkv_prefill
from eval.contenders.baselines.snapkv import SnapKVSettings, snapkv_cache, snapkv_model, snapkv_prefill
from eval.contenders.baselines.window_scores import Scoring

from .conftest import tiny_llama

N, WINDOW, KERNEL, BUDGET = 48, 4, 3, 12
TIE = 1e-6  # scores closer than this are a tie: either token is a faithful choice


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_llama(len(tokenizer), seed=7, layers=4)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    return model


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(0, 300, (1, N), generator=torch.Generator().manual_seed(8))


def reference_update_kv(queries, keys, groups, pooling, capacity, per_query_head=False):
    """queries (H, n, d) and keys (G, n, d), rotated, one batch row. Returns (kept, scores): per stored head
    the sorted local indices kept (None when n < capacity keeps everything) and the scores (K, n - window)
    they were chosen by."""
    heads, n, dim = queries.shape
    if n < capacity:
        return None, None
    earlier = n - WINDOW
    votes = torch.zeros(heads, earlier)
    for h in range(heads):
        key = keys[h // groups]
        for i in range(WINDOW):
            t = earlier + i  # the token this window query belongs to
            logits = torch.full((n,), -math.inf)
            for j in range(t + 1):  # causal inside the window; the earlier tokens all visible
                logits[j] = torch.dot(queries[h, t], key[j]) / math.sqrt(dim)
            votes[h] += torch.softmax(logits, dim=0)[:earlier]
    pooled = torch.zeros(heads, earlier)
    for h in range(heads):
        for p in range(earlier):
            inside = [votes[h, q] for q in range(p - KERNEL // 2, p + KERNEL // 2 + 1) if 0 <= q < earlier]
            # avg_pool1d counts the padding: divide by the kernel, not by what is inside
            pooled[h, p] = max(inside) if pooling == "max" else sum(inside) / KERNEL
    if per_query_head:
        scores = pooled
    else:
        scores = torch.stack(
            [pooled[g * groups : (g + 1) * groups].sum(dim=0) for g in range(heads // groups)]
        )
    kept = [sorted(row.topk(capacity - WINDOW).indices.tolist() + list(range(earlier, n))) for row in scores]
    return kept, scores


def rotated_qk(layer, hidden, positions, rotary):
    """The attention's rotated queries (H, n, d) and keys (G, n, d) for one batch row."""
    attn = layer.self_attn
    normed = layer.input_layernorm(hidden)
    shape = (1, hidden.shape[1], -1, attn.head_dim)
    q = attn.q_proj(normed).view(shape).transpose(1, 2)
    k = attn.k_proj(normed).view(shape).transpose(1, 2)
    cos, sin = rotary(hidden, positions)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q[0], k[0]


@torch.no_grad()
def reference_forward(model, ids, pooling, tsp_layer=None, tsp_len=None, per_query_head=False):
    """The reference's prefill: per layer the kept original positions per stored head (and the scores and
    positions they were chosen among), the tokens propagated past the TSP layer, the last logits."""
    inner = model.model
    groups = model.config.num_attention_heads // model.config.num_key_value_heads
    hidden = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    layers, propagated = [], None
    for index, layer in enumerate(inner.layers):
        q, k = rotated_qk(layer, hidden, positions, inner.rotary_emb)
        kept, scores = reference_update_kv(q, k, groups, pooling, BUDGET, per_query_head)
        layers.append((kept, scores, positions[0].tolist()))
        hidden = layer(
            hidden, position_embeddings=inner.rotary_emb(hidden, positions), position_ids=positions
        )
        n = hidden.shape[1]
        if index == tsp_layer and kept is not None and n > tsp_len:
            earlier = n - WINDOW
            chosen = scores.sum(dim=0).topk(tsp_len - WINDOW).indices.tolist() + list(range(earlier, n))
            propagated = (sorted(chosen), scores.sum(dim=0), positions[0].tolist())
            index_tensor = torch.tensor(sorted(chosen))
            hidden, positions = hidden[:, index_tensor], positions[:, index_tensor]
    return layers, propagated, model.lm_head(inner.norm(hidden[:, -1:]))


def assert_same_choice(ours: list[int], theirs: list[int], scores: torch.Tensor, where) -> None:
    """Equal index sets, except that tokens tied in score at the selection boundary may be swapped."""
    swapped_in, swapped_out = set(ours) - set(theirs), set(theirs) - set(ours)
    assert len(swapped_in) == len(swapped_out), where
    for i in swapped_in:
        for j in swapped_out:
            assert abs(float(scores[i]) - float(scores[j])) < TIE, (where, i, j)


def assert_layers_keep_the_reference(cache, reference_layers, per_query_head=False) -> None:
    for index, (kept, scores, positions) in enumerate(reference_layers):
        stored = cache.layers[index].positions[0]  # (K, k) original positions of what our layer keeps
        if kept is None:  # a short input is kept whole
            assert all(sorted(row.tolist()) == positions for row in stored), index
            continue
        assert stored.shape[-1] == BUDGET, index
        local = {p: i for i, p in enumerate(positions)}
        for head, row in enumerate(stored):
            ours = sorted(local[int(p)] for p in row)
            assert_same_choice(ours, kept[head], scores[head], (index, head))


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_fastkv_keeps_and_propagates_what_the_reference_does(model, prompt, pooling):
    tsp_layer, tsp_len = 1, 24
    settings = FastKVSettings(
        budget=BUDGET,
        tsp_layer=tsp_layer,
        tsp_len=tsp_len,
        scoring=Scoring(window=WINDOW, kernel=KERNEL, pooling=pooling),
    )
    cache = fastkv_cache(model)
    logits = fastkv_prefill(model, prompt, cache, settings)
    layers, propagated, reference_logits = reference_forward(model, prompt, pooling, tsp_layer, tsp_len)

    chosen, scores, _ = propagated
    ours = sorted(cache.layers[tsp_layer + 1].positions[0, 0].tolist())  # layer 2 saw only propagated tokens
    assert len(layers[tsp_layer + 1][2]) == tsp_len
    # A tie here would send the two runs down different paths; this prompt has a clear boundary.
    assert ours is not None and layers[tsp_layer + 1][2] == chosen
    top = scores.sort(descending=True).values
    assert top[tsp_len - WINDOW - 1] - top[tsp_len - WINDOW] > TIE
    assert_layers_keep_the_reference(cache, layers)
    for index in range(tsp_layer + 1, 4):  # every later layer selected among the propagated tokens only
        assert set(cache.layers[index].positions[0].flatten().tolist()) <= set(chosen)
    torch.testing.assert_close(logits, reference_logits, atol=1e-5, rtol=1e-4)
    assert all(layer.seen == N for layer in cache.layers)


@pytest.mark.parametrize("per_query_head", [False, True], ids=["per-kv-head", "per-query-head"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_keeps_what_the_reference_does(model, prompt, pooling, per_query_head):
    settings = SnapKVSettings(
        budget=BUDGET,
        per_query_head=per_query_head,
        scoring=Scoring(window=WINDOW, kernel=KERNEL, pooling=pooling),
    )
    runner = snapkv_model(model, per_query_head)
    cache = snapkv_cache(model, per_query_head)
    logits = snapkv_prefill(runner, prompt, cache, settings)
    layers, propagated, reference_logits = reference_forward(
        model, prompt, pooling, per_query_head=per_query_head
    )
    assert propagated is None
    heads = model.config.num_attention_heads if per_query_head else model.config.num_key_value_heads
    assert all(layer.keys.shape[1] == heads for layer in cache.layers)
    assert_layers_keep_the_reference(cache, layers, per_query_head)
    torch.testing.assert_close(logits, reference_logits, atol=1e-5, rtol=1e-4)


def test_tsp_shrinks_the_later_layers(model, prompt):
    """The compute FastKV saves: the layers after the TSP layer run on `tsp_len` tokens, SnapKV's on all."""
    seen: list[int] = []
    hooks = [
        layer.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True
        )
        for layer in model.model.layers
    ]
    try:
        scoring = Scoring(window=WINDOW, kernel=KERNEL)
        fastkv_prefill(
            model,
            prompt,
            fastkv_cache(model),
            FastKVSettings(budget=BUDGET, tsp_layer=1, tsp_len=16, scoring=scoring),
        )
        fastkv_lengths, seen[:] = list(seen), []
        snapkv_prefill(
            model, prompt, snapkv_cache(model, False), SnapKVSettings(budget=BUDGET, scoring=scoring)
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert fastkv_lengths == [N, N, 16, 16]
    assert seen == [N] * 4


def test_settings_are_validated():
    with pytest.raises(ValueError, match="observation window"):
        FastKVSettings(budget=8, scoring=Scoring(window=8))
    with pytest.raises(ValueError, match="odd"):
        Scoring(kernel=4)
    with pytest.raises(ValueError, match="Pooling"):
        Scoring(pooling="mean")
    with pytest.raises(ValueError, match="tsp_layer"):
        FastKVSettings(budget=16, tsp_layer=9).resolve_tsp_layer(4)
    with pytest.raises(ValueError, match="tsp_rate"):
        FastKVSettings(budget=16, tsp_rate=1.5)
    assert FastKVSettings(budget=16, tsp_rate=0.25).resolve_tsp_len(100) == 25  # int(), as the reference
    assert FastKVSettings(budget=16).resolve_tsp_layer(32) == 15  # the reference's tsp_idx for 32 layers
