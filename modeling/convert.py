"""Convert a Hugging Face Llama-family checkpoint into a BCT (docs/design.md §4).

Embeddings, norms, q/k/v/o (with Qwen2's biases and Qwen3's q/k norms), MLP and head map one-to-one;
only the memory parameters are new, and they are initialised so that conversion does not change what the
model computes (issue 17):

- every slot's key is the source's (pre-RoPE) key of its BOS token at layer l, plus a little noise so slots
  can differ; every slot's value is zero. The memory is an attention sink that carries nothing: whatever
  mass it takes only scales the head's output down a little;
- every slot's read bias is `CONVERSION_READ_BIAS - ln M`, so the M slots together take the mass of one
  BOS-like key whose logit is lowered by 6: the un-rotated sink logit is never seen by the source, and M
  copies of it at full weight broke the model (SmolLM2-135M: perplexity 7.9 -> 1,127 at M = 64);
- the write gates start nearly closed (`CONVERSION_GATE_BIAS`);
- under `retain`, slots hold exact evicted tokens once the window overflows, and the sink above would be
  evicted with them. With `memory_sink_slots = S > 0` the first S slots stay sinks (read bias
  `CONVERSION_READ_BIAS - ln S`) and the M - S retained tokens are read with `CONVERSION_RETAIN_READ_BIAS -
  ln(M - S)` each. Measured on SmolLM2-135M at M = 64, W = 448, C = 64, 3 held-out stdlib rows of 2,048
  tokens, before training (source with full attention: loss 1.759): no sinks, retained bias -6 / -4 / -2:
  2.267 / 2.240 / 2.269; 4 sinks with retained bias -12 / -8 / -6 / -4 per slot: 2.075 / 2.058 / 2.077 /
  2.322 (-8 per slot is -4 - ln 60).
- with `memory_read_distance` δ > 0 (the memory is read as keys δ positions behind the query), the S sinks
  are the source's BOS token itself, key and value, at one BOS token's full weight (each
  `CONVERSION_SINK_AT_DISTANCE_BIAS - ln S`): what StreamingLLM keeps, position-free. Same 2,048-token
  rows, W = 448, C = 64, δ = 448: null sinks 2.053; BOS sinks at full weight **1.850** (StreamingLLM's 4
  sinks on the source at the same 576 entries: 1.820); BOS sinks at -2: 1.874. On 512-token rows, which
  the window covers, BOS sinks give 2.075 against the source's 2.080 (`memory_read_distance = 0`, null
  sinks: 2.084). The retained tokens are then read at full weight, each as the window read it
  (`CONVERSION_RETAINED_AT_DISTANCE_BIAS` = 0 per slot): slots not yet written are empty and not read (the
  live flags), so opening the read adds only real tokens. Loss on the tokens past 512 of the same three
  rows (source 1.610): retained bias per slot -4 - ln 60 / -2 - ln 60 / -ln 60 / -1 / **0**: 1.7304 /
  1.7302 / 1.7291 / 1.7190 / **1.7149**. (Before the live flags, empty slots were read as zero-valued sinks
  and -ln 60 cost loss, 1.887 against 1.850 on all tokens; the trained read bias then stayed shut,
  docs/design.md §8.4.)

Measured on SmolLM2-135M (README, "Models: from scratch or continued"): with the window covering 512-token
inputs the loss is within 0.2% of the source's for M = 1, 8, 16, 64; beyond the window the converted model
is better than the source run as a sliding window of the same span (the zero-valued sink stands in for the
BOS token that left the window). Every memory parameter stays trainable (non-zero gradients from the first
step). With `memory_slots=0` and a window covering the input, the converted model computes exactly the
source model's function; with `memory_slots=0` and a shorter window, the source's sliding-window function.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .configuration_bct import SUPPORTED_ROPE_TYPES, BCTConfig
from .modeling_bct import BCTForCausalLM

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
CONVERSION_GATE_BIAS = -6.0  # σ(-6) ≈ 0.0025: writes nearly closed at the start of continued training
# Read bias of the whole memory (each slot: this - ln M), measured on SmolLM2-135M: -4 is +0.1% loss with the
# window covering 512 tokens, -3 is +4.4%; -6 leaves a margin and still helps beyond the window.
CONVERSION_READ_BIAS = -6.0
# Read bias of the M - S retained tokens together under `retain` (each: this - ln(M - S)); measured above.
CONVERSION_RETAIN_READ_BIAS = -4.0
# With `memory_read_distance` > 0, the S sinks together take one BOS token's full mass (measured above).
CONVERSION_SINK_AT_DISTANCE_BIAS = 0.0
# With `memory_read_distance` > 0, each retained token is read at its full weight (per slot; measured above).
CONVERSION_RETAINED_AT_DISTANCE_BIAS = 0.0
SLOT_NOISE = 1e-2  # relative to the sink key scale; breaks the symmetry between identical slots


def load_source(source: str, gguf_file: str | None = None) -> PreTrainedModel:
    """Load a HF causal LM (a folder or hub id, with `gguf_file` inside it, or a path to a `.gguf` file) in
    float32 on CPU; a GGUF file is dequantised by transformers."""
    path = source
    if gguf_file is None and source.endswith(".gguf"):
        path, gguf_file = os.path.dirname(os.path.abspath(source)), os.path.basename(source)
    if gguf_file is not None and not os.path.isfile(os.path.join(path, gguf_file)):
        raise FileNotFoundError(f"GGUF file {os.path.join(path, gguf_file)!r} does not exist.")
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    config = AutoConfig.from_pretrained(path, **({"gguf_file": gguf_file} if gguf_file else {}))
    _check_architecture(config.model_type)
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def bct_config_from(source_config, memory_slots: int, window: int, chunk_size: int, **overrides) -> BCTConfig:
    """Build a BCTConfig with the source's shape and the given capacity."""
    _check_architecture(source_config.model_type)
    rope = dict(getattr(source_config, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"Source rope_type {rope_type!r} depends on the sequence length; BCT supports {list(SUPPORTED_ROPE_TYPES)}."
        )
    if rope_type in ("llama3", "yarn"):
        rope.setdefault("original_max_position_embeddings", source_config.max_position_embeddings)
    fields = {
        "vocab_size": source_config.vocab_size,
        "hidden_size": source_config.hidden_size,
        "intermediate_size": source_config.intermediate_size,
        "num_hidden_layers": source_config.num_hidden_layers,
        "num_attention_heads": source_config.num_attention_heads,
        "num_key_value_heads": source_config.num_key_value_heads,
        "head_dim": getattr(source_config, "head_dim", None)
        or source_config.hidden_size // source_config.num_attention_heads,
        "hidden_act": source_config.hidden_act,
        "rms_norm_eps": source_config.rms_norm_eps,
        "rope_parameters": rope,
        "tie_word_embeddings": bool(getattr(source_config, "tie_word_embeddings", False)),
        "attention_bias": bool(getattr(source_config, "attention_bias", False)),
        "qkv_bias": source_config.model_type == "qwen2",
        "qk_norm": source_config.model_type == "qwen3",
        "mlp_bias": bool(getattr(source_config, "mlp_bias", False)),
        "bos_token_id": source_config.bos_token_id,
        "eos_token_id": source_config.eos_token_id,
        "pad_token_id": source_config.pad_token_id,
        "initializer_range": getattr(source_config, "initializer_range", 0.02),
        "memory_slots": memory_slots,
        "window": window,
        "chunk_size": chunk_size,
        "memory_gate_bias_init": CONVERSION_GATE_BIAS,
        "source_architecture": source_config.model_type,
    }
    fields.update(overrides)
    return BCTConfig(**fields)


def convert_to_bct(
    source: str | PreTrainedModel,
    *,
    memory_slots: int,
    window: int,
    chunk_size: int,
    gguf_file: str | None = None,
    **overrides: Any,
) -> BCTForCausalLM:
    """Return a float32 `BCTForCausalLM` (eval mode, CPU) holding every weight of `source`.

    `source`: a loaded HF model, a folder, a hub id or a `.gguf` path (with
    `gguf_file`: a file inside the folder). `overrides` are
    further `BCTConfig` fields (e.g. `memory_write_rule`, `prefill_segment_len`)."""
    model = source if isinstance(source, PreTrainedModel) else load_source(source, gguf_file)
    model.eval()  # not .float(): transformers refuses it on GGUF-loaded (dequantised) models
    config = bct_config_from(model.config, memory_slots, window, chunk_size, **overrides)
    bct = BCTForCausalLM(config).eval()
    weights = {name: tensor.detach().float().cpu() for name, tensor in model.state_dict().items()}
    missing, unexpected = bct.load_state_dict(weights, strict=False)
    new_params = [name for name in missing if ".memory." not in name and name != "lm_head.weight"]
    if unexpected or new_params:
        raise ValueError(
            f"Weight mapping from {config.source_architecture} is not one-to-one: "
            f"unexpected {unexpected[:5]}, missing {new_params[:5]}."
        )
    if config.tie_word_embeddings:
        bct.tie_weights()
    elif "lm_head.weight" in missing:
        raise ValueError("The source model has an untied LM head but its weight is missing.")
    if memory_slots > 0:
        _init_memory_as_null_sink(bct, model)
    return bct


@torch.no_grad()
def _init_memory_as_null_sink(bct: BCTForCausalLM, source: PreTrainedModel) -> None:
    """Every slot of layer l: key = the source's (pre-RoPE) BOS key at layer l (+ noise), value = 0, read bias
    `CONVERSION_READ_BIAS - ln M`; under `retain` with S sink slots, the sinks' bias is
    `CONVERSION_READ_BIAS - ln S` and the retained slots' `CONVERSION_RETAIN_READ_BIAS - ln(M - S)`; read
    at a distance δ > 0, the sinks are the BOS token (`CONVERSION_SINK_AT_DISTANCE_BIAS - ln S`) and the
    retained slots read at `CONVERSION_RETAINED_AT_DISTANCE_BIAS`."""
    captured: dict[int, torch.Tensor] = {}  # layer -> the BOS key (1, 1, G·d) or, for "v"+layer, its value
    hooks = []
    for index, layer in enumerate(source.model.layers):
        attn = layer.self_attn
        key_module = getattr(attn, "k_norm", None) or attn.k_proj

        def keep(name):
            return lambda module, inputs, output: captured.__setitem__(name, output)

        hooks.append(key_module.register_forward_hook(keep(index)))
        hooks.append(attn.v_proj.register_forward_hook(keep(f"v{index}")))
    bos = source.config.bos_token_id if source.config.bos_token_id is not None else 0
    try:
        source(torch.tensor([[bos]], device=source.device), use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    generator = torch.Generator().manual_seed(0)
    for index, layer in enumerate(bct.model.layers):
        memory = layer.self_attn.memory
        kv_heads, slots, head_dim = memory.init_keys.shape
        sink = captured[index].float().cpu().reshape(kv_heads, 1, head_dim)  # (G, 1, d)
        noise = torch.randn(kv_heads, slots, head_dim, generator=generator) * sink.std() * SLOT_NOISE
        memory.init_keys.copy_(sink.expand(kv_heads, slots, head_dim) + noise)
        memory.init_values.zero_()
        sinks = bct.config.memory_sink_slots  # > 0 only under `retain` (BCTConfig refuses the rest)
        if sinks > 0 and bct.config.memory_read_distance > 0:
            # Read δ positions back, the BOS key is where the source saw its first token once it scrolled
            # away: the sinks are that token, key and value, at its full weight (S copies: -ln S each).
            bos_value = captured[f"v{index}"].float().cpu().reshape(kv_heads, 1, head_dim)
            memory.init_values[:, :sinks] = bos_value
            memory.read_bias[:, :sinks] = CONVERSION_SINK_AT_DISTANCE_BIAS - math.log(sinks)
            memory.read_bias[:, sinks:] = CONVERSION_RETAINED_AT_DISTANCE_BIAS
        elif sinks > 0:
            memory.read_bias[:, :sinks] = CONVERSION_READ_BIAS - math.log(sinks)
            memory.read_bias[:, sinks:] = CONVERSION_RETAIN_READ_BIAS - math.log(slots - sinks)
        else:
            # Also `retain` with no sink slot: its retained tokens start at the null sink's e^-6 / M each. The
            # bench pair reads far passkeys that way; opened (δ = 96, 0 per token) it read none (design §8.10).
            memory.read_bias.fill_(CONVERSION_READ_BIAS - math.log(slots))


def _check_architecture(model_type: str) -> None:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"Cannot convert a {model_type!r} checkpoint: supported architectures are "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}."
        )
