"""Rotary position embedding at positions relative to a local origin.

BCT never rotates at absolute positions. Every forward call rotates queries and window keys at positions
counted from the start of the oldest window token the call can see (always a chunk boundary). Attention
only depends on position differences, and those never exceed `window + chunk_size` plus the call's own
length, so the angles stay small and exact even after 10 M tokens (in float32, absolute positions drift by
~0.5 rad there and stop being representable above 2**24).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from .configuration_bct import BCTConfig


def inverse_frequencies(config: BCTConfig) -> tuple[torch.Tensor, float]:
    """(d/2,) inverse frequencies and the cos/sin scaling of the config's RoPE variant."""
    rope_type = config.rope_parameters.get("rope_type", "default")
    if rope_type == "default":
        dim, base = config.head_dim, config.rope_parameters["rope_theta"]
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)), 1.0
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, None)
    return inv_freq.float(), float(scaling)


class BCTRotary(nn.Module):
    """Holds the inverse frequencies; `table(n)` gives cos/sin for local positions 0..n-1."""

    def __init__(self, config: BCTConfig):
        super().__init__()
        inv_freq, self.attention_scaling = inverse_frequencies(config)
        # Not saved with the weights: from_pretrained builds the model on the meta device, so the
        # model's `_init_weights` recomputes it.
        self.inv_freq = nn.Buffer(inv_freq, persistent=False)  # (d/2,)

    @torch.no_grad()
    def table(
        self, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (length, d) for positions 0..length-1 (float32 math, cast to `dtype`)."""
        positions = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq.to(device))  # (length, d/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (length, d)
        cos = angles.cos() * self.attention_scaling
        sin = angles.sin() * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., n, d) by cos/sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin
