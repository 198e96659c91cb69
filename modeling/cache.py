"""`BCTCache`: the fixed-size runtime state of a BCT, one `BCTCacheLayer` per decoder layer.

Per layer and row it holds the memory (M slots, and under `retain` a live flag per slot) and a ring of the most recent tokens (at most W + C,
keys stored *before* RoPE, oldest first, starting at a chunk boundary). Its tensors are allocated once, at
the first forward, and never grow: `nbytes()` is `config.kv_cache_bytes(batch, dtype)` at 1 token and at
10 M tokens.

Row counters are shared by all layers: `seen` (real tokens absorbed per row, pads excluded) and `ring_len`
(valid ring entries per row). `get_seq_length()` returns the number of input *columns* processed, pads
included, because `generate()` slices new input ids with it.

The cache is stateful (writes into memory cannot be undone), so it cannot `crop`; assisted decoding is
refused (`_is_stateful` on the model).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_outputs import BaseModelOutputWithPast

from .configuration_bct import BCTConfig

# The name under which the installed transformers hands a cache to a model's forward and keeps it in model
# outputs: `cache` from 5.24 on; `past_key_values` before (still accepted, with a warning, until 5.40).
CACHE_ARG = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
CACHE_ARG_NAMES = ("cache", "past_key_values")


class BCTCacheLayer(CacheLayerMixin):
    """One layer's state: ring `keys`/`values` (B, G, W + C, d), memory `mem_keys`/`mem_values` (B, G, M, d)
    and, for a rule with empty slots, `mem_live` (B, G, M) bool."""

    is_compileable = False
    is_sliding = False

    def __init__(self, ring_size: int):
        super().__init__()
        self.ring_size = ring_size
        self.mem_keys: torch.Tensor | None = None
        self.mem_values: torch.Tensor | None = None
        self.mem_live: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, head_dim = key_states.shape
        shape = (batch, heads, self.ring_size, head_dim)
        self.keys = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(shape, dtype=value_states.dtype, device=value_states.device)
        self.is_initialized = True

    def initialize(
        self, mem_keys: torch.Tensor, mem_values: torch.Tensor, mem_live: torch.Tensor | None
    ) -> None:
        """Allocate the ring and take the starting memory (B, G, M, d) and its live flags (B, G, M) or None."""
        self.lazy_initialization(mem_keys, mem_values)
        self.mem_keys = mem_keys.contiguous()
        self.mem_values = mem_values.contiguous()
        self.mem_live = None if mem_live is None else mem_live.contiguous()

    def store(self, mem_keys, mem_values, mem_live, ring_keys, ring_values) -> None:
        """Replace the state with same-shaped tensors computed by the attention layer (a `LayerState`)."""
        self.mem_keys, self.mem_values, self.mem_live = mem_keys, mem_values, mem_live
        self.keys, self.values = ring_keys, ring_values

    def tensors(self) -> list[torch.Tensor]:
        state = (self.mem_keys, self.mem_values, self.mem_live, self.keys, self.values)
        return [t for t in state if t is not None]

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError(
            "BCTCacheLayer is read and written by BCTAttention itself (the memory write needs the layer's "
            "parameters); `Cache.update` has no meaning for it."
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.ring_size + query_length, 0

    def get_seq_length(self) -> int:
        raise NotImplementedError("Use BCTCache.get_seq_length(): the column count is shared by all layers.")

    def get_max_length(self) -> int:
        return -1  # no limit on context length

    def reset(self) -> None:
        self.keys = self.values = self.mem_keys = self.mem_values = self.mem_live = None
        self.is_initialized = False

    def apply_to_rows(self, fn) -> None:
        if self.is_initialized:
            self.keys, self.values, self.mem_keys, self.mem_values = (
                fn(t) for t in (self.keys, self.values, self.mem_keys, self.mem_values)
            )
            self.mem_live = None if self.mem_live is None else fn(self.mem_live)

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(_NOT_CROPPABLE)


_NOT_CROPPABLE = (
    "BCTCache cannot be cropped: tokens already written into the memory cannot be taken back. Assisted "
    "decoding, prompt lookup and other rollback-based generation are not supported for BCT models."
)


class BCTCache(Cache):
    """Fixed-capacity cache of a BCT model. Pass it as `cache` (`past_key_values` before transformers 5.24),
    or let the model create one."""

    def __init__(self, config: BCTConfig):
        ring_size = config.window + config.chunk_size
        super().__init__(layers=[BCTCacheLayer(ring_size) for _ in range(config.num_hidden_layers)])
        self.config = config
        self.columns = 0  # input columns processed, pads included (what `generate` expects)
        self.seen: torch.Tensor | None = None  # (B,) real tokens absorbed per row
        self.ring_len: torch.Tensor | None = None  # (B,) valid ring entries per row

    # --- row counters -------------------------------------------------------------------------------
    def counters(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(seen, ring_len), zeros for a fresh cache."""
        if self.seen is None:
            zeros = torch.zeros(batch_size, dtype=torch.long, device=device)
            return zeros, zeros
        if self.seen.shape[0] != batch_size:
            raise ValueError(
                f"BCTCache holds {self.seen.shape[0]} rows but the input has batch size {batch_size}."
            )
        return self.seen, self.ring_len

    def advance(self, columns: int, seen: torch.Tensor, ring_len: torch.Tensor) -> None:
        self.columns += columns
        self.seen, self.ring_len = seen, ring_len

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.columns

    # --- size ---------------------------------------------------------------------------------------
    def nbytes(self) -> int:
        """Bytes actually allocated for keys and values (memory + ring) across layers."""
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.tensors())

    # --- batch manipulation used by generate() -------------------------------------------------------
    def _apply_to_rows(self, fn) -> None:
        for layer in self.layers:
            layer.apply_to_rows(fn)
        if self.seen is not None:
            self.seen, self.ring_len = fn(self.seen), fn(self.ring_len)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply_to_rows(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply_to_rows(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply_to_rows(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        self.columns, self.seen, self.ring_len = 0, None, None

    def crop(self, max_length: int) -> None:
        raise ValueError(_NOT_CROPPABLE)

    @property
    def is_croppable(self) -> bool:
        return False


def take_cache(cache: Cache | None, past_key_values: Cache | None, extra: dict) -> BCTCache | None:
    """The one cache a forward call was given, under either name; a cache left in `extra` (a name the model
    does not read, which would silently start from an empty memory) or one of another class is an error."""
    if cache is not None and past_key_values is not None:
        raise ValueError("Pass the cache once, as `cache` (or `past_key_values`), not under both names.")
    stray = [name for name, value in extra.items() if isinstance(value, Cache)]
    if stray:
        raise TypeError(
            f"BCT got a cache under {stray[0]}=, a name it does not read; pass it as cache= "
            "(transformers >= 5.24) or past_key_values=."
        )
    cache = past_key_values if cache is None else cache
    if cache is not None and not isinstance(cache, BCTCache):
        raise TypeError(
            f"BCT models need a BCTCache as cache, got {type(cache).__name__}. "
            "Pass BCTCache(model.config) or nothing (the model creates one when use_cache=True)."
        )
    return cache
