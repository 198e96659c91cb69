"""The learned memory of one attention layer: initial slots and the rule that writes evicted tokens into them.

Learned parameters live here; the per-sequence memory state lives in `BCTCache` (or, during a parallel
forward, in local tensors). Shapes: B batch, G KV heads, M slots, C chunk tokens, d head size, n chunks.

Write rules share one small interface (`MemoryWrite`: per-token features, then one recurrence step per chunk)
over pre-RoPE keys, so that rules can be compared in ablations (docs/design.md §8 has the study):

- `gated` (default): every slot has a learned *address* (kept apart from its contents, so slots are distinct
  from the start and cannot collapse onto the chunk mean). A token routes itself over the slots by the
  cosine of its key with the addresses (`a = softmax_M(τ·cos(k, addr))`), and asks to be kept with a learned
  per-token write strength `w = σ(u·[k; v] + c)` (w → 0: not written). Slot s receives mass
  `m_s = Σ_t w_t a_ts` and moves toward the w·a-weighted mean of its tokens by `g_s = m_s / (m_s + e^(−b_s))`:
  `mem_s ← mem_s + (Σ_t w_t a_ts [k_t; v_t] − m_s·mem_s) / (m_s + e^(−b_s))`. Address, strength and gate
  depend only on the incoming tokens, so the write is a linear recurrence `mem ← (1 − g)·mem + g·cand`.
- `delta`: error-correcting slots in the manner of DeltaNet/ARMT. The same addressing; each token corrects
  the slots toward itself in proportion to its address and strength β, against what the memory already
  returns for that address: `mem ← mem + D·Σ_t β_t a_t ([k_t; v_t] − a_tᵀ·mem)`, D = σ(b_s) / max(1, m_s)
  per slot (a learned rate that keeps the chunk's transition contractive).
- `retain`: exact retention of evicted tokens. The memory keeps the exact pre-RoPE key/value of the M
  entries with the highest learned retention score `s = u·[k; v] + c` among [memory ; evicted chunk], the
  same hard top-M in training and decoding; `log σ(s)` is added to those entries' attention logits, which is
  how the score learns (TRIM-KV, Locret). FastKV/SnapKV-style selection, trained into the weights. The first
  `memory_sink_slots` slots are never replaced: they keep their learned initial contents as attention sinks
  (a converted model's BOS-like sink would otherwise be evicted by the first tokens that score higher). The
  other slots start *empty*: a per-slot live flag travels with the memory, an empty slot is not read (like
  the ring's unfilled entries) and is the first to be filled, so before the window overflows the memory is
  the sinks alone, and "writes closed" is a memory of sinks only.
- `fifo`: a learned FIFO; each chunk is pooled into one key/value with learned attention weights and
  pushed into the slots, the oldest slot dropping out.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from .configuration_bct import BCTConfig
from .rotary import apply_rotary, inverse_frequencies


class MemoryWrite(nn.Module):
    """Interface: write one chunk of evicted tokens into the memory.

    The memory travels as one tensor `mem` (B, G, M, 2d) = [keys | values] so that a write is a handful of
    ops; a rule whose slots start empty (`BCTConfig.has_live_flags`) adds one channel, the live flag (1: holds
    an entry, 0: empty), `mem` (B, G, M, 2d + 1). `token_features` runs once per call over the whole sequence
    (one big op instead of one per chunk); `forward` is one step of the recurrence and sees only a chunk's
    features.
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

    @staticmethod
    def pack(mem_k: torch.Tensor, mem_v: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """(B, G, M, d) ×2 and the live flags (B, G, M) bool or None -> mem (B, G, M, 2d [+ 1])."""
        parts = (mem_k, mem_v) if live is None else (mem_k, mem_v, live.unsqueeze(-1).to(mem_k.dtype))
        return torch.cat(parts, dim=-1)

    @staticmethod
    def unpack(mem: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """mem (..., M, 2d [+ 1]) -> keys, values (..., M, d) and the live flags (..., M) bool or None."""
        live = mem[..., 2 * head_dim] > 0.5 if mem.shape[-1] > 2 * head_dim else None
        return mem[..., :head_dim], mem[..., head_dim : 2 * head_dim], live

    def write_chunk(self, mem_k, mem_v, live, chunk_k, chunk_v):
        """One chunk given as keys/values (B, G, C, d): returns new mem_k, mem_v (B, G, M, d), live flags
        (B, G, M) or None, and the gate."""
        mem, gate = self(self.pack(mem_k, mem_v, live), self.token_features(chunk_k, chunk_v))
        return *self.unpack(mem, mem_k.shape[-1]), gate

    def read_bias(self, mem_k: torch.Tensor, mem_v: torch.Tensor) -> torch.Tensor | None:
        """A logit added to each memory entry when it is read, from its contents: (..., M) or None."""
        return None

    def routing_entropy(self, features: torch.Tensor) -> torch.Tensor | None:
        """Mean entropy (nats) of the tokens' distribution over slots, for the memory signals; None if the
        rule does not route."""
        return None

    def init_weights(self, config: BCTConfig) -> None:
        """Initialise the rule's parameters (called from the model's `_init_weights`)."""


class AddressedWrite(MemoryWrite):
    """Shared by `gated` and `delta`: learned slot addresses, cosine routing with a learned temperature and a
    per-token write strength. Features per token: [w·a (M) | a (M) | k (d) | v (d)]."""

    def __init__(self, num_kv_heads: int, slots: int, head_dim: int, gate_bias_init: float):
        super().__init__()
        self.slots = slots
        self.gate_bias_init = gate_bias_init
        self.address = nn.Parameter(torch.zeros(num_kv_heads, slots, head_dim))  # (G, M, d)
        self.log_temperature = nn.Parameter(torch.zeros(num_kv_heads, 1, 1))  # τ = e^this, (G, 1, 1)
        self.strength = nn.Parameter(torch.zeros(num_kv_heads, 2 * head_dim, 1))  # u, (G, 2d, 1)
        self.strength_bias = nn.Parameter(torch.zeros(num_kv_heads, 1, 1))  # c
        self.gate_bias = nn.Parameter(torch.zeros(num_kv_heads, slots))  # b, (G, M)

    def init_weights(self, config: BCTConfig) -> None:
        # Random addresses: distinct slots from the first step. τ = 2√d gives routing logits of std ≈ 2.
        init.normal_(self.address, mean=0.0, std=1.0)
        init.constant_(self.log_temperature, math.log(2.0 * math.sqrt(self.address.shape[-1])))
        init.zeros_(self.strength)
        init.zeros_(self.strength_bias)
        init.constant_(self.gate_bias, self.gate_bias_init)

    def token_features(self, k, v):
        kv = torch.cat((k, v), dim=-1)  # (B, G, S, 2d)
        cosine = torch.matmul(F.normalize(k, dim=-1), F.normalize(self.address, dim=-1).transpose(-1, -2))
        route = torch.softmax(cosine * self.log_temperature.exp(), dim=-1)  # (B, G, S, M)
        strength = torch.sigmoid(
            torch.matmul(kv, self.strength) / math.sqrt(k.shape[-1]) + self.strength_bias
        )
        return torch.cat((strength * route, route, kv), dim=-1)

    def split(self, features):
        """-> w·a (…, C, M), a (…, C, M), [k; v] (…, C, 2d)."""
        return (
            features[..., : self.slots],
            features[..., self.slots : 2 * self.slots],
            features[..., 2 * self.slots :],
        )

    def routing_entropy(self, features):
        route = self.split(features)[1]
        return -(route * route.clamp_min(1e-12).log()).sum(-1).mean()


class GatedSlotWrite(AddressedWrite):
    def step_terms(self, features):
        """Per chunk: the gate g (…, M) and the gated candidate g·cand (…, M, 2d), from the tokens alone."""
        weighted, _, kv = self.split(features)
        mass = weighted.sum(dim=-2)  # (…, M) Σ_t w_t a_ts
        bias = self.gate_bias.view(self.gate_bias.shape[0], *[1] * (features.dim() - 4), self.slots)
        denominator = mass + torch.exp(-bias)  # m + e^-b
        pushed = torch.matmul(weighted.transpose(-1, -2), kv) / denominator.unsqueeze(-1)  # (…, M, 2d)
        return mass / denominator, pushed

    def forward(self, mem, features):
        gate, pushed = self.step_terms(features)
        return mem * (1.0 - gate).unsqueeze(-1) + pushed, gate

    def scan(self, mem, features):
        # The gates and candidates of every chunk in one batched op; only the lerp runs chunk by chunk.
        gates, pushed = self.step_terms(features)  # (B, G, n, M), (B, G, n, M, 2d)
        keep = (1.0 - gates).unsqueeze(-1)
        states = [mem]
        for t in range(features.shape[2]):
            mem = mem * keep[:, :, t] + pushed[:, :, t]
            states.append(mem)
        return torch.stack(states, dim=2), gates


class DeltaSlotWrite(AddressedWrite):
    def forward(self, mem, features):
        weighted, route, kv = self.split(features)  # (B, G, C, M) ×2, (B, G, C, 2d)
        error = kv - torch.matmul(route, mem)  # (B, G, C, 2d): token minus what its address reads now
        mass = weighted.sum(dim=-2)  # (B, G, M)
        step = torch.sigmoid(self.gate_bias) / mass.clamp_min(1.0)  # a learned rate per slot, at most 1/mass
        correction = torch.matmul(weighted.transpose(-1, -2), error) * step.unsqueeze(-1)  # (B, G, M, 2d)
        return mem + correction, mass * step


class RetainWrite(MemoryWrite):
    """Keeps, after the S sink slots, the M - S entries of [memory after the sinks ; evicted chunk] with the
    highest retention score, empty slots scoring lowest. Features per token: [k | v | 1] (a token is a live
    entry); the score is recomputed from an entry's contents wherever it is needed."""

    def __init__(self, num_kv_heads: int, head_dim: int, sink_slots: int = 0):
        super().__init__()
        self.sink_slots = sink_slots
        self.score = nn.Parameter(torch.zeros(num_kv_heads, 2 * head_dim, 1))  # u, (G, 2d, 1)
        self.score_bias = nn.Parameter(torch.zeros(num_kv_heads, 1, 1))  # c

    def init_weights(self, config: BCTConfig) -> None:
        # Small random scores: a fresh model keeps an arbitrary but fixed choice of tokens.
        init.normal_(self.score, mean=0.0, std=config.initializer_range)
        init.constant_(self.score_bias, 2.0)  # log σ(2) ≈ -0.13: retained entries start nearly unpenalised

    def scores(self, entries: torch.Tensor) -> torch.Tensor:
        """entries (B, G, [n,] N, 2d) -> retention scores (B, G, [n,] N)."""
        width = self.score.shape[1]  # 2d
        raw = torch.einsum("bg...f,gf->bg...", entries, self.score[..., 0]) / math.sqrt(width // 2)
        return raw + self.score_bias.view(-1, *[1] * (entries.dim() - 3))

    def token_features(self, k, v):
        return torch.cat((k, v, k.new_ones(*k.shape[:-1], 1)), dim=-1)

    def forward(self, mem, features):
        sinks, kept = mem[:, :, : self.sink_slots], mem[:, :, self.sink_slots :]  # (B, G, S | M - S, 2d + 1)
        slots = kept.shape[2]
        pool = torch.cat((kept, features), dim=2)  # (B, G, M - S + C, 2d + 1)
        scores = self.scores(pool[..., :-1].detach())  # (B, G, M - S + C)
        scores = scores.masked_fill(pool[..., -1] < 0.5, torch.finfo(scores.dtype).min)  # empties go first
        # Ties are common (in layer 0 a repeated token has the same key, value and score) and the tied entries
        # differ in where they stand, so the choice matters: a stable sort gives it to the entry that came
        # first, on every device (topk leaves it open: CPU and CUDA kept different copies).
        order = scores.sort(dim=-1, descending=True, stable=True).indices  # (B, G, M - S + C)
        keep = order[..., :slots].sort(dim=-1).values  # (B, G, M - S)
        new_mem = torch.cat((sinks, pool.gather(2, keep.unsqueeze(-1).expand(-1, -1, -1, pool.shape[-1]))), 2)
        took = torch.cat((torch.zeros_like(sinks[..., 0]), (keep >= slots).to(mem.dtype)), dim=-1)
        return new_mem, took  # gate (B, G, M): 1 where a slot took a new token

    def read_bias(self, mem_k, mem_v):
        return F.logsigmoid(self.scores(torch.cat((mem_k, mem_v), dim=-1)))


class FifoWrite(MemoryWrite):
    def __init__(self, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.pool = nn.Parameter(torch.zeros(num_kv_heads, head_dim, 1))  # (G, d, 1); zero = mean pooling

    def init_weights(self, config: BCTConfig) -> None:
        init.zeros_(self.pool)

    def token_features(self, k, v):
        return torch.cat((k, v, torch.matmul(k, self.pool)), dim=-1)  # (B, G, S, 2d + 1)

    def forward(self, mem, features):
        weights = torch.softmax(features[..., -1:], dim=-2)  # (B, G, C, 1) pooling weights over the chunk
        pooled = (weights * features[..., :-1]).sum(dim=-2, keepdim=True)  # (B, G, 1, 2d)
        gate = torch.zeros(mem.shape[:-1], dtype=mem.dtype, device=mem.device)
        gate[..., -1] = 1.0
        return torch.cat((mem[:, :, 1:], pooled), dim=2), gate


def make_write(config: BCTConfig) -> MemoryWrite:
    kv_heads, slots, head_dim = config.num_key_value_heads, config.memory_slots, config.head_dim
    rule = config.memory_write_rule
    if rule == "gated":
        return GatedSlotWrite(kv_heads, slots, head_dim, config.memory_gate_bias_init)
    if rule == "delta":
        return DeltaSlotWrite(kv_heads, slots, head_dim, config.memory_gate_bias_init)
    if rule == "retain":
        return RetainWrite(kv_heads, head_dim, config.memory_sink_slots)
    return FifoWrite(kv_heads, head_dim)


class BCTMemory(nn.Module):
    """Learned initial slots (what a fresh sequence sees; also a learned attention sink), a per-slot read
    logit bias and the write rule."""

    def __init__(self, config: BCTConfig):
        super().__init__()
        kv_heads, slots, head_dim = config.num_key_value_heads, config.memory_slots, config.head_dim
        self.init_keys = nn.Parameter(torch.zeros(kv_heads, slots, head_dim))  # (G, M, d)
        self.init_values = nn.Parameter(torch.zeros(kv_heads, slots, head_dim))
        # Added to every query's logit on each slot (the un-rotated q·Km/√d): 0 for a fresh model; strongly
        # negative in a converted one, so that its slots start with ~no attention mass (see convert.py).
        self.read_bias = nn.Parameter(torch.zeros(kv_heads, slots))  # (G, M)
        self.write = make_write(config)
        self.config = config  # for `read_keys`' rotation, derived on use (see BCTRotary on why no buffer)
        self._read_rotation: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        # Runtime switch, not a weight: closed, the memory keeps its initial slots (the "writes closed" control).
        self.writes_open = True

    def logit_bias(self, mem_k: torch.Tensor, mem_v: torch.Tensor, live: torch.Tensor | None) -> torch.Tensor:
        """What every query adds to its logit on each memory entry: the learned per-slot bias plus the rule's
        content bias, `finfo.min` on empty slots. mem_k, mem_v (B, G, [n,] M, d), live (B, G, [n,] M) bool or
        None (no empty slots) -> (B, G, [n,] M)."""
        kv_heads, slots = self.read_bias.shape
        bias = self.read_bias.to(mem_k.dtype).view(kv_heads, *[1] * (mem_k.dim() - 4), slots)
        content = self.write.read_bias(mem_k, mem_v)
        bias = bias.expand(mem_k.shape[:-1]) if content is None else bias + content
        return bias if live is None else bias.masked_fill(~live, torch.finfo(bias.dtype).min)

    def read_keys(self, mem_k: torch.Tensor) -> torch.Tensor:
        """The memory keys as a query at its own angle reads them: rotated by -δ (`memory_read_distance`), so
        that q·R(-δ)·k is the score of a key δ positions behind the query. mem_k (..., M, d), same shape."""
        distance = self.config.memory_read_distance
        if distance == 0:
            return mem_k
        key = (mem_k.device, mem_k.dtype)
        if key not in self._read_rotation:
            inv_freq, scaling = inverse_frequencies(self.config)
            angles = distance * inv_freq.double()  # (d/2,) in float64: δ can be large
            # scaling² : the source scales both the query's and the key's rotation (RoPE variants like yarn)
            cos = torch.cat((angles.cos(), angles.cos())) * scaling**2
            signed_sin = torch.cat((angles.sin(), -angles.sin())) * scaling**2  # -δ in apply_rotary's form
            self._read_rotation[key] = cos.to(*key), signed_sin.to(*key)
        return apply_rotary(mem_k, *self._read_rotation[key])

    def initial_state(
        self, batch_size: int, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The fresh memory, (B, G, M, d) each (a broadcast view: writes return new tensors), and the live flags
        (B, G, M) bool: under a rule with empty slots only the sinks are live; None under the others."""
        shape = (batch_size, *self.init_keys.shape)
        live = None
        if self.config.has_live_flags:
            live = torch.zeros(shape[:-1], dtype=torch.bool, device=self.init_keys.device)
            live[..., : self.config.memory_sink_slots] = True
        return self.init_keys.to(dtype).expand(shape), self.init_values.to(dtype).expand(shape), live
