"""BCT model: `BCTModel` and `BCTForCausalLM`, Llama-shaped (Attention → DecoderLayer → Model → ForCausalLM).

Positions come from the cache, not from `position_ids`: each row's chunk phase is counted from its own
first real token and RoPE is applied relative to the oldest visible window token (see `layout.py`), so
`position_ids` is accepted for API compatibility and ignored. Long cached inputs run segment by segment
(`config.prefill_segment_len`) through all layers, so prefill activation memory is bounded as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm

from .attention import BCTAttention
from .cache import CACHE_ARG, CACHE_ARG_NAMES, BCTCache, take_cache
from .configuration_bct import BCTConfig
from .layout import ChunkPlan, StepPlan, plan_chunks, plan_step, real_token_mask
from .memory import BCTMemory, MemoryWrite
from .rotary import BCTRotary


@dataclass
class BCTModelOutput(BaseModelOutputWithPast):
    """`memory_signals`: layer means of the share of attention on memory slots and of the write gate."""

    memory_signals: dict[str, torch.Tensor] | None = None


@dataclass
class BCTCausalLMOutput(CausalLMOutputWithPast):
    memory_signals: dict[str, torch.Tensor] | None = None


class BCTDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: BCTConfig, layer_idx: int):
        super().__init__()
        self.self_attn = BCTAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, plan, cache=None, want_signals=False):
        cache_layer = None if cache is None else cache.layers[self.self_attn.layer_idx]
        attn_out, signals = self.self_attn(
            self.input_layernorm(hidden_states), plan, cache_layer, want_signals
        )
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, signals


class BCTPreTrainedModel(PreTrainedModel):
    config_class = BCTConfig
    config: BCTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BCTDecoderLayer"]
    _skip_keys_device_placement = list(CACHE_ARG_NAMES)
    # The cache is stateful: memory writes cannot be undone, so assisted decoding is refused by generate().
    _is_stateful = True

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, BCTMemory):
            # Slots start at the scale of projected keys/values: RMS-normed input (≈1 per dim) times a
            # projection row of std `initializer_range` gives std ≈ initializer_range·√hidden per entry.
            slot_std = std * self.config.hidden_size**0.5
            init.normal_(module.init_keys, mean=0.0, std=slot_std)
            init.normal_(module.init_values, mean=0.0, std=slot_std)
            init.zeros_(module.read_bias)
        elif isinstance(module, MemoryWrite):
            module.init_weights(self.config)

    def set_memory_writes(self, enabled: bool) -> None:
        """Open or close every layer's memory writes. Closed, the memory keeps its initial slots: the same
        weights with no memory of what left the window (the "writes closed" control)."""
        for module in self.modules():
            if isinstance(module, BCTMemory):
                module.writes_open = enabled

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not build a DynamicCache: the model creates its own BCTCache


class BCTModel(BCTPreTrainedModel):
    def __init__(self, config: BCTConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(BCTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = BCTRotary(config)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: BCTCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_memory_signals: bool = False,
        keep_last: int = 0,
        past_key_values: BCTCache | None = None,
        **kwargs,
    ) -> BCTModelOutput:
        """`keep_last > 0` keeps only the last hidden states of the call (generation of very long prompts).
        The cache comes as `cache` (transformers >= 5.24) or `past_key_values` (earlier releases)."""
        cache = take_cache(cache, past_key_values, kwargs)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        check_inputs(input_ids, inputs_embeds, attention_mask, cache, self.config.vocab_size, self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = BCTCache(self.config)

        batch, new, _ = inputs_embeds.shape
        real = real_token_mask(attention_mask, batch, new, inputs_embeds.device, cache is not None)
        segment = self.config.prefill_segment_len if cache is not None else new
        hidden_parts, signal_parts = [], []
        for start in range(0, new, segment):
            stop = min(new, start + segment)
            hidden, signals = self._forward_segment(
                inputs_embeds[:, start:stop], real[:, start:stop], cache, output_memory_signals
            )
            if keep_last <= 0 or stop > new - keep_last:
                hidden_parts.append(hidden)
            signal_parts.append(signals)
        hidden = torch.cat(hidden_parts, dim=1) if len(hidden_parts) > 1 else hidden_parts[0]
        if keep_last > 0:
            hidden = hidden[:, -keep_last:]
        return BCTModelOutput(
            last_hidden_state=self.norm(hidden),
            memory_signals=_mean_signals(signal_parts) if output_memory_signals else None,
            **{CACHE_ARG: cache if use_cache else None},
        )

    def _forward_segment(self, hidden, real, cache: BCTCache | None, want_signals: bool):
        plan = self._plan(hidden, real, cache)
        layer_signals = []
        for layer in self.layers:
            hidden, signals = layer(hidden, plan, cache=cache, want_signals=want_signals)
            layer_signals.append(signals)
        if cache is not None:
            cache.advance(hidden.shape[1], plan.seen, plan.ring_len)
        return hidden, _mean_signals(layer_signals) if want_signals else None

    def _plan(self, hidden, real, cache: BCTCache | None) -> ChunkPlan | StepPlan:
        cfg, device, dtype = self.config, hidden.device, hidden.dtype
        batch = hidden.shape[0]
        if cache is None:
            zeros = torch.zeros(batch, dtype=torch.long, device=device)
            seen, ring_len = zeros, zeros
        else:
            seen, ring_len = cache.counters(batch, device)
        if cache is not None and cache.seen is not None and hidden.shape[1] == 1 and bool(real.all()):
            cos, sin = self.rotary.table(cfg.window + cfg.chunk_size, device, dtype)
            return plan_step(seen, ring_len, cfg.memory_slots, cfg.window, cfg.chunk_size, cos, sin)
        return plan_chunks(
            seen,
            ring_len,
            real,
            cfg.window,
            cfg.chunk_size,
            cached=cache is not None,
            rotary_table=lambda n: self.rotary.table(n, device, dtype),
        )


def check_inputs(
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cache: BCTCache | None,
    vocab_size: int,
    training: bool,
) -> None:
    """ValueError for inputs the model would otherwise fail on deep inside (an IndexError from the
    embedding) or silently misread (a mask of another shape). Shape checks are free; the token-id range
    needs a device sync, so it runs only outside training, and not on one-token decode steps, whose ids
    `generate()` sampled itself."""
    batch, new = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
    if new == 0:
        raise ValueError(
            "input_ids has 0 tokens (shape (batch, 0)): an empty prompt gives nothing to continue; "
            "pass at least one token, e.g. the tokenizer's bos_token_id."
        )
    if attention_mask is not None and attention_mask.dim() == 2:
        # A fresh call sees exactly the new columns; a call continuing a cache sees past + new columns.
        continuing = cache is not None and cache.seen is not None
        columns = attention_mask.shape[1]
        if attention_mask.shape[0] != batch or columns < new or (columns != new and not continuing):
            expected = f"(batch, >= {new})" if continuing else f"({batch}, {new})"
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input has {batch} rows of "
                f"{new} tokens: expected shape {expected}, one column per token."
            )
    check_ids = input_ids is not None and not training and (new > 1 or cache is None or cache.seen is None)
    if check_ids and not torch.compiler.is_compiling():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(
                f"input_ids holds token id {bad}: allowed ids are 0 .. {vocab_size - 1} (config.vocab_size = "
                f"{vocab_size}); was the prompt encoded with another tokenizer?"
            )


def _mean_signals(parts: list[dict | None]) -> dict[str, torch.Tensor]:
    """Average each signal over the parts that produced it (a layer that wrote nothing has no gate)."""
    merged: dict[str, list[torch.Tensor]] = {}
    for part in parts:
        for key, value in (part or {}).items():
            if value is not None:
                merged.setdefault(key, []).append(value.detach().float())
    return {key: torch.stack(values).mean() for key, values in merged.items()}


# generate() arguments that draft tokens and roll the cache back when they are rejected.
ROLLBACK_DECODING = ("assistant_model", "prompt_lookup_num_tokens", "assistant_early_exit")


def _requested(name: str, kwargs: dict, generation_config: object) -> bool:
    """Whether generate() was asked for `name`, as a keyword or in the generation config passed to it."""
    return kwargs.get(name) is not None or getattr(generation_config, name, None) is not None


class BCTForCausalLM(BCTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: BCTConfig):
        super().__init__(config)
        self.model = BCTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """`GenerationMixin.generate`, after two checks of its own. Rollback-based decoding (assisted, prompt
        lookup, early exit) is refused here rather than left to transformers, which dropped its own check for
        stateful models in 5.25. generate() drops an all-ones attention_mask before the forward sees it, so a
        mask of the wrong shape must be refused here too (the forward checks the prompt and its token ids)."""
        config = kwargs.get("generation_config", args[0] if args else None)
        rollback = [name for name in ROLLBACK_DECODING if _requested(name, kwargs, config)]
        if rollback:
            raise ValueError(
                f"{rollback[0]} is not allowed: a BCT cache is stateful (tokens written into the memory "
                "cannot be taken back), so decoding that drafts and rolls back tokens is not supported; "
                "use greedy, sampling or beam search."
            )
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        mask = kwargs.get("attention_mask")
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and mask is not None and mask.shape != ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(mask.shape)} but input_ids has shape {tuple(ids.shape)}: "
                "expected the same shape, one mask entry per prompt token."
            )
        return super().generate(inputs, *args, **kwargs)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: BCTCache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_memory_signals: bool = False,
        past_key_values: BCTCache | None = None,
        **kwargs,
    ) -> BCTCausalLMOutput:
        cache = take_cache(cache, past_key_values, kwargs)
        keep_last = logits_to_keep if isinstance(logits_to_keep, int) and labels is None else 0
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_memory_signals=output_memory_signals,
            keep_last=keep_last,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int):
            hidden = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return BCTCausalLMOutput(
            loss=loss,
            logits=logits,
            memory_signals=outputs.memory_signals,
            **{CACHE_ARG: getattr(outputs, CACHE_ARG)},
        )
