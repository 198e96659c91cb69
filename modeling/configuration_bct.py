"""Configuration of the Bounded-Cache Transformer (BCT).

A BCT is a Llama-shaped decoder whose attention reads and writes a learned, fixed-capacity KV memory.
Field names follow `LlamaConfig`; the capacity fields are new:

- `memory_slots` (M): learned, position-free key/value slots per layer and KV head;
- `window` (W): exact recent tokens every query sees (a multiple of `chunk_size`);
- `chunk_size` (C): tokens leave the window C at a time and are written into the slots;
- `memory_sink_slots` (S, `retain` only): the first S slots keep their learned initial contents for good (a
  learned attention sink, StreamingLLM's sink tokens made position-free); the other M - S are written;
- `memory_read_distance` (δ): every query reads the memory as if its entries sat δ positions behind it (the
  RoPE angle of distance δ, the same at any context length, so the memory stays position-free). 0 reads
  at the query's own angle; a converted model reads at δ = its window, where the source saw the tokens the
  window evicted (docs/design.md §4).

At inference every layer holds exactly `kv_capacity = M + W + C` key/value entries per KV head, whatever
the context length, so the cache is `2 · layers · kv_heads · head_dim · kv_capacity · dtype_bytes · batch`
bytes (`kv_cache_bytes`), plus, under `retain`, one live-flag byte per slot (`layers · kv_heads · M · batch`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

WRITE_RULES = ("gated", "delta", "retain", "fifo")
RULES_WITH_EMPTY_SLOTS = ("retain",)  # their slots start empty and carry a live flag (modeling/memory.py)
# RoPE variants whose frequencies do not depend on the current sequence length: relative rotation stays exact.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _invalid(field: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"BCTConfig.{field} = {value!r} is not allowed: {allowed}.")


class BCTConfig(PreTrainedConfig):
    """HF config for `BCTForCausalLM`. Every field is validated on construction (`ValueError` names the field,
    the value and what is allowed)."""

    model_type = "bct"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = 32000
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    # Clients (pipelines, lm-evaluation-harness) read this as the longest input they may send. A BCT has no
    # such limit; 131072 is the longest context the tests cover.
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    tie_word_embeddings: bool = False
    rope_parameters: dict | None = None
    attention_bias: bool = False  # bias on q, k, v and o (Llama semantics)
    qkv_bias: bool = False  # bias on q, k, v only (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    memory_slots: int = 32
    window: int = 64
    chunk_size: int = 32
    memory_write_rule: str = "gated"
    memory_sink_slots: int = 0  # of the M slots, how many are never written (retain only)
    memory_read_distance: int = 0  # δ: memory entries are read at the RoPE angle of this distance
    # Bias of the write gate at init: 0 opens writes halfway; conversion uses a negative value ("nearly closed").
    memory_gate_bias_init: float = 0.0
    # Cached forwards longer than this run segment by segment through all layers (bounded activation memory).
    prefill_segment_len: int = 4096
    source_architecture: str | None = None

    def __post_init__(self, **kwargs):
        heads, hidden = self.num_attention_heads, self.hidden_size
        if self.head_dim is None and _is_int(heads) and _is_int(hidden) and heads > 0 and hidden % heads == 0:
            self.head_dim = hidden // heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.rope_parameters is None and "rope_theta" not in kwargs and "rope_scaling" not in kwargs:
            self.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
        super().__post_init__(**kwargs)
        self.validate_bct()

    def validate_architecture(self):
        """Hook of HF's config validation (also run at save time)."""
        self.validate_bct()

    def validate_bct(self) -> None:
        """Raise `ValueError` naming the first invalid field, its value and what is allowed."""
        positive = (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "chunk_size",
            "prefill_segment_len",
            "max_position_embeddings",
        )
        for field in positive:
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                raise _invalid(field, value, "a positive integer")
        for field in ("memory_slots", "window", "memory_read_distance"):
            value = getattr(self, field)
            if not _is_int(value) or value < 0:
                raise _invalid(field, value, "an integer >= 0")
        if not _is_int(self.memory_sink_slots) or not 0 <= self.memory_sink_slots <= max(
            self.memory_slots - 1, 0
        ):
            raise _invalid(
                "memory_sink_slots",
                self.memory_sink_slots,
                f"an integer in [0, memory_slots - 1 = {self.memory_slots - 1}] (at least one slot must be writable)"
                if self.memory_slots > 0
                else "0 when memory_slots = 0",
            )
        if self.window % self.chunk_size != 0:
            raise _invalid(
                "window",
                self.window,
                f"a multiple of chunk_size={self.chunk_size} (tokens leave the window a chunk at a time)",
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise _invalid(
                "num_key_value_heads",
                self.num_key_value_heads,
                f"a divisor of num_attention_heads={self.num_attention_heads}",
            )
        if self.head_dim is None:
            raise _invalid(
                "hidden_size",
                self.hidden_size,
                f"a multiple of num_attention_heads={self.num_attention_heads} when head_dim is not set",
            )
        if not _is_int(self.head_dim) or self.head_dim < 2 or self.head_dim % 2:
            raise _invalid("head_dim", self.head_dim, "a positive even integer (RoPE rotates pairs)")
        if self.hidden_act not in ACT2FN:
            raise _invalid("hidden_act", self.hidden_act, f"one of {sorted(ACT2FN)}")
        if self.memory_write_rule not in WRITE_RULES:
            raise _invalid("memory_write_rule", self.memory_write_rule, f"one of {list(WRITE_RULES)}")
        if self.memory_sink_slots and self.memory_write_rule != "retain":
            raise _invalid(
                "memory_sink_slots",
                self.memory_sink_slots,
                f"0 with memory_write_rule = {self.memory_write_rule!r} (sink slots are a 'retain' option)",
            )
        for field in ("rms_norm_eps", "initializer_range", "memory_gate_bias_init", "attention_dropout"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise _invalid(field, value, "a finite number")
        if self.rms_norm_eps <= 0:
            raise _invalid("rms_norm_eps", self.rms_norm_eps, "a number > 0")
        if self.initializer_range < 0:
            raise _invalid("initializer_range", self.initializer_range, "a number >= 0")
        if not 0 <= self.attention_dropout < 1:
            raise _invalid("attention_dropout", self.attention_dropout, "a number in [0, 1)")
        for field in ("attention_bias", "qkv_bias", "qk_norm", "mlp_bias", "tie_word_embeddings"):
            if not isinstance(getattr(self, field), bool):
                raise _invalid(field, getattr(self, field), "true or false")
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise _invalid(
                "rope_parameters",
                self.rope_parameters,
                f"rope_type one of {list(SUPPORTED_ROPE_TYPES)} (frequencies must not depend on the length)",
            )

    @property
    def kv_capacity(self) -> int:
        """Key/value entries held per layer per KV head: memory slots + window + one chunk."""
        return self.memory_slots + self.window + self.chunk_size

    @property
    def has_live_flags(self) -> bool:
        """Whether the memory carries a live flag per slot (its write rule starts the slots empty)."""
        return self.memory_write_rule in RULES_WITH_EMPTY_SLOTS

    def kv_cache_bytes(self, batch_size: int = 1, dtype: torch.dtype | None = None) -> int:
        """Bytes of the whole KV cache (keys and values, all layers; under `retain` also one live-flag byte per
        slot) at any context length."""
        dtype = dtype or _as_dtype(self.dtype) or torch.float32
        element_bytes = torch.empty((), dtype=dtype).element_size()
        entries = self.num_hidden_layers * self.num_key_value_heads * batch_size  # per layer, head and row
        live_flags = self.memory_slots if self.has_live_flags else 0
        return entries * (2 * self.head_dim * self.kv_capacity * element_bytes + live_flags)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_dtype(value: Any) -> torch.dtype | None:
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)
    return None
