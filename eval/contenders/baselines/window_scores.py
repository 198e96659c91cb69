"""The observation-window scores that SnapKV and FastKV select prompt tokens by, in the reference's order.

Reference: the FastKV authors' code, `REFERENCE` below (`baselines/fastkv/utils.py`, `FastKVCluster.update_kv`;
its SnapKV baseline scores the same way). For a prompt of `n` tokens and a window of the last `w`:

1. every query head's window queries attend to all `n` keys (causal inside the window); the softmax runs in
   float32 and is cast back to the model's dtype, as the reference does;
2. each query head's probabilities on the `n - w` earlier tokens are summed over its `w` queries: (B, H, n - w);
3. each query head's row is pooled along positions, `avg` (PyTorch's `avg_pool1d`, padding counted, so the
   edges are pulled down) or `max` (`max_pool1d`), kernel `k`, same length;
4. GQA-aware variants sum the pooled rows over the query heads of each KV group: (B, G, n - w). FastKV's
   token-selective propagation sums those once more over the KV groups: (B, n - w).

The top-scoring earlier tokens plus the whole window are kept, in position order (the reference keeps them in
score order; attention does not depend on the order of stored entries, so the kept set is what matters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

# The authors' code whose semantics and defaults these baselines follow (window 8, kernel 7, `maxpool`, TSP at
# layer 15 of 32 with 2048 propagated tokens, constant-budget mode). Recorded in every result file.
REFERENCE = "github.com/dongwonjo/FastKV@b9787691535717c9ef39156b0fee8542c822df65"
POOLINGS = ("max", "avg")


@dataclass(frozen=True)
class Scoring:
    """`window`: observation window (the last prompt tokens, always kept); `kernel`: pooling width (odd, so
    that the pooled row keeps its length); `pooling`: `max` (the reference scripts' default) or `avg`."""

    window: int = 8
    kernel: int = 7
    pooling: str = "max"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"Observation window = {self.window} must be at least 1.")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(
                f"Pooling kernel = {self.kernel} must be a positive odd number (centred pooling)."
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"Pooling = {self.pooling!r} is not supported: one of {POOLINGS}.")


def window_votes(
    attn: torch.nn.Module,
    normed: torch.Tensor,
    cos_sin: tuple[torch.Tensor, torch.Tensor],
    keys: torch.Tensor,
    window: int,
) -> torch.Tensor:
    """Steps 1-2: attention mass each earlier token gets from the window's queries, per query head.

    normed: the layer's attention input (B, n, D); cos_sin: RoPE tables for the n tokens' positions; keys:
    the layer's keys as cached (B, K, n, d), rotated, K = KV heads (or query heads when stored per query
    head, where `attn.num_key_value_groups` is 1). Returns (B, H, n - window)."""
    batch, n, _ = normed.shape
    query = (
        attn.q_proj(normed[:, -window:]).view(batch, window, -1, attn.head_dim).transpose(1, 2)
    )  # (B,H,w,d)
    cos, sin = (t[:, -window:] for t in cos_sin)
    query, _ = apply_rotary_pos_emb(query, query, cos, sin)
    scores = query @ repeat_kv(keys, attn.num_key_value_groups).transpose(2, 3) * attn.scaling  # (B, H, w, n)
    # Causal inside the window: window query i sees keys up to n - window + i.
    future = torch.ones(window, window, dtype=torch.bool, device=keys.device).triu(1)
    scores[..., n - window :] = scores[..., n - window :].masked_fill(future, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return probs[..., : n - window].sum(dim=-2)  # (B, H, n - w)


def pool(votes: torch.Tensor, scoring: Scoring) -> torch.Tensor:
    """Step 3, per row: (B, H, L) -> (B, H, L). `avg` divides every window by `kernel`, pads included."""
    pad = scoring.kernel // 2
    if scoring.pooling == "avg":
        return F.avg_pool1d(votes, scoring.kernel, stride=1, padding=pad)
    return F.max_pool1d(votes, scoring.kernel, stride=1, padding=pad)


def group_sum(pooled: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """Step 4: (B, H, L) -> (B, G, L), summing the query heads that share a KV head (HF's head order:
    query head h reads KV head h // (H / G))."""
    batch, heads, length = pooled.shape
    return pooled.view(batch, kv_heads, heads // kv_heads, length).sum(dim=2)


def top_with_window(scores: torch.Tensor, count: int, n: int, window: int) -> torch.Tensor:
    """Indices (..., count + window) into the n tokens: the `count` best earlier tokens by `scores` (..., n -
    window) and the window itself, in position order."""
    best = scores.topk(count, dim=-1).indices
    tail = torch.arange(n - window, n, device=scores.device).expand(*scores.shape[:-1], window)
    return torch.cat((best, tail), dim=-1).sort(dim=-1).values
