"""The cache the prompt compressors (SnapKV, FastKV) leave behind, and the models they can run on.

After the prefill every layer holds the entries its compressor kept, at the positions they had in the prompt
(keys are cached rotated, so nothing is re-rotated); decoding appends each new token, and positions continue
at the prompt length. The cache grows by one entry per decoded token, as in the reference.

Per-query-head storage (the reference's SnapKV: keys and values repeated to every query head, each head
keeping its own tokens) stores `H` heads instead of `G`; `per_query_head_model` gives HF's attention a view
of the model that does not repeat them a second time.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import repeat_kv

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
# The prefill runs HF's own layers with no mask, relying on the kernel's causal flag: eager attention would
# let every prompt token see the future. On CUDA, SDPA runs PyTorch's FlashAttention-2 kernel, and a GPU test
# holds the prefill exact under it; HF's `flash_attention_2` (the flash-attn package) is refused because no
# test has run under it (no build of flash-attn was at hand).
SUPPORTED_ATTENTION = ("sdpa",)


def check_supported(model: PreTrainedModel, method: str) -> None:
    """Refuse models the compressors would run wrongly: other layer code (q/k norms, biases elsewhere, sliding
    windows) or an attention implementation that ignores the causal flag."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{method} supports model types {SUPPORTED_MODEL_TYPES}, not {config.model_type!r} "
            "(its prefill recomputes the window queries as q_proj then RoPE)."
        )
    if getattr(config, "sliding_window", None) is not None:
        raise ValueError(
            f"{method} needs full causal attention in the prompt; this {config.model_type!r} model has "
            f"sliding_window = {config.sliding_window}. Allowed: sliding_window = None."
        )
    attention = config._attn_implementation
    if attention not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"{method} does not run under attn_implementation = {attention!r}: its prefill passes no mask and "
            f"relies on the kernel's causal flag. Allowed: {SUPPORTED_ATTENTION}."
        )


class CompressedLayer(DynamicLayer):
    """One layer: the kept prompt entries, then every decoded token. `seen` counts stream tokens (positions
    continue at the prompt length); `keys.shape[-2]` is what is stored. With `repeat > 1` incoming keys and
    values (B, G, n, d) are stored repeated to every query head (B, G * repeat, n, d). `positions` (B, K, k)
    are the stream positions of the stored entries (int64, a small record of what was kept; not counted as
    KV bytes)."""

    def __init__(self, repeat: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.repeat = repeat
        self.seen = 0
        self.positions: torch.Tensor | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        batch, _, new, _ = key_states.shape
        key_states, value_states = repeat_kv(key_states, self.repeat), repeat_kv(value_states, self.repeat)
        # The stream continues (the prefill overwrites this where propagated tokens skip positions).
        added = torch.arange(self.seen, self.seen + new, device=key_states.device)
        added = added.expand(batch, key_states.shape[1], new)  # (B, K, new)
        self.positions = added if self.positions is None else torch.cat((self.positions, added), dim=-1)
        self.seen += new
        return super().update(key_states, value_states)

    def keep(self, index: torch.Tensor, seen: int) -> None:
        """Keep stored entries `index` (B, K, k) per stored head; the stream so far is `seen` tokens long."""
        gather = index[..., None].expand(-1, -1, -1, self.keys.shape[-1])
        self.keys, self.values = self.keys.gather(2, gather), self.values.gather(2, gather)
        self.positions = self.positions.gather(2, index)
        self.seen = seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.keys.shape[-2] if self.is_initialized else 0
        return stored + query_length, self.seen - stored  # stored entries all precede the queries

    def get_seq_length(self) -> int:
        return self.seen

    def reset(self) -> None:
        super().reset()
        self.seen = 0
        self.positions = None


class CompressedCache(Cache):
    """`num_layers` compressed layers; `repeat`: query heads per KV head when stored per query head, else 1."""

    def __init__(self, num_layers: int, repeat: int = 1):
        super().__init__(layers=[CompressedLayer(repeat) for _ in range(num_layers)])


def _sharing_copy(module: nn.Module) -> nn.Module:
    """A new module object with the same parameters and children (its own table of children)."""
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    return clone


def per_query_head_model(model: PreTrainedModel) -> PreTrainedModel:
    """A view of `model` (weights shared, nothing copied) whose attention expects keys and values already
    repeated to every query head: `num_key_value_groups = 1` on every attention module. `model` is
    untouched. Only for use with a `CompressedCache(repeat = H / G)`."""
    view = _sharing_copy(model)
    view.model = _sharing_copy(model.model)
    view.model.layers = nn.ModuleList([_sharing_copy(layer) for layer in model.model.layers])
    for layer in view.model.layers:
        layer.self_attn = _sharing_copy(layer.self_attn)
        layer.self_attn.num_key_value_groups = 1
    return view
