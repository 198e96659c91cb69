"""The contenders of every evaluation: how a model is loaded, which cache it runs with and how text is fed.

A `Method` is one model run one way. BCT exports run as `bct` (and, with `--writes-closed`, also as
`bct-writes-closed`: the same weights with every memory write closed, docs/design.md §7). Plain HF causal LMs
(Llama family) run as the baselines; every bounded one is configured from one KV budget in bytes
(`kv_bytes.py`: `2 · L · heads · d · entries · dtype_bytes`), by default the BCT's own cache bytes:

| key | cache | holds after the prefill |
|---|---|---|
| `full` | HF `DynamicCache` | every token |
| `sliding` | HF `DynamicSlidingWindowLayer` (Mistral-style copy) | the last `E` tokens (window `E + 1`) |
| `sinks` | `SinkCache` (StreamingLLM) | 4 sink tokens + the last `E - 4` tokens |
| `snapkv` | `CompressedCache` | `E` prompt entries per KV head (or per query head), then the answer |
| `fastkv` | `CompressedCache` | `E` prompt entries per KV head chosen with TSP, then the answer |

`E` is the entries the byte budget buys for that method. SnapKV and FastKV compress a prompt for an answer
(prompt -> answer tasks only). Every method feeds long inputs segment by segment through its own cache
(`stream`), so a bounded method really only sees what its cache holds. Batch size is 1 throughout.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel
from transformers.utils import logging as hf_logging

from eval.contenders.baselines.fastkv import FastKVSettings, fastkv_cache, fastkv_prefill
from eval.contenders.baselines.prompt_cache import check_supported
from eval.contenders.baselines.sink_cache import DEFAULT_SINKS, SinkCache, forward_blocks
from eval.contenders.baselines.sliding import sliding_window_model
from eval.contenders.baselines.snapkv import SnapKVSettings, snapkv_cache, snapkv_model, snapkv_prefill
from eval.contenders.baselines.window_scores import REFERENCE, Scoring
from eval.contenders.kv_bytes import entries_for_bytes, held_bytes
from modeling.cache import CACHE_ARG

BCT_METHODS = ("bct", "bct-writes-closed")
BASELINES = ("full", "sliding", "sinks", "snapkv", "fastkv")
BOUNDED = ("sliding", "sinks", "snapkv", "fastkv")
PROMPT_COMPRESSORS = ("snapkv", "fastkv")
LABELS = {
    "bct": "BCT",
    "bct-writes-closed": "BCT, writes closed",
    "full": "Full attention",
    "sliding": "Sliding window",
    "sinks": "Sinks (StreamingLLM)",
    "snapkv": "SnapKV",
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


@dataclass(frozen=True)
class CompressorOptions:
    """SnapKV's and FastKV's settings (`--window`, `--kernel`, `--pooling`, `--fastkv-tsp-*`,
    `--snapkv-per-query-head` on the command line); defaults are the reference's (`REFERENCE`)."""

    scoring: Scoring = field(default_factory=Scoring)
    tsp_layer: int | None = None
    tsp_len: int = 2048
    tsp_rate: float | None = None
    per_query_head: bool = False


@dataclass
class Method:
    """One model run one way. `budget`: entries per layer and stored head (None: grows with the context);
    `kv_bytes`: the byte budget it was configured from; `segment`: tokens per forward when streaming;
    `prefill_segment`: the same for a prompt (None: one call); `settings`: recorded with every result."""

    key: str
    label: str
    source: str
    model: PreTrainedModel
    budget: int | None = None
    kv_bytes: int | None = None
    segment: int = 1024
    prefill_segment: int | None = None
    settings: dict = field(default_factory=dict)

    compresses_prompt = False  # SnapKV/FastKV: the prompt is compressed for the answer that follows it

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
        will follow the prompt (a prompt compressor keeps the whole stream within its budget)."""
        segment = self.prefill_segment or prompt.shape[1]
        *_, (_, logits) = self.stream(prompt, cache, logits_to_keep=1, segment=segment)
        return logits[:, -1]

    def cache_bytes(self, cache) -> int:
        """Real bytes of the tensors the cache holds."""
        return held_bytes(cache)

    def cache_entries(self, cache) -> int:
        """Key entries held per layer and stored head now (the largest layer)."""
        return max(_entries(layer) for layer in cache.layers)

    def describe(self) -> dict:
        return {
            "key": self.key,
            "label": self.label,
            "model": self.source,
            "kv_bytes": self.kv_bytes,
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


@dataclass
class PromptCompressorMethod(Method):
    """SnapKV or FastKV: `prefill` compresses the prompt to `budget - reserve` entries; `stream` then decodes
    through the growing compressed cache."""

    options: CompressorOptions = field(default_factory=CompressorOptions)
    compresses_prompt = True

    @torch.no_grad()
    def stream(self, input_ids, cache, logits_to_keep=0, segment=None):
        if cache.get_seq_length() == 0:
            raise ValueError(
                f"{self.label} compresses a prompt: call prefill() first (it suits prompt -> answer tasks only)."
            )
        # HF builds one attention mask, sized by layer 0, for every layer: where layers hold unequal counts
        # (FastKV whose TSP keeps fewer tokens than the budget) feed one token at a time, which needs no mask.
        if len({layer.keys.shape[-2] for layer in cache.layers}) > 1:
            segment = 1
        yield from super().stream(input_ids, cache, logits_to_keep, segment)


class SnapKVMethod(PromptCompressorMethod):
    def new_cache(self):
        return snapkv_cache(self.model, self.options.per_query_head)

    @torch.no_grad()
    def prefill(self, prompt, cache, reserve=0):
        settings = SnapKVSettings(
            budget=self.budget - reserve,
            per_query_head=self.options.per_query_head,
            scoring=self.options.scoring,
        )
        return snapkv_prefill(self.model, prompt, cache, settings)[:, -1]


class FastKVMethod(PromptCompressorMethod):
    def new_cache(self):
        return fastkv_cache(self.model)

    @torch.no_grad()
    def prefill(self, prompt, cache, reserve=0):
        settings = FastKVSettings(
            budget=self.budget - reserve,
            tsp_layer=self.options.tsp_layer,
            tsp_len=self.options.tsp_len,
            tsp_rate=self.options.tsp_rate,
            scoring=self.options.scoring,
        )
        return fastkv_prefill(self.model, prompt, cache, settings)[:, -1]


def _compressor(
    cls: type[PromptCompressorMethod],
    loaded: LoadedModel,
    key: str,
    kv_bytes: int,
    options: CompressorOptions,
) -> PromptCompressorMethod:
    model = loaded.model
    per_query_head = key == "snapkv" and options.per_query_head
    check_supported(model, LABELS[key])
    heads = model.config.num_attention_heads if per_query_head else model.config.num_key_value_heads
    budget = entries_for_bytes(kv_bytes, model.config, model.dtype, heads)
    if budget <= options.scoring.window:
        raise ValueError(
            f"{LABELS[key]}: {kv_bytes} bytes buy {budget} entries per stored head, not more than the "
            f"observation window = {options.scoring.window}."
        )
    settings = {
        "reference": REFERENCE,
        "window": options.scoring.window,
        "kernel": options.scoring.kernel,
        "pooling": options.scoring.pooling,
    }
    if key == "fastkv":
        fastkv = FastKVSettings(
            budget=budget,
            tsp_layer=options.tsp_layer,
            tsp_len=options.tsp_len,
            tsp_rate=options.tsp_rate,
            scoring=options.scoring,
        )  # validated here, before any prompt
        settings["tsp_layer"] = fastkv.resolve_tsp_layer(model.config.num_hidden_layers)
        settings.update(tsp_len=None if options.tsp_rate else options.tsp_len, tsp_rate=options.tsp_rate)
    else:
        settings["per_query_head"] = per_query_head
        settings["stored_heads"] = heads
        model = snapkv_model(model, per_query_head)
    return cls(
        key=key,
        label=LABELS[key] + (", per query head" if per_query_head else ""),
        source=loaded.source,
        model=model,
        budget=budget,
        kv_bytes=kv_bytes,
        settings=settings,
        options=options,
    )


def make_method(
    loaded: LoadedModel,
    key: str,
    kv_bytes: int | None,
    segment: int = 1024,
    sliding_segment: int = 4096,
    options: CompressorOptions | None = None,
) -> Method:
    """Build method `key` for a loaded model (see the module table). Bounded baselines need `kv_bytes`."""
    label, source, model = LABELS[key], loaded.source, loaded.model
    if key in BCT_METHODS:
        if not loaded.is_bct:
            raise ValueError(
                f"Method {key!r} needs a BCT model; {source} is a {model.config.model_type!r} model."
            )
        capacity = model.config.kv_capacity
        return BCTMethod(
            key=key,
            label=label,
            source=source,
            model=close_writes(model) if key == "bct-writes-closed" else model,
            budget=capacity,
            kv_bytes=model.config.kv_cache_bytes(1, model.dtype),
            segment=segment,
            settings={"kv_capacity": capacity},
        )
    if loaded.is_bct:
        raise ValueError(f"Baseline {key!r} runs on plain HF causal LMs; {source} is a BCT model.")
    if key == "full":
        return Method(key=key, label=label, source=source, model=model, segment=segment)
    if key not in BOUNDED:
        raise ValueError(f"Unknown method {key!r}: one of {BCT_METHODS + BASELINES}.")
    if kv_bytes is None:
        raise ValueError(f"Baseline {key!r} needs a KV budget: pass --kv-bytes or a BCT model to match.")
    if key in PROMPT_COMPRESSORS:
        cls = SnapKVMethod if key == "snapkv" else FastKVMethod
        return _compressor(cls, loaded, key, kv_bytes, options or CompressorOptions())
    entries = entries_for_bytes(kv_bytes, model.config, model.dtype)
    common = dict(key=key, label=label, source=source, budget=entries, kv_bytes=kv_bytes, segment=segment)
    if key == "sliding":  # stores `window - 1` between steps: hold exactly `entries`
        return Method(
            **common,
            model=sliding_window_model(model, entries + 1),
            prefill_segment=sliding_segment,
            settings={"sliding_window": entries + 1},
        )
    return SinkMethod(
        **common, model=model, prefill_segment=SINK_BLOCK, settings={"num_sinks": DEFAULT_SINKS}
    )


def default_kv_bytes(models: list[LoadedModel]) -> int | None:
    """The first BCT model's cache bytes (at its dtype), the budget every bounded method gets by default."""
    bct = next((m.model for m in models if m.is_bct), None)
    return None if bct is None else bct.config.kv_cache_bytes(1, bct.dtype)


def build_methods(
    models: list[LoadedModel],
    baselines: list[str],
    writes_closed: bool,
    kv_bytes: int | None,
    segment: int = 1024,
    options: CompressorOptions | None = None,
) -> list[Method]:
    """Every method of a run: each BCT model as `bct` (+ `bct-writes-closed`), each other model as each of
    `baselines`. The byte budget defaults to the first BCT model's cache bytes."""
    kv_bytes = default_kv_bytes(models) if kv_bytes is None else kv_bytes
    methods = []
    for loaded in models:
        keys = (["bct", "bct-writes-closed"] if writes_closed else ["bct"]) if loaded.is_bct else baselines
        for key in keys:
            if key in BOUNDED and kv_bytes is None:
                continue  # no budget to match: only unbounded methods for this run
            methods.append(make_method(loaded, key, kv_bytes, segment, options=options))
    _disambiguate(methods)
    return methods


def _disambiguate(methods: list[Method]) -> None:
    """Methods that share a label are told apart by the shortest tail of their source paths that differs
    (`runs/a/export` and `runs/b/export` -> "BCT (a/export)", "BCT (b/export)")."""
    labels = [m.label for m in methods]
    for method, label in zip(methods, labels):
        same = [Path(os.path.normpath(m.source)).parts for m, other in zip(methods, labels) if other == label]
        if len(same) == 1:
            continue
        mine = Path(os.path.normpath(method.source)).parts
        depth = 1
        while depth < len(mine) and sum(p[-depth:] == mine[-depth:] for p in same) > 1:
            depth += 1
        method.label = f"{label} ({'/'.join(mine[-depth:])})"
