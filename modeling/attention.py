"""BCT attention: one softmax over a learned fixed-capacity memory and an exact local window.

Three implementations of the same function, side by side:

- `BCTAttention.chunked`: the parallel path for training and prefill. Memory writes are a short sequential
  scan over chunks (small M×C ops); then every chunk's queries attend at once to
  `[memory state ; window keys]`, M + W + C keys per chunk.
- `BCTAttention.step`: the decoding path, one token per row against the cache's ring.
- `reference_attention`: a plain token-by-token loop at absolute positions, obviously right; the tests hold
  the two fast paths to it on outputs, final memory and gradients.

Read rule (docs/design.md §1): memory logits use the un-rotated query against position-free memory keys
(rotated by the fixed distance `memory_read_distance`, `BCTMemory.read_keys`);
window logits use rotated queries and keys; both scaled by 1/√d, the memory logits then shifted by a
learned per-slot bias (`BCTMemory.read_bias`), and normalised by one softmax.
Write rule: chunk i's queries see the memory after `max(0, i - W/C)` chunk writes and the window
positions `[max(0, i·C - W), p]`. Masks use `finfo.min`, not -inf: with `memory_slots = 0` a padded
query may have no valid key.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from .cache import BCTCacheLayer
from .configuration_bct import BCTConfig
from .layout import ChunkPlan, StepPlan
from .memory import BCTMemory
from .rotary import BCTRotary, apply_rotary


class LayerState(NamedTuple):
    """One layer's runtime state: memory (B, G, M, d) ×2, its live flags (B, G, M) bool (None: every slot is
    read) and ring (B, G, W + C, d) ×2 (None: no cache)."""

    mem_k: torch.Tensor
    mem_v: torch.Tensor
    mem_live: torch.Tensor | None
    ring_k: torch.Tensor | None
    ring_v: torch.Tensor | None


class BCTAttention(nn.Module):
    """Llama attention (same q/k/v/o names) whose keys/values are a memory plus a window.

    Notation in shape comments: B batch, T new columns, H query heads, G KV heads, R = H / G, M memory
    slots, W window, C chunk, d head size, S virtual sequence length, n = S / C chunks, nq query chunks.
    """

    def __init__(self, config: BCTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = config.window
        self.chunk = config.chunk_size
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.dropout = config.attention_dropout
        qkv_bias = config.attention_bias or config.qkv_bias
        hidden, kv_width = config.hidden_size, self.num_kv_heads * self.head_dim
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, kv_width, bias=qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=config.attention_bias)
        if config.qk_norm:
            self.q_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = LlamaRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.memory = BCTMemory(config)

    def project(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, hidden) -> q (B, H, T, d), k and v (B, G, T, d), all before RoPE."""
        batch, new, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch, new, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(batch, new, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(batch, new, self.num_kv_heads, self.head_dim)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        plan: ChunkPlan | StepPlan,
        cache_layer: BCTCacheLayer | None = None,
        want_signals: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """hidden_states (B, T, hidden) -> (B, T, hidden). Reads and updates `cache_layer` when given."""
        batch, new, _ = hidden_states.shape
        q, k, v = self.project(hidden_states)
        if cache_layer is None:
            state = LayerState(*self.memory.initial_state(batch, k.dtype), None, None)
        else:
            if not cache_layer.is_initialized:
                cache_layer.initialize(*self.memory.initial_state(batch, k.dtype))
            state = LayerState(
                cache_layer.mem_keys,
                cache_layer.mem_values,
                cache_layer.mem_live,
                cache_layer.keys,
                cache_layer.values,
            )
        if isinstance(plan, StepPlan):
            out, state, signals = self.step(q, k, v, state, plan, want_signals)
        else:
            out, state, signals = self.chunked(q, k, v, state, plan, want_signals, cache_layer is not None)
        if cache_layer is not None:
            cache_layer.store(*state)
        out = out.transpose(1, 2).reshape(batch, new, self.num_heads * self.head_dim)
        return self.o_proj(out), signals

    # ----------------------------------------------------------------------------------------------
    # Parallel (chunked) path: training and prefill
    # ----------------------------------------------------------------------------------------------
    def chunked(self, q, k, v, state: LayerState, plan: ChunkPlan, want_signals: bool, keep_state: bool):
        """Assemble each row's virtual sequence (ring + real new tokens), attend over it and return the
        outputs for the new columns (B, H, T, d), the next state (None unless `keep_state`), signals."""
        batch, heads, new, head_dim = q.shape
        chunk, first = self.chunk, plan.first_chunk
        ring_k, ring_v = state.ring_k, state.ring_v
        if plan.uniform_ring_len is not None:  # all rows alike: slicing only
            ring_len = plan.uniform_ring_len
            pad = plan.length - ring_len - new
            if ring_k is not None and ring_len > 0:
                k = torch.cat((ring_k[:, :, :ring_len], k), dim=2)
                v = torch.cat((ring_v[:, :, :ring_len], v), dim=2)
            vk, vv = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))  # (B, G, S, d)
            vq = F.pad(q, (0, 0, ring_len - first * chunk, pad))  # (B, H, S - j0·C, d): query region only
        else:  # rows differ in ring length or padding: gather each row's virtual sequence
            source_k = k if ring_k is None else torch.cat((ring_k, k), dim=2)
            source_v = v if ring_v is None else torch.cat((ring_v, v), dim=2)
            index = plan.gather[:, None, :, None].expand(-1, self.num_kv_heads, -1, head_dim)
            vk, vv = source_k.gather(2, index), source_v.gather(2, index)
            region = plan.length - first * chunk
            out_index = plan.out_index.masked_fill(~plan.real, region)  # pads go to a spare last row
            vq = q.new_zeros(batch, heads, region + 1, head_dim)
            vq = vq.scatter(2, out_index[:, None, :, None].expand(-1, heads, -1, head_dim), q)[:, :, :region]

        out, states, write_signals, share = self.attend_chunks(vq, vk, vv, state, plan, want_signals)
        if plan.uniform_ring_len is not None:
            start = plan.uniform_ring_len - first * chunk
            out = out[:, :, start : start + new]
        else:
            out = out.gather(2, plan.out_index[:, None, :, None].expand(-1, heads, -1, head_dim))
            out = out * plan.real[:, None, :, None]
        signals = {"attn_share": share, **write_signals} if want_signals else None
        if not keep_state:
            return out, None, signals
        rows = torch.arange(batch, device=q.device)
        next_mem = states[rows, :, plan.writes]  # (B, G, M, 2d [+ 1])
        ring_index = plan.ring_index[:, None, :, None].expand(-1, self.num_kv_heads, -1, head_dim)
        keep = plan.ring_valid[:, None, :, None]
        next_state = LayerState(
            *self.memory.write.unpack(next_mem, head_dim),
            vk.gather(2, ring_index) * keep,
            vv.gather(2, ring_index) * keep,
        )
        return out, next_state, signals

    def attend_chunks(self, q, k, v, state: LayerState, plan: ChunkPlan, want_share: bool):
        """The parallel path on chunk-aligned virtual sequences.

        q: (B, H, nq·C, d) queries of chunks j0..n-1; k, v: (B, G, n·C, d), all pre-RoPE; `state`'s memory
        is the one before virtual chunk 0. Returns out (B, H, nq·C, d), the memory states
        (B, G, writes + 1, M, 2d [+ 1]), the write signals and the share of attention on memory (when asked).
        """
        batch, heads, _, head_dim = q.shape
        window, chunk, first = self.window, self.chunk, plan.first_chunk
        kv_heads, length = k.shape[1], k.shape[2]
        rep, num_chunks, slots = heads // kv_heads, length // chunk, state.mem_k.shape[2]
        nq, lag = num_chunks - first, window // chunk

        # 1. memory recurrence: chunk j reads the state after max(0, j - W/C) writes.
        num_writes = max(0, num_chunks - 1 - lag)
        states, write_signals = scan_memory(self.memory, state, k, v, num_writes, chunk, want_share)
        read = read_states(states, first, num_chunks, lag)
        read_k, read_v, read_live = self.memory.write.unpack(read, head_dim)  # (B, G, nq, M, d) ×2, (…, M)

        # 2. block attention: chunk j attends to keys [j·C - W, j·C + C) of the left-padded sequence.
        def per_chunk(x):  # (B, H, nq·C, d) -> (B, G, nq, R·C, d): query rows grouped per KV head
            x = x.reshape(batch, kv_heads, rep, nq, chunk, head_dim).transpose(2, 3)
            return x.reshape(batch, kv_heads, nq, rep * chunk, head_dim)

        region = slice(first * chunk, length)
        q_rot = per_chunk(apply_rotary(q, plan.cos[region], plan.sin[region]) * self.scale)
        q_raw = per_chunk(q * self.scale)
        k_rot = F.pad(apply_rotary(k, plan.cos, plan.sin), (0, 0, window, 0))  # (B, G, W + S, d)
        k_win = k_rot.unfold(2, window + chunk, chunk)[:, :, first:]  # (B, G, nq, d, W + C)
        v_win = F.pad(v, (0, 0, window, 0)).unfold(2, window + chunk, chunk)[:, :, first:].transpose(-1, -2)

        scores_mem = torch.matmul(
            q_raw, self.memory.read_keys(read_k).transpose(-1, -2)
        )  # (B, G, nq, R·C, M)
        scores_mem = scores_mem + self.memory.logit_bias(read_k, read_v, read_live).unsqueeze(-2)
        scores_win = torch.matmul(q_rot, k_win)  # (B, G, nq, R·C, W + C)
        visible = chunk_mask(num_chunks, first, window, chunk, q.device).repeat(1, rep, 1)  # (nq, R·C, W + C)
        scores_win = scores_win.masked_fill(~visible, torch.finfo(scores_win.dtype).min)
        probs = torch.softmax(torch.cat((scores_mem, scores_win), dim=-1).float(), dim=-1).to(q.dtype)
        share = probs[..., :slots].detach().float().sum(-1).mean() if want_share else None
        if self.training and self.dropout:
            probs = F.dropout(probs, p=self.dropout, training=True)
        out = torch.matmul(probs[..., :slots], read_v) + torch.matmul(
            probs[..., slots:], v_win
        )  # (B,G,nq,R·C,d)
        out = out.reshape(batch, kv_heads, nq, rep, chunk, head_dim).transpose(2, 3)
        return out.reshape(batch, heads, nq * chunk, head_dim), states, write_signals, share

    # ----------------------------------------------------------------------------------------------
    # Step path: decoding, one real token per row against the ring
    # ----------------------------------------------------------------------------------------------
    def step(self, q, k, v, state: LayerState, plan: StepPlan, want_signals: bool):
        """q (B, H, 1, d); k, v (B, G, 1, d). Rows whose ring is full and whose token starts a chunk first
        write their oldest chunk into memory and shift the ring; then the token lands at `plan.position`."""
        batch, heads, _, head_dim = q.shape
        chunk, kv_heads, rep = self.chunk, self.num_kv_heads, heads // self.num_kv_heads
        mem_k, mem_v, live, ring_k, ring_v = state
        gate = None
        if plan.any_evict:
            evict = plan.evict[:, None, None, None]
            if mem_k.shape[2] > 0 and self.memory.writes_open:
                evicted_k, evicted_v = ring_k[:, :, :chunk], ring_v[:, :, :chunk]
                new_k, new_v, new_live, gates = self.memory.write.write_chunk(
                    mem_k, mem_v, live, evicted_k, evicted_v
                )
                mem_k, mem_v = torch.where(evict, new_k, mem_k), torch.where(evict, new_v, mem_v)
                live = None if live is None else torch.where(evict[..., 0], new_live, live)
                gate = gates[plan.evict].detach().float().mean() if want_signals else None
            ring_k = torch.where(evict, F.pad(ring_k[:, :, chunk:], (0, 0, 0, chunk)), ring_k)
            ring_v = torch.where(evict, F.pad(ring_v[:, :, chunk:], (0, 0, 0, chunk)), ring_v)
        slot = plan.position[:, None, None, None].expand(-1, kv_heads, 1, head_dim)
        if torch.is_grad_enabled():
            ring_k, ring_v = ring_k.scatter(2, slot, k), ring_v.scatter(2, slot, v)
        else:  # serving: the cache owns the ring, so write the token in place instead of copying the ring
            ring_k.scatter_(2, slot, k)
            ring_v.scatter_(2, slot, v)

        # One softmax over [memory | ring]. Memory keys carry no position; rotating them by the query's own
        # angle leaves their scores unchanged and lets one rotated query read everything.
        q_rot = apply_rotary(q.view(batch, kv_heads, rep, head_dim), plan.cos_q, plan.sin_q)
        keys = apply_rotary(
            torch.cat((self.memory.read_keys(mem_k), ring_k), dim=2), plan.cos_keys, plan.sin_keys
        )  # (B, G, M+W+C, d)
        values = torch.cat((mem_v, ring_v), dim=2)
        # This layer's read bias on the memory columns: (B, G, 1, M+W+C)
        bias = plan.bias + F.pad(self.memory.logit_bias(mem_k, mem_v, live), (0, ring_k.shape[2])).unsqueeze(
            2
        )
        signals = None
        if want_signals:
            scores = torch.matmul(q_rot, keys.transpose(-1, -2)) * self.scale + bias  # (B, G, R, M+W+C)
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, values)
            signals = {"attn_share": probs[..., : mem_k.shape[2]].float().sum(-1).mean(), "write_gate": gate}
        else:
            out = F.scaled_dot_product_attention(q_rot, keys, values, attn_mask=bias, scale=self.scale)
        return out.reshape(batch, heads, 1, head_dim), LayerState(mem_k, mem_v, live, ring_k, ring_v), signals


def scan_memory(
    memory: BCTMemory, state: LayerState, k, v, num_writes: int, chunk: int, want_signals: bool = False
):
    """Write virtual chunks 0..num_writes-1 into `state`'s memory in order. Returns all num_writes + 1 memory
    states stacked, (B, G, num_writes + 1, M, 2d [+ 1]) = [keys | values [| live]], and, when asked, the
    write signals (mean write gate, slot-key cosine of the last state, routing entropy; empty when nothing
    was written)."""
    mem = memory.write.pack(state.mem_k, state.mem_v, state.mem_live)
    if mem.shape[2] == 0 or num_writes == 0 or not memory.writes_open:
        return mem.unsqueeze(2).expand(-1, -1, num_writes + 1, -1, -1), {}
    span = num_writes * chunk
    features = memory.write.token_features(k[:, :, :span], v[:, :, :span])  # (B, G, span, F)
    batch, heads, _, width = features.shape
    states, gates = memory.write.scan(mem, features.reshape(batch, heads, num_writes, chunk, width))
    if not want_signals:
        return states, {}
    signals = {"write_gate": gates.detach().float().mean(), "slot_key_cosine": slot_cosine(states[:, :, -1])}
    entropy = memory.write.routing_entropy(features.detach())
    return states, signals if entropy is None else {**signals, "routing_entropy": entropy.float()}


def slot_cosine(mem: torch.Tensor) -> torch.Tensor:
    """Mean pairwise cosine of the slot keys in mem (B, G, M, 2d [+ 1]): near 1 means the slots collapsed."""
    keys = F.normalize(mem[..., : mem.shape[-1] // 2].detach().float(), dim=-1)  # (2d + 1) // 2 = d
    slots = keys.shape[2]
    if slots < 2:
        return keys.new_zeros(())
    gram = torch.matmul(keys, keys.transpose(-1, -2))  # (B, G, M, M)
    return (gram.sum((-1, -2)) - gram.diagonal(dim1=-2, dim2=-1).sum(-1)).mean() / (slots * (slots - 1))


def read_states(states: torch.Tensor, first_chunk: int, num_chunks: int, lag: int) -> torch.Tensor:
    """The state each query chunk j = first..n-1 reads, index max(0, j - lag): (B, G, nq, M, 2d).
    Built from one expand and one slice (cheap backward), not an index with repeats."""
    leading = max(0, min(num_chunks, lag + 1) - first_chunk)  # chunks still reading the initial state
    start = max(1, first_chunk - lag)
    initial = states[:, :, :1].expand(-1, -1, leading, -1, -1)
    return torch.cat((initial, states[:, :, start : num_chunks - lag]), dim=2)


def chunk_mask(num_chunks: int, first_chunk: int, window: int, chunk: int, device) -> torch.Tensor:
    """(nq, C, W + C) bool: query r of chunk j sees window key w (absolute j·C - W + w) iff it exists and
    is not in the future."""
    j = torch.arange(first_chunk, num_chunks, device=device)[:, None, None]
    r = torch.arange(chunk, device=device)[None, :, None]
    w = torch.arange(window + chunk, device=device)[None, None, :]
    return (w <= window + r) & (j * chunk - window + w >= 0)


# --------------------------------------------------------------------------------------------------
# Reference: token by token, absolute positions
# --------------------------------------------------------------------------------------------------
def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    memory: BCTMemory,
    rotary: BCTRotary,
    window: int,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Plain loop over positions p = 0..T-1 of unpadded rows. q (B, H, T, d); k, v (B, G, T, d) pre-RoPE.
    Returns the outputs (B, H, T, d), the final memory (B, G, M, d) ×2 and its live flags (B, G, M) or None."""
    batch, heads, length, head_dim = q.shape
    rep = heads // k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    cos, sin = rotary.table(length, q.device, q.dtype)  # absolute positions
    mem_k, mem_v, live = memory.initial_state(batch, q.dtype)
    outputs = []
    for p in range(length):
        i = p // chunk
        if p % chunk == 0 and i - window // chunk - 1 >= 0 and mem_k.shape[2] > 0 and memory.writes_open:
            c = i - window // chunk - 1  # the chunk leaving the window now
            span = slice(c * chunk, (c + 1) * chunk)
            mem_k, mem_v, live, _ = memory.write.write_chunk(mem_k, mem_v, live, k[:, :, span], v[:, :, span])
        lo = max(0, i * chunk - window)
        keys = apply_rotary(k[:, :, lo : p + 1], cos[lo : p + 1], sin[lo : p + 1])
        keys = keys.repeat_interleave(rep, dim=1)  # (B, H, n, d)
        values = v[:, :, lo : p + 1].repeat_interleave(rep, dim=1)
        query = q[:, :, p : p + 1]  # (B, H, 1, d)
        query_rot = apply_rotary(query, cos[p], sin[p])
        mem_keys = memory.read_keys(mem_k).repeat_interleave(rep, dim=1)  # (B, H, M, d) at distance δ
        mem_logits = query @ mem_keys.transpose(-1, -2) * scale  # (B, H, 1, M)
        mem_bias = memory.logit_bias(mem_k, mem_v, live).repeat_interleave(rep, dim=1)  # (B, H, M)
        mem_logits = mem_logits + mem_bias.unsqueeze(2)
        logits = torch.cat((mem_logits, query_rot @ keys.transpose(-1, -2) * scale), dim=-1)
        probs = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        slots = mem_k.shape[2]
        outputs.append(probs[..., :slots] @ mem_v.repeat_interleave(rep, dim=1) + probs[..., slots:] @ values)
    return torch.cat(outputs, dim=2), mem_k, mem_v, live
