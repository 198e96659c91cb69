import pytest
import torch

from modeling import BCTConfig, BCTForCausalLM

# Small enough to run the token-by-token reference in seconds; GQA (4 query heads on 2 KV heads).
TINY = dict(
    vocab_size=101,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    memory_slots=4,
    window=8,
    chunk_size=4,
)


def tiny_config(**overrides) -> BCTConfig:
    return BCTConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, **overrides) -> BCTForCausalLM:
    torch.manual_seed(seed)
    model = BCTForCausalLM(tiny_config(**overrides)).eval()
    # Open the write gates and give the memory a real say, so a wrong write or read shows in the logits.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.memory.read_bias.normal_(0.0, 1.0)  # a wrong read-bias path shows too
            write = layer.self_attn.memory.write
            for param in write.parameters():
                param.add_(torch.randn_like(param) * 0.5)
    return model


@pytest.fixture
def model():
    return tiny_model()
