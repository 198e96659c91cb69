"""FastKV (Jo et al., 2025, arXiv 2502.01068) on HF Llama-family models, for prompt -> answer tasks.

FastKV shortens the prefill and bounds the decode-time cache:

- **Token-selective propagation (TSP).** Layers up to and including the TSP layer run on the whole prompt.
  At the TSP layer the queries of an observation window (the last `window` prompt tokens) score every
  earlier token: attention probabilities summed over the window queries and over all heads, smoothed by an
  average pool along positions. Only the `tsp_len` best tokens (the window always among them), in their
  original order and with their original positions, propagate to the later layers, which therefore run on
  a short sequence.
- **GQA-aware KV compression** in every layer, SnapKV-style: the same window scores, but aggregated over
  the query heads of each KV group (mean), so that one selection serves a whole group; each KV head keeps
  its `budget - window` best earlier tokens plus the window itself. Early layers select from the whole
  prompt, later ones from the propagated tokens.

Defaults follow the paper's released settings (observation window 8, average pooling with kernel 7, TSP layer
at about half depth); `tsp_rate` sets `tsp_len` as a share of the prompt (never below the KV budget).

Decoding then appends each new token to every layer's compressed cache (`FastKVCache`); positions continue
from the prompt length. The model must be Llama-shaped: q/k/v projections then RoPE, no q/k norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from modeling.cache import CACHE_ARG


@dataclass
class FastKVSettings:
    """`budget`: KV entries per layer and KV head kept from the prompt; `tsp_layer`: index of the TSP layer
    (None: `num_layers // 2 - 1`, the paper's 15 of 32); `tsp_rate`: share of the prompt propagated past it
    (`tsp_len = max(budget, ceil(tsp_rate * prompt))`); `window`: observation window; `kernel`: pooling."""

    budget: int
    tsp_layer: int | None = None
    tsp_rate: float = 0.2
    window: int = 8
    kernel: int = 7

    def __post_init__(self) -> None:
        if self.window < 1 or self.budget <= self.window:
            raise ValueError(
                f"FastKV budget = {self.budget} must exceed the observation window = {self.window} (>= 1)."
            )
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(
                f"FastKV kernel = {self.kernel} must be a positive odd number (centred pooling)."
            )
        if not 0 < self.tsp_rate <= 1:
            raise ValueError(f"FastKV tsp_rate = {self.tsp_rate} must be in (0, 1].")

    def resolve_tsp_layer(self, num_layers: int) -> int:
        layer = max(num_layers // 2 - 1, 0) if self.tsp_layer is None else self.tsp_layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"FastKV tsp_layer = {layer} must index one of the model's {num_layers} layers.")
        return layer


class FastKVLayer(DynamicLayer):
    """A layer's cache: the compressed prompt entries, then every decoded token. `seen` counts stream tokens
    (so positions continue at the prompt length), `keys.shape[-2]` what is stored."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = 0

    def update(self, key_states, value_states, *args, **kwargs):
        self.seen += key_states.shape[-2]
        return super().update(key_states, value_states)

    def keep(self, index: torch.Tensor, seen: int) -> None:
        """Keep stored entries `index` (B, G, k) per KV head; the stream so far is `seen` tokens long."""
        gather = index[..., None].expand(-1, -1, -1, self.keys.shape[-1])
        self.keys, self.values = self.keys.gather(2, gather), self.values.gather(2, gather)
        self.seen = seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return stored + query_length, self.seen - stored  # stored entries all precede the queries

    def get_seq_length(self) -> int:
        return self.seen

    def reset(self) -> None:
        super().reset()
        self.seen = 0


class FastKVCache(Cache):
    def __init__(self, num_layers: int):
        super().__init__(layers=[FastKVLayer() for _ in range(num_layers)])


def window_scores(attn: torch.nn.Module, normed: torch.Tensor, cos_sin, keys: torch.Tensor, window: int):
    """Attention probabilities of the last `window` queries over the `n` stored keys.

    normed: the layer's attention input (B, n, D); keys: (B, G, n, d) as cached (rotated). Returns the
    probability mass each earlier token receives from the window, (B, H, n - window)."""
    batch, n, _ = normed.shape
    query = (
        attn.q_proj(normed[:, -window:]).view(batch, window, -1, attn.head_dim).transpose(1, 2)
    )  # (B, H, w, d)
    cos, sin = (t[:, -window:] for t in cos_sin)
    query, _ = apply_rotary_pos_emb(query, query, cos, sin)
    scores = torch.matmul(query, repeat_kv(keys, attn.num_key_value_groups).transpose(2, 3)) * attn.scaling
    # The window is causal within itself: window query i sees keys up to n - window + i.
    future = torch.ones(window, window, dtype=torch.bool, device=keys.device).triu(1)
    scores[..., n - window :] = scores[..., n - window :].masked_fill(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores.float(), dim=-1)  # (B, H, w, n)
    return probs[..., : n - window].sum(dim=-2)  # (B, H, n - w)


def pooled(votes: torch.Tensor, kernel: int) -> torch.Tensor:
    """Average pooling along the last (token) axis, same length: (..., n) -> (..., n)."""
    shape = votes.shape
    out = F.avg_pool1d(
        votes.reshape(-1, 1, shape[-1]), kernel, stride=1, padding=kernel // 2, count_include_pad=False
    )
    return out.reshape(shape)


def top_tokens(scores: torch.Tensor, count: int, n: int, window: int) -> torch.Tensor:
    """Indices (..., count + window) of the `count` best earlier tokens plus the window, in position order."""
    best = scores.topk(count, dim=-1).indices
    tail = torch.arange(n - window, n, device=scores.device).expand(*scores.shape[:-1], window)
    return torch.cat((best, tail), dim=-1).sort(dim=-1).values


@torch.no_grad()
def fastkv_prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, cache: FastKVCache, settings: FastKVSettings
) -> torch.Tensor:
    """Run the prompt (B, N) through `model` the FastKV way, leaving each layer's compressed KV in `cache`.
    Returns the logits of the last prompt token (B, 1, V)."""
    inner = model.model
    n_total = input_ids.shape[1]
    window = min(settings.window, n_total)
    tsp_layer = settings.resolve_tsp_layer(len(inner.layers))
    tsp_len = max(settings.budget, math.ceil(settings.tsp_rate * n_total))
    hidden = inner.embed_tokens(input_ids)  # (B, n, D); n shrinks to tsp_len after the TSP layer
    positions = torch.arange(n_total, device=input_ids.device)[None].expand(input_ids.shape[0], -1)
    for index, layer in enumerate(inner.layers):
        cos_sin = inner.rotary_emb(hidden, positions)
        normed = layer.input_layernorm(hidden)  # recomputed here only for the window's queries
        # HF's own layer, causal over the current tokens (mask None: sdpa's is_causal, q_len == kv_len).
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
        need_kv = n > settings.budget
        need_tsp = index == tsp_layer and n > tsp_len
        if need_kv or need_tsp:
            votes = window_scores(layer.self_attn, normed, cos_sin, cached.keys, window)  # (B, H, n - w)
        if need_kv:
            groups = cached.keys.shape[1]
            by_group = votes.view(votes.shape[0], groups, -1, votes.shape[-1]).mean(dim=2)  # (B, G, n - w)
            keep = top_tokens(pooled(by_group, settings.kernel), settings.budget - window, n, window)
            cached.keep(keep, n_total)
        else:
            cached.seen = n_total
        if need_tsp:
            chosen = top_tokens(
                pooled(votes.mean(dim=1), settings.kernel), tsp_len - window, n, window
            )  # (B, t)
            hidden_out = hidden_out.gather(1, chosen[..., None].expand(-1, -1, hidden_out.shape[-1]))
            positions = positions.gather(1, chosen)
        hidden = hidden_out
    return model.lm_head(inner.norm(hidden[:, -1:]))
