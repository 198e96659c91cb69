"""convert_to_bct: an exact weight mapping from Llama-family checkpoints (docs/design.md §4, §6)."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from modeling import BCTForCausalLM, convert_to_bct
from modeling.convert import (
    CONVERSION_READ_BIAS,
    CONVERSION_RETAIN_READ_BIAS,
    CONVERSION_RETAINED_AT_DISTANCE_BIAS,
    CONVERSION_SINK_AT_DISTANCE_BIAS,
)

SHAPE = dict(
    vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, bos_token_id=1,
)  # fmt: skip
LLAMA3_ROPE = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0, "original_max_position_embeddings": 64,
}  # fmt: skip
SOURCES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE, attention_bias=True, mlp_bias=True)),
    "llama3-rope-tied": lambda: LlamaForCausalLM(
        LlamaConfig(**SHAPE, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)
    ),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SHAPE)),
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SHAPE, head_dim=32)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(**SHAPE, sliding_window=None)),
}


def random_source(name):
    torch.manual_seed(0)
    model = SOURCES[name]().eval()
    with torch.no_grad():  # non-trivial biases and norm weights, so a dropped one shows
        for param in model.parameters():
            if param.dim() == 1:
                param.normal_(0.0, 0.5)
    return model


@pytest.mark.parametrize("name", sorted(SOURCES))
@torch.no_grad()
def test_zero_slot_conversion_reproduces_source_logits(name):
    source = random_source(name)
    bct = convert_to_bct(source, memory_slots=0, window=64, chunk_size=8)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 60))
    assert (bct(ids, use_cache=False).logits - source(ids).logits).abs().max() <= 1e-5
    assert bct.config.source_architecture == source.config.model_type


@torch.no_grad()
def test_conversion_via_folder_starts_as_a_null_sink_with_closed_writes(tmp_path):
    source = random_source("llama")
    source.save_pretrained(tmp_path)
    bct = convert_to_bct(str(tmp_path), memory_slots=8, window=16, chunk_size=8)
    assert isinstance(bct, BCTForCausalLM)
    memory = bct.model.layers[0].self_attn.memory
    assert torch.sigmoid(memory.write.gate_bias).max() < 0.01  # writes nearly closed
    # Slots: BOS-like keys that carry nothing, whose mass together is that of one key with logit - 6.
    assert not memory.init_values.any()
    assert torch.allclose(
        memory.read_bias, torch.full_like(memory.read_bias, CONVERSION_READ_BIAS - math.log(8))
    )
    bos = torch.tensor([[SHAPE["bos_token_id"]]])
    assert (bct(bos, use_cache=False).logits - source(bos).logits).abs().max() < 1e-3


def cross_entropy(logits, ids):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


@pytest.mark.parametrize("slots", [1, 16, 64])
@pytest.mark.parametrize("name", sorted(SOURCES))
@torch.no_grad()
def test_conversion_keeps_the_source_function_where_the_window_covers_the_input(name, slots):
    """Issue 17: only the memory is new, and it must not change the function (window 56 + 8 covers 64 tokens)."""
    source = random_source(name)
    bct = convert_to_bct(source, memory_slots=slots, window=56, chunk_size=8)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    expected, logits = source(ids).logits, bct(ids, use_cache=False).logits
    assert abs(cross_entropy(logits, ids) / cross_entropy(expected, ids) - 1) <= 0.01
    # Random tiny models predict near-uniformly, so the loss barely notices; the logits do. Slots holding the
    # source's BOS key and value at read bias 0 (the old init) are off by 0.1-3 x the logits' std here.
    assert (logits - expected).abs().max() <= 0.03 * expected.std()


@pytest.mark.parametrize("name", ["llama", "qwen3"])
def test_converted_memory_is_trainable_from_the_first_step(name):
    """Every memory parameter (slots, read bias, write rule) gets a non-zero gradient on a sequence that
    writes (64 tokens through a 16 + 8 window)."""
    bct = convert_to_bct(random_source(name), memory_slots=16, window=16, chunk_size=8).train()
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    bct(ids, labels=ids, use_cache=False).loss.backward()
    memory = {name: p for name, p in bct.named_parameters() if ".memory." in name}
    assert any(name.endswith("read_bias") for name in memory) and any(".write." in name for name in memory)
    for param_name, param in memory.items():
        assert param.grad is not None and param.grad.abs().max() > 0, param_name


def test_unsupported_architecture_lists_the_supported_ones():
    gpt2 = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, bos_token_id=0, eos_token_id=0)
    )
    with pytest.raises(ValueError, match="supported architectures are llama, mistral, qwen2, qwen3"):
        convert_to_bct(gpt2, memory_slots=0, window=8, chunk_size=4)


@pytest.mark.slow
@torch.no_grad()
def test_smollm2_gguf_conversion_keeps_greedy_continuation():
    from transformers import AutoTokenizer

    from modeling.convert import load_source
    from training.init_source import resolve_source

    path, gguf = resolve_source("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    source = load_source(path, gguf)
    bct = convert_to_bct(source, memory_slots=0, window=64, chunk_size=32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    expected = source.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(bct.generate(ids, max_new_tokens=12, do_sample=False), expected)
    assert "Paris" in tokenizer.decode(expected[0])


@pytest.mark.slow
@pytest.mark.parametrize("config", ["continue_smollm2.yaml", "continue_smollm2_cpu.yaml"])
@torch.no_grad()
def test_smollm2_gguf_conversion_with_the_shipped_capacity_keeps_the_loss(config):
    """Issue 17 on the real model: the shipped SmolLM2 configs' memory (M = 64, W = 448, C = 64, `retain`) at
    step 0 is within 1% of the source's loss on two 512-token rows of Python source (the window covers them).
    Before the fix: perplexity 7.9 -> 1,127."""
    import json.decoder
    import textwrap
    from pathlib import Path

    from transformers import AutoTokenizer

    from modeling.convert import load_source
    from training.config import conversion_kwargs, load_run_config
    from training.init_source import resolve_source

    cfg = load_run_config(Path(__file__).parents[2] / "configs" / config)
    kwargs = conversion_kwargs(cfg)
    assert (kwargs["memory_slots"], kwargs["window"] + kwargs["chunk_size"]) == (64, 512)
    assert kwargs["memory_write_rule"] == "retain"
    path, gguf = resolve_source(cfg.init_from)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    texts = [Path(module.__file__).read_text() for module in (textwrap, json.decoder)]
    ids = torch.stack([tokenizer(text, return_tensors="pt").input_ids[0, :512] for text in texts])
    source = load_source(path, gguf)
    bct = convert_to_bct(source, **kwargs)
    expected = cross_entropy(source(ids).logits, ids)
    assert abs(cross_entropy(bct(ids, use_cache=False).logits, ids) / expected - 1) <= 0.01


@torch.no_grad()
def test_retain_conversion_keeps_its_sink_slots_apart_from_the_retained_tokens():
    """`retain` with S sink slots: the sinks take the null sink's read bias (CONVERSION_READ_BIAS - ln S), the
    retained slots CONVERSION_RETAIN_READ_BIAS - ln(M - S); the window still covers the input exactly."""
    source = random_source("llama")
    bct = convert_to_bct(
        source, memory_slots=8, window=56, chunk_size=8, memory_write_rule="retain", memory_sink_slots=2
    )
    memory = bct.model.layers[1].self_attn.memory
    assert torch.allclose(memory.read_bias[:, :2], torch.tensor(CONVERSION_READ_BIAS - math.log(2)))
    assert torch.allclose(memory.read_bias[:, 2:], torch.tensor(CONVERSION_RETAIN_READ_BIAS - math.log(6)))
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    expected, logits = source(ids).logits, bct(ids, use_cache=False).logits
    assert (logits - expected).abs().max() <= 0.03 * expected.std()


@torch.no_grad()
def test_retain_conversion_without_sinks_starts_its_retained_tokens_at_the_null_sink_bias():
    """`retain` with no sink slot keeps the null sink's read bias (CONVERSION_READ_BIAS - ln M) per retained
    token: opening it (0 per token, read 96 back) lost the bench pair's far passkeys (docs/design.md §8.10).
    Empty slots are not read, so the window still covers the input exactly."""
    source = random_source("llama")
    bct = convert_to_bct(source, memory_slots=8, window=56, chunk_size=8, memory_write_rule="retain")
    memory = bct.model.layers[1].self_attn.memory
    assert torch.allclose(
        memory.read_bias, torch.full_like(memory.read_bias, CONVERSION_READ_BIAS - math.log(8))
    )
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    expected, logits = source(ids).logits, bct(ids, use_cache=False).logits
    assert (logits - expected).abs().max() <= 0.03 * expected.std()


@torch.no_grad()
def test_retain_conversion_read_at_a_distance_makes_its_sinks_the_bos_token():
    """With `memory_read_distance` > 0 the S sinks are the source's BOS token, key and value, at one BOS's full
    weight (CONVERSION_SINK_AT_DISTANCE_BIAS - ln S each): read δ back, that is where the source saw its first
    token once it left the window; the retained tokens are read at CONVERSION_RETAINED_AT_DISTANCE_BIAS. The window still covers the input within 1% of the source's loss."""
    source = random_source("llama")
    bct = convert_to_bct(
        source, memory_slots=8, window=56, chunk_size=8, memory_write_rule="retain", memory_sink_slots=2,
        memory_read_distance=56,
    )  # fmt: skip
    captured = {}
    layer = source.model.layers[1].self_attn
    hooks = [module.register_forward_hook(lambda m, i, o, m_=module: captured.__setitem__(m_, o)) for module in (layer.k_proj, layer.v_proj)]  # fmt: skip
    source(torch.tensor([[SHAPE["bos_token_id"]]]))
    for hook in hooks:
        hook.remove()
    memory = bct.model.layers[1].self_attn.memory
    kv_heads, head_dim = memory.init_keys.shape[0], memory.init_keys.shape[2]
    bos_key, bos_value = (captured[m].reshape(kv_heads, 1, head_dim) for m in (layer.k_proj, layer.v_proj))
    assert torch.allclose(memory.init_values[:, :2], bos_value.expand(-1, 2, -1))
    assert (memory.init_keys[:, :2] - bos_key).abs().max() <= 0.05 * bos_key.abs().max()  # + symmetry noise
    assert torch.equal(memory.init_values[:, 2:], torch.zeros_like(memory.init_values[:, 2:]))
    assert torch.allclose(
        memory.read_bias[:, :2], torch.tensor(CONVERSION_SINK_AT_DISTANCE_BIAS - math.log(2))
    )
    assert torch.equal(
        memory.read_bias[:, 2:],
        torch.full_like(memory.read_bias[:, 2:], CONVERSION_RETAINED_AT_DISTANCE_BIAS),
    )
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 64), generator=torch.Generator().manual_seed(1))
    assert (
        abs(cross_entropy(bct(ids, use_cache=False).logits, ids) / cross_entropy(source(ids).logits, ids) - 1)
        <= 0.01
    )
