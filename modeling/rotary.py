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
    """`table(n)` gives cos and signed sin for local positions 0..n-1.

    No buffers: the tables are derived from the config in float32 on first use and memoised per (device,
    dtype), so `from_pretrained` (which builds modules on the meta device) and `.to(bfloat16)` cannot
    degrade the frequencies, and decoding does not rebuild the same W + C positions at every step.
    """

    def __init__(self, config: BCTConfig):
        super().__init__()
        self.config = config
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def table(
        self, length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin, (length, d) each, for positions 0..length-1 (float32 math, cast to `dtype`).
        The sine's first half is negated: that is the form `apply_rotary` takes."""
        key = (torch.device(device), dtype)
        memo = self._tables.get(key)
        if memo is None or memo[0].shape[0] < length:
            inv_freq, scaling = inverse_frequencies(self.config)
            size = max(length, 2 * memo[0].shape[0]) if memo else length
            freqs = torch.outer(torch.arange(size, dtype=torch.float32), inv_freq)  # (n, d/2)
            cos = torch.cat((freqs.cos(), freqs.cos()), dim=-1) * scaling  # (n, d)
            signed_sin = torch.cat((-freqs.sin(), freqs.sin()), dim=-1) * scaling
            memo = cos.to(device, dtype), signed_sin.to(device, dtype)
            self._tables[key] = memo
        return memo[0][:length], memo[1][:length]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., n, d) by a table row broadcastable to it: x·cos + [-x2, x1]·sin (HF's half-split layout),
    written as x·cos + roll(x)·[-sin, sin] so that it is three kernels."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, dims=-1), signed_sin)
