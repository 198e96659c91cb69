"""SnapKV and FastKV as methods: exact when nothing is dropped, exact on what they keep, the whole stream within
the byte budget, and refused where they would be wrong."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from eval.contenders.baselines.window_scores import Scoring
from eval.contenders.kv_bytes import entry_bytes
from eval.contenders.methods import CompressorOptions, LoadedModel, make_method
from eval.scoring import predict_answers
from modeling.cache import CACHE_ARG

from .conftest import tiny_llama

N, PROMPT, WINDOW = 48, 40, 4
VARIANTS = {  # id -> (method key, options)
    "snapkv": ("snapkv", CompressorOptions(scoring=Scoring(window=WINDOW, kernel=3))),
    "snapkv-per-query-head": (
        "snapkv",
        CompressorOptions(scoring=Scoring(window=WINDOW, kernel=3, pooling="avg"), per_query_head=True),
    ),
    "fastkv": (
        "fastkv",
        CompressorOptions(scoring=Scoring(window=WINDOW, kernel=3), tsp_layer=1, tsp_len=24),
    ),
    "fastkv-last-layer-tsp": (
        "fastkv",
        CompressorOptions(scoring=Scoring(window=WINDOW, kernel=3, pooling="avg"), tsp_layer=3, tsp_rate=0.5),
    ),
}


@pytest.fixture(scope="module")
def loaded(tokenizer):
    return LoadedModel("tiny-gqa-llama", tiny_llama(len(tokenizer), seed=7, layers=4), tokenizer)


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 300, (1, N), generator=torch.Generator().manual_seed(3))


def method_at(loaded, variant: str, entries: int):
    key, options = VARIANTS[variant]
    config = loaded.model.config
    heads = config.num_attention_heads if options.per_query_head else config.num_key_value_heads
    return make_method(loaded, key, entry_bytes(config, torch.float32, heads) * entries, options=options)


@torch.no_grad()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_budget_covering_the_prompt_changes_nothing(loaded, ids, variant):
    method = method_at(loaded, variant, N + 8)
    if VARIANTS[variant][0] == "fastkv":
        method.options = CompressorOptions(scoring=method.options.scoring, tsp_layer=1, tsp_len=N)
    cache = method.new_cache()
    last = method.prefill(ids[:, :PROMPT], cache)
    rest = torch.cat([logits for _, logits in method.stream(ids[:, PROMPT:], cache)], dim=1)
    full = loaded.model(ids).logits
    torch.testing.assert_close(last, full[:, PROMPT - 1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(rest, full[:, PROMPT:], atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@torch.no_grad()
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_on_cuda_under_the_flash_kernel_a_covering_budget_changes_nothing(loaded, ids, variant):
    """The prefill passes no mask and relies on the kernel's causal flag; on CUDA in bf16, PyTorch's SDPA runs
    its FlashAttention-2 kernel. With only that kernel allowed, prompt logits equal the plain model's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = copy.deepcopy(loaded.model).to("cuda", torch.bfloat16)
    key, options = VARIANTS[variant]
    heads = model.config.num_attention_heads if options.per_query_head else model.config.num_key_value_heads
    budget = entry_bytes(model.config, torch.bfloat16, heads) * (N + 8)
    method = make_method(
        LoadedModel("tiny-gqa-llama-cuda", model, loaded.tokenizer), key, budget, options=options
    )
    if key == "fastkv":
        method.options = CompressorOptions(scoring=method.options.scoring, tsp_layer=1, tsp_len=N)
    on_gpu = ids.cuda()
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if the flash kernel cannot run these calls
        last = method.prefill(on_gpu[:, :PROMPT], method.new_cache())
        full = model(on_gpu[:, :PROMPT]).logits
    torch.testing.assert_close(last.float(), full[:, -1].float(), atol=1e-2, rtol=1e-2)  # bf16


@torch.no_grad()
@pytest.mark.parametrize("variant", ["snapkv", "fastkv-last-layer-tsp"])
def test_decoding_equals_a_plain_model_given_the_kept_entries(loaded, ids, variant):
    """Every layer of these variants selects from the whole prompt: a plain model run on the prompt, its cache
    cut down to the kept entries (per KV head, at their original positions), decodes exactly the same."""
    model = loaded.model
    method = method_at(loaded, variant, 16)
    cache = method.new_cache()
    method.prefill(ids[:, :PROMPT], cache)
    ours = torch.cat([logits for _, logits in method.stream(ids[:, PROMPT:], cache, segment=3)], dim=1)

    full = DynamicCache(config=model.config)
    model(ids[:, :PROMPT], **{CACHE_ARG: full}, use_cache=True)
    kept = DynamicCache(config=model.config)
    for index, layer in enumerate(cache.layers):
        positions = layer.positions[..., :16]  # (1, G, 16): the prompt entries kept
        assert positions.max() < PROMPT and layer.keys.shape[-2] == 16 + N - PROMPT
        gather = positions[..., None].expand(-1, -1, -1, model.config.head_dim)
        kept.update(
            full.layers[index].keys.gather(2, gather), full.layers[index].values.gather(2, gather), index
        )
    plain = model(ids[:, PROMPT:], **{CACHE_ARG: kept}, position_ids=torch.arange(PROMPT, N)[None]).logits
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-4)
    assert (ours - model(ids).logits[:, PROMPT:]).abs().max() > 1e-3  # something was dropped


def plain_kv_of_propagated_tokens(model, ids, chosen, first_layer):
    """Keys and values (1, G, t, d) of layers `first_layer ..` computed by the plain model for the tokens at
    positions `chosen` (t,), given the whole prompt's hidden states up to `first_layer` (FastKV's definition
    of what the layers after the TSP layer see)."""
    inner = model.model
    hidden = model(ids, output_hidden_states=True).hidden_states[first_layer][:, chosen]
    positions = chosen[None]
    out = []
    for layer in inner.layers[first_layer:]:
        attn, cos_sin = layer.self_attn, inner.rotary_emb(hidden, positions)
        normed = layer.input_layernorm(hidden)
        shape = (1, hidden.shape[1], -1, attn.head_dim)
        keys = attn.k_proj(normed).view(shape).transpose(1, 2)
        keys, _ = apply_rotary_pos_emb(keys, keys, *cos_sin)
        out.append((keys, attn.v_proj(normed).view(shape).transpose(1, 2)))
        hidden = layer(hidden, position_embeddings=cos_sin, position_ids=positions)
    return out


@torch.no_grad()
def test_decoding_after_propagation_equals_a_plain_model_given_the_kept_entries(loaded, ids):
    """FastKV with TSP at layer 1: layers 0-1 keep entries of the whole prompt, layers 2-3 entries of the
    propagated tokens, whose keys the plain model computes from their own hidden states at their positions."""
    model = loaded.model
    method = method_at(loaded, "fastkv", 16)
    captured = []
    hook = model.model.layers[2].register_forward_pre_hook(
        lambda module, args, kwargs: captured.append(kwargs["position_ids"][0].clone()), with_kwargs=True
    )
    cache = method.new_cache()
    try:
        method.prefill(ids[:, :PROMPT], cache)
    finally:
        hook.remove()
    chosen = captured[0]  # the 24 propagated positions
    assert len(chosen) == 24 and chosen[-WINDOW:].tolist() == list(range(PROMPT - WINDOW, PROMPT))
    ours = torch.cat([logits for _, logits in method.stream(ids[:, PROMPT:], cache, segment=3)], dim=1)

    full = DynamicCache(config=model.config)
    model(ids[:, :PROMPT], **{CACHE_ARG: full}, use_cache=True)
    later = plain_kv_of_propagated_tokens(model, ids[:, :PROMPT], chosen, first_layer=2)
    local = {int(p): i for i, p in enumerate(chosen)}
    kept = DynamicCache(config=model.config)
    for index, layer in enumerate(cache.layers):
        positions = layer.positions[..., :16]  # (1, G, 16)
        if index < 2:
            keys, values = full.layers[index].keys, full.layers[index].values
        else:
            keys, values = later[index - 2]
            positions = positions.clone().apply_(lambda p: local[p])  # where each kept token sits among t
        gather = positions[..., None].expand(-1, -1, -1, model.config.head_dim)
        kept.update(keys.gather(2, gather), values.gather(2, gather), index)
    plain = model(ids[:, PROMPT:], **{CACHE_ARG: kept}, position_ids=torch.arange(PROMPT, N)[None]).logits
    torch.testing.assert_close(ours, plain, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_whole_stream_stays_within_the_budget(loaded, ids, variant):
    """Answers are scored with the prompt compressed to the budget less the answer's own tokens."""
    method = method_at(loaded, variant, 20)
    answers = torch.tensor([N - 5, N - 4, N - 3])
    assert predict_answers(method, ids[0], answers).shape == (3,)
    cache = method.new_cache()
    method.prefill(ids[:, : N - 5], cache, reserve=4)
    for _ in method.stream(ids[:, N - 5 : N - 1], cache):
        pass
    assert [layer.keys.shape[-2] for layer in cache.layers] == [20] * 4  # 16 prompt entries + 4 fed
    assert method.cache_bytes(cache) == method.kv_bytes
    assert cache.get_seq_length() == N - 1


def test_mqar_answers_are_each_asked_of_a_fresh_compression(loaded, ids):
    """Answers apart from each other: each run of answer tokens gets its own prefill of everything before it."""
    method = method_at(loaded, "snapkv", 20)
    prefills = []
    original = method.prefill
    method.prefill = lambda prompt, cache, reserve=0: (
        prefills.append((prompt.shape[1], reserve)) or original(prompt, cache, reserve)
    )
    predict_answers(method, ids[0], torch.tensor([30, 31, 40, 45]))
    assert prefills == [(30, 1), (40, 0), (45, 0)]


def test_eager_attention_and_other_models_are_refused(loaded, tokenizer):
    eager = copy.deepcopy(loaded.model)
    eager.config._attn_implementation = "eager"
    for key in ("snapkv", "fastkv"):
        with pytest.raises(ValueError, match=r"attn_implementation = 'eager'.*Allowed: \('sdpa'"):
            make_method(LoadedModel("eager", eager, None), key, 10**6)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).eval()
    with pytest.raises(ValueError, match=r"model types \('llama', 'mistral'\), not 'gpt2'"):
        make_method(LoadedModel("gpt2", gpt2, None), "fastkv", 10**6)
    sliding = MistralForCausalLM(
        MistralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=16,
        )
    ).eval()
    with pytest.raises(ValueError, match="sliding_window = 16"):
        make_method(LoadedModel("mistral", sliding, None), "snapkv", 10**6)


@torch.no_grad()
def test_several_tokens_decode_when_propagation_leaves_later_layers_shorter(loaded, ids):
    """FastKV propagating fewer tokens than the budget leaves layers 2-3 shorter than 0-1; HF sizes one mask by
    layer 0, so a multi-token forward would fail. `stream` then feeds one token at a time: the same logits as
    feeding the model token by token on a copy of the compressed cache."""
    key, options = VARIANTS["fastkv"]
    options = CompressorOptions(scoring=options.scoring, tsp_layer=1, tsp_len=12)
    config = loaded.model.config
    method = make_method(
        loaded, key, entry_bytes(config, torch.float32, config.num_key_value_heads) * 20, options=options
    )
    cache = method.new_cache()
    method.prefill(ids[:, :PROMPT], cache)
    assert [layer.keys.shape[-2] for layer in cache.layers] == [20, 20, 12, 12]
    twin = copy.deepcopy(cache)
    ours = torch.cat([logits for _, logits in method.stream(ids[:, PROMPT:], cache)], dim=1)
    steps = [
        loaded.model(ids[:, t : t + 1], **{CACHE_ARG: twin}, use_cache=True).logits for t in range(PROMPT, N)
    ]
    torch.testing.assert_close(ours, torch.cat(steps, dim=1))
