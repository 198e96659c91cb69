"""The contenders of every evaluation: how a model is loaded, which cache it runs with and how text is fed.

A `Method` is one model run one way. BCT exports run as `bct` (and, with `--writes-closed`, also as
`bct-writes-closed`: the same weights with every memory write closed, docs/design.md §7). Plain HF causal LMs
(Llama family) run as the baselines, each bounded one at a KV budget of `budget` entries per layer and KV head:

| key | cache | what a query sees |
|---|---|---|
| `full` | HF `DynamicCache` | every earlier token |
| `sliding` | HF `DynamicSlidingWindowLayer` (Mistral-style copy) | the last `budget` tokens |
| `sinks` | `SinkCache` (StreamingLLM) | 4 sink tokens + the last `budget - 4` tokens |
| `fastkv` | `FastKVCache` | `budget` prompt entries chosen by FastKV, then the answer (prompt -> answer tasks only) |

Every method feeds long inputs segment by segment through its own cache (`stream`), so a bounded method
really only sees what its cache holds. Batch size is 1 throughout.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.utils import logging as hf_logging

from eval.baselines.fastkv import FastKVCache, FastKVSettings, fastkv_prefill
from eval.baselines.sink_cache import DEFAULT_SINKS, SinkCache, forward_blocks
from eval.baselines.sliding import sliding_window_model, stored_kv_bytes
from modeling.cache import CACHE_ARG

BCT_METHODS = ("bct", "bct-writes-closed")
BASELINES = ("full", "sliding", "sinks", "fastkv")
BOUNDED = ("sliding", "sinks", "fastkv")
LABELS = {
    "bct": "BCT",
    "bct-writes-closed": "BCT, writes closed",
    "full": "Full attention",
    "sliding": "Sliding window",
    "sinks": "Sinks (StreamingLLM)",
    "fastkv": "FastKV",
}
SINK_BLOCK = 512  # tokens per block when a sink cache streams past its capacity


@dataclass
class LoadedModel:
    source: str  # folder or hub id, as given
    model: PreTrainedModel
    tokenizer: object | None

    @property
    def is_bct(self) -> bool:
        return self.model.config.model_type == "bct"


def load_model(source: str, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True) -> LoadedModel:
    """A BCT export or a plain HF causal LM (folder or hub id), in eval mode, with its tokenizer if it has one."""
    hf_logging.disable_progress_bar()
    local = os.path.isdir(os.path.expanduser(source))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=local).eval()
    tokenizer = None
    if with_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=local)
        except (OSError, ValueError):
            tokenizer = None
    return LoadedModel(source, model, tokenizer)


def close_writes(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of a BCT model whose memory never changes (`set_memory_writes(False)`); `model` is untouched."""
    if model.config.model_type != "bct":
        raise ValueError(f"Writes can be closed on BCT models only, not on {model.config.model_type!r}.")
    closed = copy.deepcopy(model)
    closed.set_memory_writes(False)
    return closed


@dataclass
class Method:
    """One model run one way. `budget`: KV entries per layer and KV head (None: grows with the context);
    `segment`: tokens per forward when streaming; `prefill_segment`: the same for a prompt (None: one call)."""

    key: str
    label: str
    source: str
    model: PreTrainedModel
    budget: int | None = None
    segment: int = 1024
    prefill_segment: int | None = None
    settings: dict = field(default_factory=dict)

    def new_cache(self):
        return DynamicCache(config=self.model.config)

    @torch.no_grad()
    def stream(
        self, input_ids: torch.Tensor, cache, logits_to_keep: int = 0, segment: int | None = None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """Feed `input_ids` (1, T) through the cache `segment` tokens at a time; yield (offset, logits)."""
        segment = segment or self.segment
        for offset in range(0, input_ids.shape[1], segment):
            out = self.model(
                input_ids[:, offset : offset + segment],
                **{CACHE_ARG: cache},
                use_cache=True,
                logits_to_keep=logits_to_keep,
            )
            yield offset, out.logits

    @torch.no_grad()
    def prefill(self, prompt: torch.Tensor, cache, reserve: int = 0) -> torch.Tensor:
        """Feed the whole prompt (1, N); return the logits of its last token (1, V). `reserve`: tokens that
        will follow the prompt (FastKV keeps the whole stream within its budget)."""
        segment = self.prefill_segment or prompt.shape[1]
        *_, (_, logits) = self.stream(prompt, cache, logits_to_keep=1, segment=segment)
        return logits[:, -1]

    def cache_bytes(self, cache) -> int:
        """Real bytes of the tensors the cache holds."""
        if hasattr(cache, "nbytes"):
            return cache.nbytes()
        return stored_kv_bytes(cache)

    def cache_entries(self, cache) -> int:
        """Key entries held per layer and KV head now (the largest layer)."""
        return max(_entries(layer) for layer in cache.layers)

    def describe(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "model": self.source,
            "kv_budget": self.budget,
            **self.settings,
        }


def _entries(layer) -> int:
    if getattr(layer, "mem_keys", None) is not None:  # BCT: memory slots + ring
        return layer.mem_keys.shape[-2] + layer.keys.shape[-2]
    return layer.keys.shape[-2] if layer.is_initialized else 0


class BCTMethod(Method):
    def new_cache(self):
        cache_class = sys.modules[type(self.model).__module__].BCTCache  # the export's own cache class
        return cache_class(self.model.config)


class SinkMethod(Method):
    def new_cache(self):
        return SinkCache(self.model, self.budget, self.settings.get("num_sinks", DEFAULT_SINKS))

    @torch.no_grad()
    def stream(self, input_ids, cache, logits_to_keep=0, segment=None):
        block = min(segment or self.segment, SINK_BLOCK)
        yield from forward_blocks(self.model, input_ids, cache, block, logits_to_keep)


class FastKVMethod(Method):
    def new_cache(self):
        return FastKVCache(self.model.config.num_hidden_layers)

    @torch.no_grad()
    def prefill(self, prompt, cache, reserve=0):
        settings = FastKVSettings(budget=self.budget - reserve, **self._fastkv_options())
        return fastkv_prefill(self.model, prompt, cache, settings)[:, -1]

    @torch.no_grad()
    def stream(self, input_ids, cache, logits_to_keep=0, segment=None):
        if cache.get_seq_length() == 0:
            raise ValueError(
                "FastKV compresses a prompt: call prefill() first (it suits prompt -> answer tasks only)."
            )
        yield from super().stream(input_ids, cache, logits_to_keep, segment)

    def _fastkv_options(self) -> dict:
        names = ("tsp_layer", "tsp_rate", "window", "kernel")
        return {name: self.settings[name] for name in names if name in self.settings}


def make_method(
    loaded: LoadedModel,
    key: str,
    budget: int | None,
    segment: int = 1024,
    sliding_segment: int = 4096,
    fastkv: dict | None = None,
) -> Method:
    """Build method `key` for a loaded model (see the module table). Bounded baselines need `budget`."""
    label, source = LABELS[key], loaded.source
    if key in BCT_METHODS:
        if not loaded.is_bct:
            raise ValueError(
                f"Method {key!r} needs a BCT model; {source} is a {loaded.model.config.model_type!r} model."
            )
        model = close_writes(loaded.model) if key == "bct-writes-closed" else loaded.model
        capacity = loaded.model.config.kv_capacity
        return BCTMethod(key, label, source, model, capacity, segment, None, {"kv_capacity": capacity})
    if loaded.is_bct:
        raise ValueError(f"Baseline {key!r} runs on plain HF causal LMs; {source} is a BCT model.")
    if key in BOUNDED and budget is None:
        raise ValueError(f"Baseline {key!r} needs a KV budget: pass --kv-budget or a BCT model to match.")
    if key == "full":
        return Method(key, label, source, loaded.model, None, segment, None)
    if key == "sliding":
        model = sliding_window_model(loaded.model, budget)
        return Method(key, label, source, model, budget, segment, sliding_segment, {"sliding_window": budget})
    if key == "sinks":
        settings = {"num_sinks": DEFAULT_SINKS}
        return SinkMethod(key, label, source, loaded.model, budget, segment, SINK_BLOCK, settings)
    if key == "fastkv":
        return FastKVMethod(key, label, source, loaded.model, budget, segment, None, dict(fastkv or {}))
    raise ValueError(f"Unknown method {key!r}: one of {BCT_METHODS + BASELINES}.")


def build_methods(
    models: list[LoadedModel],
    baselines: list[str],
    writes_closed: bool,
    budget: int | None,
    segment: int = 1024,
    fastkv: dict | None = None,
) -> list[Method]:
    """Every method of a run: each BCT model as `bct` (+ `bct-writes-closed`), each other model as each of
    `baselines`. The budget defaults to the first BCT model's `kv_capacity`."""
    if budget is None:
        budget = next((m.model.config.kv_capacity for m in models if m.is_bct), None)
    methods = []
    for loaded in models:
        keys = (["bct", "bct-writes-closed"] if writes_closed else ["bct"]) if loaded.is_bct else baselines
        for key in keys:
            if key in BOUNDED and budget is None:
                continue  # no budget to match: only unbounded methods for this run
            methods.append(make_method(loaded, key, budget, segment, fastkv=fastkv))
    _disambiguate(methods)
    return methods


def _disambiguate(methods: list[Method]) -> None:
    labels = [m.label for m in methods]
    for method in methods:
        if labels.count(method.label) > 1:
            method.label = f"{method.label} ({os.path.basename(os.path.normpath(method.source))})"
