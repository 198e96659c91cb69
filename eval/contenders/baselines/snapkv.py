"""SnapKV (Li et al., 2024, arXiv 2404.14469) on HF Llama-family models, for prompt -> answer tasks.

Every layer runs on the whole prompt and keeps, per stored head, the `budget - window` earlier tokens its
observation window attends to most (pooled scores, `window_scores`) plus the window. Two variants:

- GQA-aware (default): the scores are summed over the query heads of each KV group and each KV head keeps
  one selection, exactly FastKV's compression without its token-selective propagation; the cache holds `G`
  heads per layer.
- `per_query_head`: the reference's SnapKV baseline (`window_scores.REFERENCE`, `baselines/snapkv/`): keys and
  values are repeated to every query head and each query head keeps its own tokens; the cache holds `H` heads
  per layer, so the same bytes buy `G / H` as many entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from eval.contenders.baselines.compressed_prefill import compressed_prefill
from eval.contenders.baselines.prompt_cache import CompressedCache, check_supported, per_query_head_model
from eval.contenders.baselines.window_scores import Scoring


@dataclass
class SnapKVSettings:
    """`budget`: entries per layer and stored head kept from the prompt; `per_query_head`: store and select
    per query head (the reference baseline) rather than per KV head; `scoring`: window, kernel, pooling."""

    budget: int
    per_query_head: bool = False
    scoring: Scoring = field(default_factory=Scoring)

    def __post_init__(self) -> None:
        if self.budget <= self.scoring.window:
            raise ValueError(
                f"SnapKV budget = {self.budget} must exceed the observation window = {self.scoring.window}."
            )


def query_groups(model: PreTrainedModel) -> int:
    """Query heads per KV head."""
    return model.config.num_attention_heads // model.config.num_key_value_heads


def snapkv_model(model: PreTrainedModel, per_query_head: bool) -> PreTrainedModel:
    """The model SnapKV runs (prefill and decode): `model` itself, or its per-query-head view."""
    check_supported(model, "SnapKV")
    return per_query_head_model(model) if per_query_head else model


def snapkv_cache(model: PreTrainedModel, per_query_head: bool) -> CompressedCache:
    repeat = query_groups(model) if per_query_head else 1
    return CompressedCache(model.config.num_hidden_layers, repeat)


@torch.no_grad()
def snapkv_prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, cache: CompressedCache, settings: SnapKVSettings
) -> torch.Tensor:
    """Run the prompt (B, N) through `model` (from `snapkv_model`), leaving each layer's kept KV in `cache`.
    Returns the logits of the last prompt token (B, 1, V)."""
    check_supported(model, "SnapKV")
    return compressed_prefill(model, input_ids, cache, settings.budget, settings.scoring)
