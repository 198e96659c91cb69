"""SnapKV and FastKV on text (`eval/compressed_text.py`): exact when the budget covers the text, each run scored
against exactly the compression of the text before it, and never more KV bytes than the budget while scoring."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.models.llama.modeling_llama import repeat_kv

from eval.compressed_text import CompressionCost, check_run_length, compressed_losses, text_runs
from eval.contenders.baselines.window_scores import Scoring
from eval.contenders.kv_bytes import PeakBytes, entry_bytes
from eval.contenders.methods import CompressorOptions, LoadedModel, make_method
from eval.tasks import perplexity
from modeling.cache import CACHE_ARG

from .conftest import tiny_llama

T, EVERY, WINDOW, SMALL = 80, 16, 4, 28  # text, run, observation window, entries of the small budget
SCORING = Scoring(window=WINDOW, kernel=3)
VARIANTS = {  # id -> (method key, options, reference built from the plain model's KV (True) or the cache's)
    "snapkv": ("snapkv", CompressorOptions(scoring=SCORING), True),
    "fastkv": ("fastkv", CompressorOptions(scoring=SCORING, tsp_layer=1), True),  # tsp_len 2048: no TSP
    "fastkv-tsp": ("fastkv", CompressorOptions(scoring=SCORING, tsp_layer=0, tsp_len=12), False),
    "snapkv-per-query-head": (
        "snapkv",
        CompressorOptions(scoring=Scoring(window=WINDOW, kernel=3, pooling="avg"), per_query_head=True),
        False,
    ),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of tiny forwards: one thread is far faster than two contending for a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaded(tokenizer):
    model = tiny_llama(len(tokenizer), seed=5, layers=2)  # 4 query heads on 2 KV heads
    assert model.config._attn_implementation == "sdpa"
    return LoadedModel("tiny-gqa-llama", model, tokenizer)


@pytest.fixture(scope="module")
def text():
    return torch.randint(0, 300, (T,), generator=torch.Generator().manual_seed(11))


def method_at(loaded, variant: str, entries: int):
    key, options, _ = VARIANTS[variant]
    config = loaded.model.config
    heads = config.num_attention_heads if options.per_query_head else config.num_key_value_heads
    return make_method(loaded, key, entry_bytes(config, torch.float32, heads) * entries, options=options)


@torch.no_grad()
def plain_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """(T - 1,) loss of tokens 1 .. T - 1 from one plain forward over the whole text."""
    return F.cross_entropy(model(ids[None]).logits[0, :-1], ids[1:], reduction="none").double()


@pytest.mark.parametrize("variant", ["snapkv", "fastkv", "snapkv-per-query-head"])
def test_a_budget_covering_the_text_scores_like_the_full_model(loaded, text, variant):
    method = method_at(loaded, variant, T)
    ours = compressed_losses(method, text, EVERY)
    assert math.isnan(ours[0])
    torch.testing.assert_close(ours[1:], plain_losses(loaded.model, text), atol=1e-4, rtol=0)


class RepeatingLayer(DynamicLayer):
    """A plain layer that stores keys and values arriving from the model (B, G, n, d) repeated to every query
    head (B, H, n, d), as per-query-head SnapKV stores them; `repeat` is set once the kept entries are in."""

    repeat = 1

    def update(self, key_states, value_states, *args, **kwargs):
        return super().update(repeat_kv(key_states, self.repeat), repeat_kv(value_states, self.repeat))


@torch.no_grad()
def reference_run(
    method, model, ids: torch.Tensor, first: int, end: int, from_plain_model: bool
) -> torch.Tensor:
    """Losses (end - first,) of one run computed plainly: the compressor's prefill of ids[:first] (budget E
    less the run's fed tokens) says which entries it kept; a plain model is given exactly those entries at
    their original positions, taken from the plain model's own prefix KV (`from_plain_model`) or from the
    compressed cache as it is, and decodes the fed tokens on top, one at a time. The run's first token is predicted by the
    prefill's own last logits (the plain model's, unless FastKV's TSP shortened the later layers' input)."""
    fed = ids[:, first : end - 1]
    compressed = method.new_cache()
    first_logits = method.prefill(ids[:, :first], compressed, reserve=fed.shape[1])[:, None]  # (1, 1, V)
    full = DynamicCache(config=model.config)
    plain_last = model(ids[:, :first], **{CACHE_ARG: full}, use_cache=True).logits[:, -1:]
    if from_plain_model:  # without TSP the prefix's last token sees the whole prefix
        torch.testing.assert_close(first_logits, plain_last, atol=1e-5, rtol=1e-4)
    kept = Cache(layers=[RepeatingLayer() for _ in compressed.layers])
    for index, layer in enumerate(compressed.layers):
        stored = layer.keys.shape[-2]  # at most E less the run; fewer after TSP shortens the input
        assert stored <= method.budget - fed.shape[1] and int(layer.positions.max()) < first
        assert stored == min(first, method.budget - fed.shape[1]) or not from_plain_model
        if from_plain_model:
            gather = layer.positions[..., None].expand(-1, -1, -1, layer.keys.shape[-1])
            keys, values = (
                full.layers[index].keys.gather(2, gather),
                full.layers[index].values.gather(2, gather),
            )
        else:
            keys, values = layer.keys.clone(), layer.values.clone()
        kept.update(keys, values, index)
        kept.layers[index].repeat = layer.repeat  # query heads per KV head where stored per query head
    runner = model if from_plain_model else method.model  # the per-query-head view takes H stored heads
    logits = [first_logits]
    for position in range(first, end - 1):  # token by token: one query sees every entry, no mask
        step = runner(
            ids[:, position : position + 1], **{CACHE_ARG: kept}, position_ids=torch.tensor([[position]])
        )
        logits.append(step.logits)
    logits = torch.cat(logits, dim=1)[0]  # (end - first, V)
    return F.cross_entropy(logits, ids[0, first:end], reduction="none").double()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_run_is_scored_against_the_compression_of_the_text_before_it(loaded, text, variant):
    method = method_at(loaded, variant, SMALL)
    ours = compressed_losses(method, text, EVERY)
    runs = text_runs(T, EVERY)
    assert runs == [(1, 16), (16, 32), (32, 48), (48, 64), (64, 80)]
    for first, end in runs:
        expected = reference_run(method, loaded.model, text[None], first, end, VARIANTS[variant][2])
        torch.testing.assert_close(ours[first:end], expected, atol=1e-4, rtol=0)
    assert (ours[1:] - plain_losses(loaded.model, text)).abs().max() > 1e-3  # something was dropped


@pytest.mark.parametrize("variant", ["snapkv", "snapkv-per-query-head"])
def test_one_forward_per_run_equals_decoding_token_by_token(loaded, text, variant):
    method = method_at(loaded, variant, SMALL)
    together = compressed_losses(method, text, EVERY)
    method.segment = 1
    torch.testing.assert_close(compressed_losses(method, text, EVERY)[1:], together[1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_cache_never_holds_more_than_the_budget_while_scoring(loaded, text, variant):
    method = method_at(loaded, variant, SMALL)
    decoding_peaks = []
    stream = method.stream

    def watched(input_ids, cache, *args, **kwargs):  # the most bytes after any layer's update, per run
        with PeakBytes(cache) as peak:
            yield from stream(input_ids, cache, *args, **kwargs)
        decoding_peaks.append(peak.bytes)

    method.stream = watched
    cost = CompressionCost()
    compressed_losses(method, text, EVERY, cost)
    assert len(decoding_peaks) == len(text_runs(T, EVERY)) == cost.prefills
    assert max(decoding_peaks) == cost.kv_bytes_after_decode <= method.kv_bytes
    assert cost.kv_bytes_after_prefill <= method.kv_bytes - (EVERY - 1) * method.kv_bytes // SMALL
    if variant != "fastkv-tsp":  # every layer fills its budget (TSP keeps 12 tokens in layer 1, not 13)
        assert cost.kv_bytes_after_decode == method.kv_bytes
        assert cost.kv_bytes_after_prefill == method.kv_bytes - (EVERY - 1) * method.kv_bytes // SMALL
    assert cost.kv_bytes_peak_prefill > method.kv_bytes  # a whole layer's prefix before it is compressed
    assert cost.prefill_tokens == sum(first for first, _ in text_runs(T, EVERY))


def test_runs_must_leave_more_than_the_observation_window(loaded):
    method = method_at(loaded, "snapkv", SMALL)
    check_run_length(method, SMALL - WINDOW - 1)
    for every in (0, SMALL - WINDOW):
        with pytest.raises(ValueError, match=rf"--compress-every = {every} .* at most {SMALL - WINDOW - 1}"):
            check_run_length(method, every)


def test_perplexity_buckets_hold_the_compressors_next_to_streaming_methods(loaded, text):
    methods = [make_method(loaded, "full", None), method_at(loaded, "fastkv", SMALL)]
    windows = [text.numpy(), text.flip(0).numpy()]
    edges = [0, 40, 80]
    costs = {}
    rows, summary = perplexity.evaluate(methods, windows, edges, EVERY, costs)
    assert [row["label"] for row in rows] == ["Full attention"] * 2 + ["FastKV"] * 2
    assert set(costs) == {"FastKV"} and costs["FastKV"].prefills == 2 * len(text_runs(T, EVERY))
    losses = [compressed_losses(methods[1], torch.from_numpy(w), EVERY) for w in windows]
    for row, (start, end) in zip(rows[2:], itertools.pairwise(edges)):
        expected = torch.cat([loss[max(start, 1) : end] for loss in losses])
        assert row["tokens"] == len(expected)
        assert row["loss"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert all(math.isfinite(mean) for mean in summary.values())
