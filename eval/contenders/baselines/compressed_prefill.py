"""One prefill loop for the prompt compressors: SnapKV (no propagation) and FastKV (token-selective propagation).

Layer by layer, HF's own decoder layer attends over the current tokens (causally, no mask: the kernel's causal
flag) and stores their keys and values in a `CompressedCache`; then, as in the reference's `update_kv`
(`window_scores.REFERENCE`), a layer whose input holds at least `budget` tokens keeps `budget - window` of its
earlier tokens per stored head plus the window; a shorter input is kept whole. At FastKV's TSP layer, when its
input is longer than `tsp_len`, only the `tsp_len` best tokens (window included) by the scores summed over every
head, in position order and at their original positions, go on to the later layers, which then run on a short
sequence. The compression never changes the prefill's own outputs: each layer compresses after attending.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from eval.contenders.baselines.prompt_cache import CompressedCache
from eval.contenders.baselines.window_scores import Scoring, group_sum, pool, top_with_window, window_votes
from modeling.cache import CACHE_ARG


@torch.no_grad()
def compressed_prefill(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    cache: CompressedCache,
    budget: int,
    scoring: Scoring,
    tsp_layer: int | None = None,
    tsp_len: int | None = None,
) -> torch.Tensor:
    """Run the prompt (B, N) through `model`, leaving each layer's kept entries in `cache`; return the logits
    of the last prompt token (B, 1, V). `budget`: entries kept per stored head (> window); `tsp_layer` and
    `tsp_len`: FastKV's propagation (None: none, SnapKV)."""
    if budget <= scoring.window:
        raise ValueError(
            f"KV budget = {budget} entries must exceed the observation window = {scoring.window}."
        )
    inner = model.model
    n_total = input_ids.shape[1]
    window = scoring.window
    hidden = inner.embed_tokens(input_ids)  # (B, n, D); n becomes tsp_len after the TSP layer
    positions = torch.arange(n_total, device=input_ids.device)[None].expand(input_ids.shape[0], -1)  # (B, n)
    for index, layer in enumerate(inner.layers):
        cos_sin = inner.rotary_emb(hidden, positions)
        normed = layer.input_layernorm(hidden)  # recomputed here for the window's queries only
        out = layer(
            hidden,
            attention_mask=None,
            position_ids=positions,
            **{CACHE_ARG: cache},
            use_cache=True,
            position_embeddings=cos_sin,
        )
        hidden_out = out[0] if isinstance(out, tuple) else out
        n = hidden.shape[1]
        cached = cache.layers[index]
        cached.positions = positions[:, None].expand(-1, cached.keys.shape[1], -1)  # (B, K, n) after TSP too
        if n < budget:  # the reference keeps a short input whole (and never propagates from it)
            cached.seen = n_total
            hidden = hidden_out
            continue
        votes = pool(
            window_votes(layer.self_attn, normed, cos_sin, cached.keys, window), scoring
        )  # (B, H, n-w)
        stored_heads = cached.keys.shape[1]  # G, or H when stored per query head
        scores = votes if stored_heads == votes.shape[1] else group_sum(votes, stored_heads)  # (B, K, n - w)
        cached.keep(top_with_window(scores, budget - window, n, window), n_total)
        if index == tsp_layer and n > tsp_len:
            if tsp_len <= window:
                raise ValueError(
                    f"FastKV would propagate {tsp_len} of {n} tokens, not more than the observation window "
                    f"= {window}: raise tsp_len or tsp_rate."
                )
            chosen = top_with_window(scores.sum(dim=1), tsp_len - window, n, window)  # (B, tsp_len)
            hidden_out = hidden_out.gather(1, chosen[..., None].expand(-1, -1, hidden_out.shape[-1]))
            positions = positions.gather(1, chosen)
        hidden = hidden_out
    return model.lm_head(inner.norm(hidden[:, -1:]))
