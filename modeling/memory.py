"""The learned memory of one attention layer: initial slots and the rule that writes evicted tokens into them.

Learned parameters live here; the per-sequence memory state lives in `BCTCache` (or, during a parallel
forward, in local tensors). Shapes: B batch, G KV heads, M slots, C chunk tokens, d head size.

Write rules share one small interface (`MemoryWrite`: per-token features, then one recurrence step per chunk)
over pre-RoPE keys, so that rules can be compared in ablations:

- `gated` (default, DESIGN.md §1): every evicted token distributes itself over the slots
  (`A = softmax_slots(Km·Wr·Kᵉᵀ/√d)`), each slot takes the A-weighted mean of the chunk (`K̂, V̂`), and a
  sigmoid gate that sees the slot, its candidate and how much mass it received (`Σ_tokens A`) blends them:
  `Km ← Km + g⊙(K̂ − Km)`. A slot that received almost nothing keeps its content (log-mass term).
- `fifo`: a learned FIFO; each chunk is pooled into one key/value with learned attention weights and
  pushed into the slots, the oldest slot dropping out.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .configuration_bct import BCTConfig
from .gated_scan import GatedScan, gated_scan_steps

# Floor on the slot mass before the log: a slot that got nothing has its gate pushed shut (log 1e-6 ≈ -13.8).
_MASS_FLOOR = 1e-6


class MemoryWrite(nn.Module):
    """Interface: write one chunk of evicted tokens into the memory.

    The memory travels as one tensor `mem` (B, G, M, 2d) = [keys | values] so that a write is a handful of
    ops. `token_features` runs once per call over the whole sequence (one big op instead of one per chunk);
    `forward` is one step of the recurrence and sees only a chunk's features.
    """

    def token_features(self, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """k, v: (B, G, S, d) pre-RoPE -> per-token features (B, G, S, F)."""
        raise NotImplementedError

    def forward(self, mem: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mem: (B, G, M, 2d); features: (B, G, C, F) of the chunk leaving the window. Returns the new mem and
        the per-slot write strength (B, G, M) in [0, 1] (the `write_gate` signal)."""
        raise NotImplementedError

    def scan(self, mem: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write n chunks in order. mem (B, G, M, 2d); features (B, G, n, C, F). Returns every state
        (B, G, n + 1, M, 2d), the initial one first, and the gates (B, G, n, M). Rules may override this
        with a faster equivalent of this loop."""
        states, gates = [mem], []
        for chunk_features in features.unbind(2):
            mem, gate = self(mem, chunk_features)
            states.append(mem)
            gates.append(gate)
        return torch.stack(states, dim=2), torch.stack(gates, dim=2)

    def write_chunk(self, mem_k, mem_v, chunk_k, chunk_v):
        """One chunk given as keys/values (B, G, C, d): returns new mem_k, mem_v (B, G, M, d) and the gate."""
        mem, gate = self(torch.cat((mem_k, mem_v), dim=-1), self.token_features(chunk_k, chunk_v))
        return *mem.chunk(2, dim=-1), gate


class GatedSlotWrite(MemoryWrite):
    def __init__(self, num_kv_heads: int, slots: int, head_dim: int, gate_bias_init: float):
        super().__init__()
        self.scale = 1.0 / math.sqrt(head_dim)
        # Routing matrix per KV head, identity at init: tokens go to the slots whose keys they resemble.
        self.route = nn.Parameter(torch.eye(head_dim).repeat(num_kv_heads, 1, 1))  # (G, d, d)
        # Gate logit = bias(slot) + <Km, w_mem> + <K̂, w_key> + <V̂, w_value> + mass_weight * log Σ_tokens A
        self.gate_bias = nn.Parameter(
            torch.full((num_kv_heads, slots, 1), float(gate_bias_init))
        )  # (G, M, 1)
        self.gate_mem = nn.Parameter(torch.zeros(num_kv_heads, head_dim, 1))  # (G, d, 1)
        self.gate_key = nn.Parameter(torch.zeros(num_kv_heads, head_dim, 1))
        self.gate_value = nn.Parameter(torch.zeros(num_kv_heads, head_dim, 1))
        self.gate_mass = nn.Parameter(torch.ones(num_kv_heads, 1, 1))  # (G, 1, 1)

    def token_features(self, k, v):
        # [Kᵉ·Wrᵀ/√d | Kᵉ | Vᵉ | <Kᵉ, w_key> + <Vᵉ, w_value>]; since K̂ = weights·Kᵉ, <K̂, w_key> = weights·<Kᵉ, w_key>.
        routed = torch.matmul(k, self.route.transpose(-1, -2)) * self.scale  # (B, G, S, d)
        gate_term = torch.matmul(k, self.gate_key) + torch.matmul(v, self.gate_value)  # (B, G, S, 1)
        return torch.cat((routed, k, v, gate_term), dim=-1)  # (B, G, S, 3d + 1)

    def forward(self, mem, features):
        head_dim = mem.shape[-1] // 2
        mem_k = mem[..., :head_dim]
        logits = torch.matmul(
            mem_k, features[..., :head_dim].transpose(-1, -2)
        )  # (B, G, M, C) = Km·Wr·Kᵉᵀ/√d
        assign = torch.softmax(logits, dim=-2)  # each token over slots
        mass = assign.sum(dim=-1, keepdim=True).clamp_min(_MASS_FLOOR)  # (B, G, M, 1)
        candidates = torch.matmul(
            assign / mass, features[..., head_dim:]
        )  # (B, G, M, 2d + 1) = [K̂ | V̂ | gate term]
        gate_logit = self.gate_bias + torch.matmul(mem_k, self.gate_mem) + candidates[..., -1:]
        gate = torch.sigmoid(torch.addcmul(gate_logit, self.gate_mass, mass.log()))  # (B, G, M, 1)
        return torch.lerp(mem, candidates[..., :-1], gate), gate.squeeze(-1)

    def scan(self, mem, features):
        params = (self.gate_bias, self.gate_mem, self.gate_mass)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (mem, features, *params)):
            return GatedScan.apply(mem, features, *params, _MASS_FLOOR)
        return gated_scan_steps(mem, features, *params, _MASS_FLOOR)


class FifoWrite(MemoryWrite):
    def __init__(self, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.pool = nn.Parameter(torch.zeros(num_kv_heads, head_dim, 1))  # (G, d, 1); zero = mean pooling

    def token_features(self, k, v):
        return torch.cat((k, v, torch.matmul(k, self.pool)), dim=-1)  # (B, G, S, 2d + 1)

    def forward(self, mem, features):
        weights = torch.softmax(features[..., -1:], dim=-2)  # (B, G, C, 1) pooling weights over the chunk
        pooled = (weights * features[..., :-1]).sum(dim=-2, keepdim=True)  # (B, G, 1, 2d)
        gate = torch.zeros(mem.shape[:-1], dtype=mem.dtype, device=mem.device)
        gate[..., -1] = 1.0
        return torch.cat((mem[:, :, 1:], pooled), dim=2), gate


class BCTMemory(nn.Module):
    """Learned initial slots (what a fresh sequence sees; also a learned attention sink) and the write rule."""

    def __init__(self, config: BCTConfig):
        super().__init__()
        kv_heads, slots, head_dim = config.num_key_value_heads, config.memory_slots, config.head_dim
        self.init_keys = nn.Parameter(torch.zeros(kv_heads, slots, head_dim))  # (G, M, d)
        self.init_values = nn.Parameter(torch.zeros(kv_heads, slots, head_dim))
        if config.memory_write_rule == "gated":
            self.write = GatedSlotWrite(kv_heads, slots, head_dim, config.memory_gate_bias_init)
        else:
            self.write = FifoWrite(kv_heads, head_dim)

    def initial_state(self, batch_size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The fresh memory, (B, G, M, d) each (a broadcast view: writes return new tensors)."""
        shape = (batch_size, *self.init_keys.shape)
        return self.init_keys.to(dtype).expand(shape), self.init_values.to(dtype).expand(shape)
