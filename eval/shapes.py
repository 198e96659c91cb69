"""The benchmark shape shared by the speed and training benchmarks.

4 layers × 256 hidden, 4 query heads sharing 2 KV heads (GQA), vocab 32 000, tied embeddings; the BCT holds 32 slots + 64 window + 32 chunk
= 128 entries per layer and KV head, and every bounded baseline gets the same 128. Weights are random:
speed does not depend on what the weights learned.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from modeling import BCTConfig, BCTForCausalLM

SHAPE = {
    "vocab_size": 32000,
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # GQA: two query heads per KV head
    "tie_word_embeddings": True,
}
CAPACITY = {"memory_slots": 32, "window": 64, "chunk_size": 32}


def random_bct(seed: int = 0) -> BCTForCausalLM:
    torch.manual_seed(seed)
    return BCTForCausalLM(BCTConfig(**SHAPE, **CAPACITY))


def random_llama(max_length: int, seed: int = 0) -> LlamaForCausalLM:
    """A same-shape Llama with SDPA attention, positions up to `max_length`."""
    torch.manual_seed(seed)
    config = LlamaConfig(**SHAPE, max_position_embeddings=max(max_length + 1024, 4096))
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)
