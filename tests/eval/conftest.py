"""Shared pieces for the eval tests: a small byte-level BPE, a held-out text file, tiny random BCT and Llama
models of one shape, and `CopyOracle`, an HF-compatible model that can answer recall questions perfectly from
whatever its cache lets it see."""

from __future__ import annotations

import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import (
    GenerationMixin,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from eval.contenders.methods import LoadedModel
from modeling import BCTConfig, BCTForCausalLM
from modeling.cache import CACHE_ARG

PROSE = (
    "the king and his court rode out at dawn across the river while a fool sang of gold and winter "
    "her brother kept the castle gate and every night the bells rang over the town square "
    "soldiers drank wine by the fire and told of ships lost at sea near the northern coast"
)
SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)
CAPACITY = dict(memory_slots=4, window=16, chunk_size=8)  # kv_capacity 28


def prose(words: int, seed: int) -> str:
    rng, vocabulary = random.Random(seed), PROSE.split(" ")
    return " ".join(rng.choice(vocabulary) for _ in range(words)) + "\n"


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    """A 320-token byte-level BPE in the manner of data/tokenizer.py, trained on generated prose."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([prose(400, seed) for seed in range(20)], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


@pytest.fixture(scope="session")
def heldout_file(tmp_path_factory) -> str:
    """A one-document `data.source`: with any validation fraction its only document is held out."""
    path = tmp_path_factory.mktemp("heldout") / "book.txt"
    path.write_text(prose(3000, seed=99))
    return str(path)


def tiny_bct(vocab_size: int, seed: int = 0, **overrides) -> BCTForCausalLM:
    torch.manual_seed(seed)
    model = BCTForCausalLM(BCTConfig(vocab_size=vocab_size, **SHAPE, **{**CAPACITY, **overrides})).eval()
    with torch.no_grad():  # open the write gates so that writes change the memory visibly
        for layer in model.model.layers:
            write = layer.self_attn.memory.write
            write.gate_bias.normal_(1.0, 0.5)
    return model


def tiny_llama(vocab_size: int, seed: int = 1, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, **{**SHAPE, "num_hidden_layers": layers}, max_position_embeddings=4096
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def llama(tokenizer) -> LoadedModel:
    return LoadedModel("tiny-llama", tiny_llama(len(tokenizer)), tokenizer)


@pytest.fixture(scope="session")
def bct(tokenizer) -> LoadedModel:
    return LoadedModel("tiny-bct", tiny_bct(len(tokenizer)), tokenizer)


class CopyOracle(PreTrainedModel, GenerationMixin):
    """Predicts, at every position, the token that followed the longest earlier match of the current suffix
    (up to 8 tokens; ties go to the most recent). It keeps its history in the cache it is given (token ids
    stored as one-dimensional "keys"), so it sees exactly what that cache returns: with a full cache it
    answers passkey and MQAR questions perfectly."""

    config_class = LlamaConfig
    max_match = 8

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.unused = nn.Parameter(torch.zeros(1))
        self.post_init()

    def forward(
        self, input_ids, cache=None, use_cache=True, logits_to_keep=0, past_key_values=None, **kwargs
    ):
        cache = (
            cache if cache is not None else past_key_values
        )  # the name depends on the transformers release
        ids = input_ids[:, None, :, None].float()  # (1, 1, n, 1)
        history = ids if cache is None else cache.update(ids, ids, 0)[0]
        history = history[0, 0, :, 0].long()  # (K,) every token the cache shows, the new ones last
        new = input_ids.shape[1]
        predicted = torch.stack([self._next(history, len(history) - new + i) for i in range(new)])
        logits = torch.nn.functional.one_hot(predicted, self.config.vocab_size).float()[None] * 10.0
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutputWithPast(logits=logits, **{CACHE_ARG: cache})

    def _next(self, history: torch.Tensor, query: int) -> torch.Tensor:
        candidates = torch.arange(query)  # earlier positions j
        length = torch.zeros(query, dtype=torch.long)
        alive = torch.ones(query, dtype=torch.bool)
        for k in range(min(self.max_match, query + 1)):
            back = candidates - k
            alive = alive & (back >= 0) & (history[back.clamp_min(0)] == history[query - k])
            length += alive
        if query == 0 or int(length.max()) == 0:
            return torch.tensor(0)
        best = int(torch.nonzero(length == length.max()).max())  # longest match, most recent
        return history[best + 1] if best + 1 < len(history) else torch.tensor(0)


@pytest.fixture(scope="session")
def oracle(tokenizer) -> LoadedModel:
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=1, hidden_size=8, num_attention_heads=1)
    return LoadedModel("copy-oracle", CopyOracle(config).eval(), tokenizer)
