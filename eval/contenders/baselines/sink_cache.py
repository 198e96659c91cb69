"""Attention sinks in the StreamingLLM manner (Xiao et al., 2023, arXiv 2309.17453) on the transformers 5.x
Cache API, for Llama-family models (transformers removed its `SinkCache` in 4.53).

The cache keeps the first `num_sinks` tokens of the stream (the "attention sinks") and the most recent
`budget - num_sinks` tokens; everything in between is evicted. StreamingLLM assigns positions *within the
cache*: with a full cache, the newest token sits at position `budget - 1`, the recent tokens just before it
and the sinks at `0 .. num_sinks - 1`, so the distance from a query to sink `j` is `budget - 1 - j` however
long the stream is, and the sink keys are re-rotated as the window moves on.

RoPE scores depend only on position differences, so the same logits come from rotating each token at its
stream position `t` (as HF's Llama does) and re-rotating the *sink* keys to `t - (budget - 1) + j`: recent
tokens already sit at their true distance from the query. That is what this cache does; it relies on the model
rotating the token at stream index `t` at position `t` (HF's default `position_ids`, and `generate()` without
padding). Batch rows must be unpadded.

Capacity: at most `budget` entries per layer and KV head, before and during every step (the oldest recent
token is evicted before the new one is appended), so every query attends to at most `budget` keys.

Inputs longer than one token that run past the capacity need per-query sink positions, which one key tensor
cannot hold: `forward_blocks` feeds them in blocks, and for each block the cache returns one copy of the
sinks per query (rotated for that query) and a 4-D mask that shows each query its own copy and its window.
Within capacity (prompt + generation <= budget) the cache is a plain growing cache and `generate()` works.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.models.llama.modeling_llama import rotate_half

from modeling.cache import CACHE_ARG

DEFAULT_SINKS = 4  # StreamingLLM's choice: four initial tokens recover most of the sink effect


class SinkCacheLayer(CacheLayerMixin):
    """One layer: `keys`/`values` (B, G, <= budget, d) = [sinks ; recent tokens], in stream order.

    Every key is stored as the model rotated it (at its stream position); only the returned sink keys are
    re-rotated, never the stored ones, so no rounding accumulates over a long stream."""

    is_sliding = False

    def __init__(self, budget: int, num_sinks: int, inv_freq: torch.Tensor):
        super().__init__()
        self.budget, self.num_sinks = budget, num_sinks
        self.inv_freq = inv_freq  # (d/2,) the model's RoPE frequencies
        self.seen = 0  # tokens of the stream seen so far

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.keys = key_states[:, :, :0]
        self.values = value_states[:, :, :0]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, block_plan: BlockPlan | None = None, **kwargs):
        """Append `n` new keys/values (rotated at stream positions `seen .. seen + n - 1`) and return what the
        queries attend to: (B, G, K, d) keys and values, K <= budget unless `block_plan` is given."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new, stored, start = key_states.shape[-2], self.keys.shape[-2], self.seen
        sinks = min(self.num_sinks, stored)
        if start + new <= self.budget:  # everything fits: a plain causal cache
            self.keys = torch.cat((self.keys, key_states), dim=-2)
            self.values = torch.cat((self.values, value_states), dim=-2)
            self.seen += new
            return self.keys, self.values
        if new == 1 and block_plan is None:  # one decode step past capacity
            # Evict the oldest recent token before appending, so the layer never holds more than `budget`.
            keep = slice(sinks + 1, None) if stored == self.budget else slice(sinks, None)
            self.keys = torch.cat((self.keys[:, :, :sinks], self.keys[:, :, keep], key_states), dim=-2)
            self.values = torch.cat(
                (self.values[:, :, :sinks], self.values[:, :, keep], value_states), dim=-2
            )
            self.seen += 1
            shift = start - (self.budget - 1)  # the new token sits at in-cache position budget - 1
            sink_keys = self._rotate(self.keys[:, :, :sinks], torch.tensor([shift]))[:, :, 0]  # (B, G, s, d)
            return torch.cat((sink_keys, self.keys[:, :, sinks:]), dim=-2), self.values
        if block_plan is None:
            raise ValueError(
                f"SinkCache: {new} tokens at stream position {start} run past the {self.budget}-entry capacity; "
                "feed them with eval.contenders.baselines.sink_cache.forward_blocks (per-query sink positions need its mask)."
            )
        return self._update_block(key_states, value_states, block_plan)

    def _update_block(self, key_states, value_states, plan: BlockPlan):
        all_k = torch.cat((self.keys, key_states), dim=-2)  # (B, G, stored + n, d) in stream order
        all_v = torch.cat((self.values, value_states), dim=-2)
        sinks = plan.sinks
        # One copy of the sinks per query, each rotated for that query: (B, G, n * s, d)
        copies = self._rotate(all_k[:, :, :sinks], plan.shifts).flatten(2, 3)
        value_copies = all_v[:, :, :sinks].repeat(1, 1, len(plan.shifts), 1)
        keys = torch.cat((copies, all_k[:, :, sinks:]), dim=-2)
        values = torch.cat((value_copies, all_v[:, :, sinks:]), dim=-2)
        recent = self.budget - self.num_sinks
        tail = max(all_k.shape[-2] - sinks - recent, 0)
        self.keys = torch.cat((all_k[:, :, :sinks], all_k[:, :, sinks + tail :]), dim=-2)
        self.values = torch.cat((all_v[:, :, :sinks], all_v[:, :, sinks + tail :]), dim=-2)
        self.seen += key_states.shape[-2]
        return keys, values

    def _rotate(self, keys: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
        """keys (B, G, s, d) -> (B, G, len(shifts), s, d): each copy rotated by one shift (RoPE composes)."""
        inv_freq = self.inv_freq.to(keys.device)
        angles = shifts.to(device=keys.device, dtype=inv_freq.dtype)[:, None] * inv_freq  # (q, d/2)
        angles = torch.cat((angles, angles), dim=-1)[:, None, :]  # (q, 1, d)
        cos, sin = angles.cos().to(keys.dtype), angles.sin().to(keys.dtype)
        keys = keys[:, :, None]  # (B, G, 1, s, d)
        return keys * cos + rotate_half(keys) * sin

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        if self.seen + query_length <= self.budget:
            return self.seen + query_length, 0
        # A decode step past capacity: `budget` keys ending at the query (blocks bring their own mask).
        return self.budget, self.seen + query_length - self.budget

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1  # any stream length; the cache itself never exceeds `budget` entries

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.seen = 0

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.keys = self.keys.repeat_interleave(repeats, dim=0)
            self.values = self.values.repeat_interleave(repeats, dim=0)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.keys, self.values = self.keys[indices], self.values[indices]


class BlockPlan:
    """What one block of `n` queries at stream positions `start .. start + n - 1` sees: the sink copies'
    rotation `shifts` (n,), the number of `sinks` present, and the additive `mask` (1, 1, n, n * s + r + n)."""

    def __init__(self, start: int, new: int, stored: int, budget: int, num_sinks: int, dtype, device):
        self.sinks = min(num_sinks, start + new)
        query = torch.arange(start, start + new, device=device)  # (n,) stream positions of the queries
        self.shifts = (query - (budget - 1)).clamp_min(0)  # sinks sit at j + shift for each query
        # Non-sink keys in order: stored recent tokens then the block's own non-sink tokens.
        first_recent = start - (
            stored - min(num_sinks, stored)
        )  # stream position of the oldest stored recent
        key_pos = torch.arange(max(first_recent, self.sinks), start + new, device=device)  # (r + n',)
        window = budget - num_sinks
        sees_recent = (key_pos[None, :] <= query[:, None]) & (key_pos[None, :] > query[:, None] - window)
        sink_pos = torch.arange(self.sinks, device=device)
        own_copy = torch.eye(new, dtype=torch.bool, device=device)[:, :, None]  # query i sees copy i only
        sees_sinks = (own_copy & (sink_pos[None, None, :] <= query[:, None, None])).flatten(1)  # (n, n * s)
        allowed = torch.cat((sees_sinks, sees_recent), dim=1)
        self.mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        self.mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        self.mask = self.mask[None, None]


class SinkCache(Cache):
    """StreamingLLM cache for a Llama-family model: `num_sinks` sinks + the most recent tokens, `budget`
    entries per layer and KV head in all. Positions are assigned within the cache (see the module docstring)."""

    def __init__(self, model: PreTrainedModel, budget: int, num_sinks: int = DEFAULT_SINKS):
        if budget <= num_sinks:
            raise ValueError(f"SinkCache budget = {budget} must exceed num_sinks = {num_sinks}.")
        inv_freq = model.model.rotary_emb.inv_freq.detach().float()
        layers = [SinkCacheLayer(budget, num_sinks, inv_freq) for _ in range(model.config.num_hidden_layers)]
        super().__init__(layers=layers)
        self.budget, self.num_sinks = budget, num_sinks
        self.block_plan: BlockPlan | None = None

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states, block_plan=self.block_plan)

    def plan_block(self, new: int, dtype: torch.dtype, device: torch.device) -> BlockPlan | None:
        """The plan (and mask) for feeding `new` tokens next, or None when no special mask is needed."""
        layer = self.layers[0]
        start = layer.seen
        if start + new <= self.budget or new == 1:
            return None
        stored = layer.keys.shape[-2] if layer.is_initialized else 0
        return BlockPlan(start, new, stored, self.budget, self.num_sinks, dtype, device)


def forward_blocks(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    cache: SinkCache,
    block: int = 512,
    logits_to_keep: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Feed `input_ids` (B, T) through `model` with `cache`, `block` tokens at a time; yield `(offset, logits)`
    per block (`logits_to_keep` as in HF: 0 keeps every position of the block)."""
    dtype = model.get_input_embeddings().weight.dtype
    for offset in range(0, input_ids.shape[1], block):
        ids = input_ids[:, offset : offset + block]
        plan = cache.plan_block(ids.shape[1], dtype, ids.device)
        cache.block_plan = plan
        try:
            out = model(
                ids,
                attention_mask=None if plan is None else plan.mask,
                **{CACHE_ARG: cache},
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
        finally:
            cache.block_plan = None
        yield offset, out.logits
