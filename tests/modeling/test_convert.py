"""convert_to_bct: an exact weight mapping from Llama-family checkpoints (DESIGN.md §4, §6)."""

import pytest
import torch
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
def test_conversion_via_folder_starts_as_a_sink_with_closed_writes(tmp_path):
    source = random_source("llama")
    source.save_pretrained(tmp_path)
    bct = convert_to_bct(str(tmp_path), memory_slots=8, window=16, chunk_size=8)
    assert isinstance(bct, BCTForCausalLM)
    gate = bct.model.layers[0].self_attn.memory.write.gate_bias
    assert torch.sigmoid(gate).max() < 0.01  # writes nearly closed
    bos = torch.tensor([[SHAPE["bos_token_id"]]])
    # A BOS query reads (nearly) the same as in the source: all slots hold the source's BOS key/value.
    assert (bct(bos, use_cache=False).logits - source(bos).logits).abs().max() < 1e-2


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

    from modeling.convert import load_source, resolve_source

    path, gguf = resolve_source("smollm2")
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    source = load_source("smollm2")
    bct = convert_to_bct(source, memory_slots=0, window=64, chunk_size=32)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    expected = source.generate(ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(bct.generate(ids, max_new_tokens=12, do_sample=False), expected)
    assert "Paris" in tokenizer.decode(expected[0])
