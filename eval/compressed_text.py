"""Loss of every token of a text under a prompt compressor (SnapKV, FastKV): compress anew before each run.

A prompt compressor keeps `E` entries of a prompt for the answer that follows; it does not stream. On text it
is scored the way its answers are (`eval/scoring.py`): the text is cut into runs of `every` target positions
(`[1, every)`, `[every, 2 every)`, ...). Before each run the whole text before it is compressed anew
(`method.prefill`, the method's own settings, budget `E` less the run's tokens that enter the cache), then
the run is decoded against that compressed cache with teacher forcing (`method.stream`: one forward of the
run on top of the cache, which is what decoding it token by token computes; token by token where the layers
hold unequal counts, which one HF mask cannot serve). The prefill's last logits
predict the run's first token; each fed token predicts the next. So the cache never holds more than `E`
entries while a run is scored, and every token is predicted from a compression of everything before it
that is at most `every - 1` tokens old.

Cost: one prefill per run, `ceil(T / every)` prefills of up to `T` tokens for a text of `T` tokens (about
`T² / (2 · every)` prefill tokens), against one pass for a streaming method.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from eval.contenders.kv_bytes import PeakBytes
from eval.contenders.methods import Method

PROTOCOL = (
    "SnapKV and FastKV on text: before each run of `compress_every` target tokens the whole text so far is "
    "compressed anew (the method's prefill, budget E less the run's own tokens), then the run is decoded "
    "against that cache with teacher forcing; one prefill per run."
)


@dataclass
class CompressionCost:
    """What scoring text with a compressor cost, over every text scored: prefills run, tokens prefilled,
    seconds, and the most KV bytes held after a prefill, after decoding a run and during any prefill."""

    prefills: int = 0
    prefill_tokens: int = 0
    seconds: float = 0.0
    kv_bytes_after_prefill: int = 0
    kv_bytes_after_decode: int = 0
    kv_bytes_peak_prefill: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def check_run_length(method: Method, every: int) -> None:
    """A run must leave the compressor more than its observation window: `every < E - window`."""
    window = method.options.scoring.window
    if not 0 < every < method.budget - window:
        raise ValueError(
            f"{method.label}: --compress-every = {every} must be at least 1 and smaller than the "
            f"{method.budget} entries the byte budget buys less the observation window = {window}: "
            f"at most {method.budget - window - 1}."
        )


def text_runs(length: int, every: int) -> list[tuple[int, int]]:
    """Target positions [first, end) scored against one compression; position 0 has no target."""
    runs = [(max(start, 1), min(start + every, length)) for start in range(0, length, every)]
    return [(first, end) for first, end in runs if first < end]


@torch.no_grad()
def compressed_losses(
    method: Method, input_ids: torch.Tensor, every: int, cost: CompressionCost | None = None
) -> torch.Tensor:
    """input_ids (T,) -> (T,) float64 loss of each token given the earlier ones (position 0: NaN), each run
    of `every` tokens decoded against a fresh compression of the text before it."""
    check_run_length(method, every)
    ids = input_ids[None]  # (1, T)
    losses = torch.full((len(input_ids),), math.nan, dtype=torch.float64)
    for first, end in text_runs(len(input_ids), every):
        fed = ids[:, first : end - 1]  # (1, r - 1): enter the cache; the run's last token predicts nothing
        start = time.perf_counter()
        cache = method.new_cache()
        with PeakBytes(cache) as peak:
            logits = [method.prefill(ids[:, :first], cache, reserve=fed.shape[1])[:, None]]  # (1, 1, V)
        after_prefill = method.cache_bytes(cache)
        if fed.shape[1]:  # one forward, or one token at a time where FastKV's layers are uneven (stream)
            logits += [step for _, step in method.stream(fed, cache)]
        logits = torch.cat(logits, dim=1)[0]  # (r, V): logits[i] predicts position first + i
        losses[first:end] = F.cross_entropy(logits.float(), input_ids[first:end], reduction="none").double()
        if cost is not None:
            cost.seconds += time.perf_counter() - start
            cost.prefills += 1
            cost.prefill_tokens += first
            cost.kv_bytes_after_prefill = max(cost.kv_bytes_after_prefill, after_prefill)
            cost.kv_bytes_after_decode = max(cost.kv_bytes_after_decode, method.cache_bytes(cache))
            cost.kv_bytes_peak_prefill = max(cost.kv_bytes_peak_prefill, peak.bytes)
    return losses
