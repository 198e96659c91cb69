"""Per-call row bookkeeping shared by every layer of one forward call.

A forward call brings T new columns per row, some of them left padding. Rows may differ in how many real
tokens they have seen, so each row's chunk phase is counted from its own first real token. The attention
works on a *virtual sequence* per row: the ring held by the cache (which starts at a chunk boundary)
followed by the row's real new tokens. Virtual chunk j then reads the memory after `max(0, j - W/C)`
writes of virtual chunks, exactly like a fresh parallel forward from the cached memory. This makes the
parallel forward, chunked prefill of any segment length and token-by-token decoding the same function.

Two plans:
- `StepPlan`: one real token per row (decoding); the ring is updated in place of a virtual sequence.
- `ChunkPlan`: anything else (training, prefill, padded batches).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepPlan:
    """One real new token per row. Positions are local: ring index == RoPE position. Everything every layer
    needs is computed here once per step."""

    evict: torch.Tensor  # (B,) bool: ring full and the token starts a chunk -> write the oldest chunk first
    any_evict: bool
    position: torch.Tensor  # (B,) ring index the new token lands on, after eviction
    seen: torch.Tensor  # (B,) counters after the call
    ring_len: torch.Tensor  # (B,)
    cos_q: torch.Tensor  # (B, 1, 1, d) the new token's rotation, at local position `position`
    sin_q: torch.Tensor
    cos_keys: torch.Tensor  # (B, 1, M + W + C, d) memory slots at the query's angle, ring entry i at i
    sin_keys: torch.Tensor
    bias: torch.Tensor  # (B, 1, 1, M + W + C) 0 where a key is visible, finfo.min over unfilled ring entries


@dataclass
class ChunkPlan:
    """Virtual sequences of `length` tokens (a multiple of C) for all rows; queries from `first_chunk` on."""

    length: int  # S
    first_chunk: int  # j0: first virtual chunk holding a new token of some row
    uniform_ring_len: int | None  # all rows share this ring length and have no padding (slicing, no gathers)
    gather: torch.Tensor | None  # (B, S) index into cat(ring, new) along time, when not uniform
    out_index: torch.Tensor | None  # (B, T) query-region index of each new column, when not uniform
    real: torch.Tensor  # (B, T) bool: column is a real token
    writes: torch.Tensor  # (B,) memory writes this call per row (index into the stacked memory states)
    ring_index: torch.Tensor  # (B, W + C) virtual positions of the ring after the call
    ring_valid: torch.Tensor  # (B, W + C) bool
    seen: torch.Tensor  # (B,) counters after the call
    ring_len: torch.Tensor  # (B,)
    cos: torch.Tensor  # (S, d)
    sin: torch.Tensor


def real_token_mask(
    attention_mask: torch.Tensor | None, batch: int, new: int, device, cached: bool
) -> torch.Tensor:
    """(B, T) bool mask of real tokens among the new columns. Padding must be on the left; without a cache,
    trailing pads are also accepted and treated as tokens (causality keeps them from affecting real ones)."""
    if attention_mask is None:
        return torch.ones(batch, new, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2:
        raise ValueError(
            f"BCT takes a 2D attention_mask of shape (batch, columns), got shape {tuple(attention_mask.shape)}: "
            "the model builds its own memory/window mask."
        )
    real = attention_mask[:, -new:].to(device=device, dtype=torch.bool)
    started = real.cummax(dim=1).values  # True from each row's first real token on
    holes = started & ~real
    if holes.any():
        if cached:
            raise ValueError(
                "attention_mask has padding after a real token. With a cache, BCT needs left padding "
                "(tokenizer.padding_side = 'left'): pads can't be taken back out of the memory."
            )
        real = started
    return real


def plan_step(seen, ring_len, slots: int, window: int, chunk: int, cos, sin) -> StepPlan:
    evict = (ring_len == window + chunk) & (seen % chunk == 0)
    position = ring_len - chunk * evict.long()
    future = torch.arange(window + chunk, device=seen.device) > position[:, None]  # (B, W + C)
    batch = seen.shape[0]
    bias = torch.zeros(batch, 1, 1, slots + window + chunk, dtype=cos.dtype, device=seen.device)
    cos_q, sin_q = cos[position][:, None, None], sin[position][:, None, None]  # (B, 1, 1, d)
    bias[:, 0, 0, slots:].masked_fill_(future, torch.finfo(cos.dtype).min)
    return StepPlan(
        evict=evict,
        any_evict=bool(evict.any()),
        position=position,
        seen=seen + 1,
        ring_len=position + 1,
        cos_q=cos_q,
        sin_q=sin_q,
        cos_keys=torch.cat((cos_q.expand(-1, 1, slots, -1), cos.expand(batch, 1, -1, -1)), dim=2),
        sin_keys=torch.cat((sin_q.expand(-1, 1, slots, -1), sin.expand(batch, 1, -1, -1)), dim=2),
        bias=bias,
    )


def plan_chunks(
    seen, ring_len, real: torch.Tensor, window: int, chunk: int, cached: bool, rotary_table
) -> ChunkPlan:
    """seen, ring_len: (B,) counters before the call; real: (B, T) bool; `cached`: the layers hold a ring
    tensor of W + C entries to prepend. `rotary_table(n)` -> (cos, sin)."""
    batch, new = real.shape
    device = real.device
    ring_size = window + chunk
    n_real = real.sum(dim=1)  # (B,)
    pads = new - n_real
    virtual_len = ring_len + n_real  # (B,)
    length = max(chunk, -(-int(virtual_len.max()) // chunk) * chunk)
    first_chunk = int((ring_len // chunk).min())
    # Writes absorbed by each row after the call, counted from the ring start (DESIGN §7 lazy rule).
    writes = torch.where(
        virtual_len > 0,
        ((virtual_len - 1) // chunk - window // chunk).clamp_min(0),
        torch.zeros_like(virtual_len),
    )
    new_ring_len = virtual_len - writes * chunk
    slots = torch.arange(ring_size, device=device)
    ring_index = (writes * chunk).unsqueeze(1) + slots  # (B, W + C)
    ring_valid = slots < new_ring_len.unsqueeze(1)
    ring_index = torch.where(ring_valid, ring_index, torch.zeros_like(ring_index))

    uniform = bool((ring_len == ring_len[0]).all()) and bool((pads == 0).all())
    gather = out_index = None
    if not uniform:
        t = torch.arange(length, device=device)
        from_ring = t < ring_len.unsqueeze(1)
        ring_in = ring_size if cached else 0
        from_new = ring_in + pads.unsqueeze(1) + t - ring_len.unsqueeze(1)
        gather = torch.where(from_ring, t.expand(batch, -1), from_new).clamp(0, ring_in + new - 1)
        u = torch.arange(new, device=device)
        out_index = (ring_len.unsqueeze(1) + u - pads.unsqueeze(1) - first_chunk * chunk).clamp_min(0)
    cos, sin = rotary_table(length)
    return ChunkPlan(
        length=length,
        first_chunk=first_chunk,
        uniform_ring_len=int(ring_len[0]) if uniform else None,
        gather=gather,
        out_index=out_index,
        real=real,
        writes=writes,
        ring_index=ring_index,
        ring_valid=ring_valid,
        seen=seen + n_real,
        ring_len=new_ring_len,
        cos=cos,
        sin=sin,
    )
