"""One KV budget, in bytes, for every bounded method; and the bytes a cache really holds.

A method holding `entries` keys and values per layer and stored head costs `2 · L · heads · d · entries ·
dtype_bytes` bytes (`heads` = the KV heads G, or the query heads H where a method stores per query head).
Every bounded method is configured from one byte budget (`--kv-bytes`, by default the BCT's own
`kv_cache_bytes`), so methods that store heads differently are still compared at equal bytes.

Measured bytes are always the real tensors a cache holds (`held_bytes`), after the prefill, after decoding,
and the peak during the prefill (`PeakBytes`: the largest total held after any layer's update, e.g. FastKV's
whole-prompt layer before it is compressed; transient activations that attention reads are not counted).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

# Methods a cache layer changes its held tensors with: HF's and our `update`, the compressors' `keep`, BCT's
# `store` and `initialize`.
MUTATORS = ("update", "keep", "store", "initialize")


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def entry_bytes(config, dtype: torch.dtype, heads: int | None = None) -> int:
    """Bytes of one entry (a key and a value) in every layer and stored head: 2 · L · heads · d · dtype_bytes."""
    heads = config.num_key_value_heads if heads is None else heads
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim(config) * itemsize


def entries_for_bytes(kv_bytes: int, config, dtype: torch.dtype, heads: int | None = None) -> int:
    """Entries per layer and stored head that `kv_bytes` buys (rounded down, at least 1)."""
    per_entry = entry_bytes(config, dtype, heads)
    if kv_bytes < per_entry:
        raise ValueError(f"A KV budget of {kv_bytes} bytes is less than one entry ({per_entry} bytes).")
    return kv_bytes // per_entry


def held_bytes(cache: Cache) -> int:
    """Bytes of every key/value tensor the cache's layers hold now (BCT memory slots included)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "tensors"):  # BCT: memory slots + ring
            tensors = layer.tensors()
        else:
            tensors = (layer.keys, layer.values) if layer.is_initialized else ()
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


class PeakBytes:
    """`with PeakBytes(cache) as peak: ...` then `peak.bytes`: the most bytes the cache held after any
    change to one of its layers inside the block. The layers' methods are wrapped on the instances only."""

    def __init__(self, cache: Cache):
        self.cache, self.bytes, self._wrapped = cache, 0, []

    def __enter__(self) -> PeakBytes:
        for layer in self.cache.layers:
            for name in MUTATORS:
                if hasattr(layer, name):
                    self._wrapped.append((layer, name))
                    setattr(layer, name, self._watch(getattr(layer, name)))
        self.bytes = held_bytes(self.cache)
        return self

    def _watch(self, method):
        def watched(*args, **kwargs):
            out = method(*args, **kwargs)
            self.bytes = max(self.bytes, held_bytes(self.cache))
            return out

        return watched

    def __exit__(self, *exc) -> None:
        for layer, name in self._wrapped:
            delattr(layer, name)  # back to the class's method
        self._wrapped.clear()
