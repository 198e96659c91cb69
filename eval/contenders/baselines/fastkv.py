"""FastKV (Jo et al., 2025, arXiv 2502.01068) on HF Llama-family models, for prompt -> answer tasks.

FastKV shortens the prefill and bounds the decode-time cache (semantics and defaults of the authors' code,
`window_scores.REFERENCE`: `baselines/fastkv/utils.py` and `llama_model.py`):

- **GQA-aware KV compression** in every layer: the observation-window scores of each query head, pooled
  (`max` by default, or `avg`), summed over the query heads of each KV group, so that one selection serves a
  whole group; each KV head keeps its `budget - window` best earlier tokens plus the window.
- **Token-selective propagation (TSP).** Layers up to and including the TSP layer run on the whole prompt. At
  the TSP layer the same scores, summed over all groups, pick `tsp_len` tokens (the window among them); only
  those, with their original positions, go on to the later layers, which therefore run on a short sequence
  and select their KV entries from it.

`tsp_len` is a fixed count (the reference's constant mode, default 2048) unless `tsp_rate` is given (its
proportional mode: `int(rate * prompt)`); it is not floored at the budget, as in the reference: with
`tsp_len < budget` the later layers keep all `tsp_len` tokens. The TSP layer defaults to `L // 2 - 1`, the
reference's 15 of 32. The reference's proportional KV mode (a retain rate of the prompt, divided by the TSP
rate after the TSP layer) is not offered: here every bounded method holds one fixed byte budget. The loop
itself is `compressed_prefill`; decoding appends to `CompressedCache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from eval.contenders.baselines.compressed_prefill import compressed_prefill
from eval.contenders.baselines.prompt_cache import CompressedCache, check_supported
from eval.contenders.baselines.window_scores import Scoring


@dataclass
class FastKVSettings:
    """`budget`: KV entries per layer and KV head kept from the prompt; `tsp_layer`: index of the TSP layer
    (None: `num_layers // 2 - 1`); `tsp_len`: tokens propagated past it, or `tsp_rate`: that share of the
    prompt (then `tsp_len` is ignored); `scoring`: window, kernel, pooling."""

    budget: int
    tsp_layer: int | None = None
    tsp_len: int = 2048
    tsp_rate: float | None = None
    scoring: Scoring = field(default_factory=Scoring)

    def __post_init__(self) -> None:
        if self.budget <= self.scoring.window:
            raise ValueError(
                f"FastKV budget = {self.budget} must exceed the observation window = {self.scoring.window}."
            )
        if self.tsp_rate is None and self.tsp_len <= self.scoring.window:
            raise ValueError(
                f"FastKV tsp_len = {self.tsp_len} must exceed the observation window = {self.scoring.window}."
            )
        if self.tsp_rate is not None and not 0 < self.tsp_rate <= 1:
            raise ValueError(f"FastKV tsp_rate = {self.tsp_rate} must be in (0, 1].")

    def resolve_tsp_layer(self, num_layers: int) -> int:
        layer = max(num_layers // 2 - 1, 0) if self.tsp_layer is None else self.tsp_layer
        if not 0 <= layer < num_layers:
            raise ValueError(f"FastKV tsp_layer = {layer} must index one of the model's {num_layers} layers.")
        return layer

    def resolve_tsp_len(self, prompt: int) -> int:
        """Tokens propagated past the TSP layer for a prompt of `prompt` tokens."""
        return self.tsp_len if self.tsp_rate is None else int(prompt * self.tsp_rate)


def fastkv_cache(model: PreTrainedModel) -> CompressedCache:
    return CompressedCache(model.config.num_hidden_layers)


@torch.no_grad()
def fastkv_prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, cache: CompressedCache, settings: FastKVSettings
) -> torch.Tensor:
    """Run the prompt (B, N) through `model` the FastKV way, leaving each layer's kept KV in `cache`.
    Returns the logits of the last prompt token (B, 1, V)."""
    check_supported(model, "FastKV")
    tsp_layer = settings.resolve_tsp_layer(model.config.num_hidden_layers)
    tsp_len = settings.resolve_tsp_len(input_ids.shape[1])
    return compressed_prefill(model, input_ids, cache, settings.budget, settings.scoring, tsp_layer, tsp_len)
