"""Sliding-window attention with transformers' own cache: a Mistral-style copy of a Llama-family model.

HF Llama has no `sliding_window`, and giving its config one would make `DynamicCache(config=...)` drop old
tokens while Llama's mask stays fully causal. Mistral has the same weights and layer code plus the sliding
mask (`create_sliding_window_causal_mask`), and in transformers 5.x `DynamicCache(config=mistral_config)`
builds a `DynamicSlidingWindowLayer` per layer (`get_layer_types_and_kwargs`: a `sliding_window` field makes
the layer type "sliding_attention"). So the baseline is exactly HF's code path for Mistral-style models.

Capacity: with `sliding_window = S` each query attends to the S most recent tokens itself included; between
steps the layer stores the last `S - 1` of them and appends the new one during the step. A budget of `E`
held entries (what the byte budget buys) therefore means `sliding_window = E + 1`: the cache holds `E` after
the prefill and after every step, and each query sees those `E` and itself.
"""

from __future__ import annotations

from transformers import DynamicCache, MistralConfig, MistralForCausalLM, PreTrainedModel

# Config fields that mean the same in Llama, Mistral and BCT configs (biases aside).
LLAMA_FAMILY_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "rope_parameters",
    "tie_word_embeddings",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def sliding_window_model(model: PreTrainedModel, window: int) -> MistralForCausalLM:
    """A `MistralForCausalLM` with `model`'s weights (Llama or Mistral, no attention/MLP biases) whose every
    layer attends to the last `window` tokens. `model` is not modified."""
    config = model.config
    if config.model_type not in ("llama", "mistral"):
        raise ValueError(
            f"The sliding-window baseline needs a Llama or Mistral model, got {config.model_type!r}."
        )
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError(
            "The sliding-window baseline maps onto Mistral, which has no attention or MLP biases."
        )
    fields = {name: getattr(config, name) for name in LLAMA_FAMILY_FIELDS if hasattr(config, name)}
    sliding_config = MistralConfig(**fields, sliding_window=window)
    sliding_config._attn_implementation = config._attn_implementation
    dtype = model.get_input_embeddings().weight.dtype
    sliding = MistralForCausalLM(sliding_config).to(dtype)
    missing, unexpected = sliding.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise ValueError(
            f"Weights do not map onto Mistral: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    if config.tie_word_embeddings:
        sliding.tie_weights()
    return sliding.eval().to(model.device)


def sliding_window_cache(model: MistralForCausalLM) -> DynamicCache:
    """HF's own bounded cache for the model: one `DynamicSlidingWindowLayer` per layer."""
    return DynamicCache(config=model.config)
