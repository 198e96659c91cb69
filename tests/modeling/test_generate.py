"""generate(): greedy, sampling, beam search, num_return_sequences and left-padded batches on BCTCache."""

import pytest
import torch
from transformers import GenerationConfig

from .conftest import TINY, tiny_model
from .test_equivalence import left_pad

NEW = 2 * TINY["window"] + 5  # decoding crosses several evictions


@pytest.fixture
def model():
    return tiny_model(pad_token_id=0)


@pytest.fixture
def prompt():
    torch.manual_seed(1)
    return torch.randint(1, TINY["vocab_size"], (1, 3 * TINY["window"] + 1))


def argmax_loop(model, sequence: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding the obvious way: the argmax of an uncached forward over the whole sequence, each step."""
    for _ in range(steps):
        step = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat((sequence, step), dim=1)
    return sequence


@torch.no_grad()
def test_greedy_equals_uncached_argmax_loop(model, prompt):
    generated = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(generated, argmax_loop(model, prompt, NEW))


@torch.no_grad()
def test_sampling_is_seeded_varies_and_equals_uncached_sampling(model, prompt):
    def sample(seed, use_cache=True):
        torch.manual_seed(seed)
        return model.generate(
            prompt, max_new_tokens=NEW, do_sample=True, top_k=20, temperature=1.0, use_cache=use_cache
        )

    assert torch.equal(sample(0), sample(0))
    assert not torch.equal(sample(0), sample(1))
    assert torch.equal(sample(1), sample(1, use_cache=False))


@torch.no_grad()
def test_beam_search_matches_uncached_beam_search(model, prompt):
    kwargs = dict(max_new_tokens=NEW, num_beams=3, do_sample=False, num_return_sequences=3)
    cached = model.generate(prompt, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    assert cached.shape == (3, prompt.shape[1] + NEW)
    assert torch.equal(cached, uncached)


@torch.no_grad()
def test_num_return_sequences_with_sampling(model, prompt):
    out = model.generate(prompt, max_new_tokens=8, do_sample=True, num_return_sequences=4)
    assert out.shape == (4, prompt.shape[1] + 8)


@torch.no_grad()
def test_left_padded_batch_generates_each_row_as_alone(model):
    prompts = [torch.randint(1, TINY["vocab_size"], (n,)) for n in (13, 30, 7)]
    ids, mask = left_pad(prompts)
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    uncached = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, use_cache=False)
    assert torch.equal(batch, uncached)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], max_new_tokens=NEW, do_sample=False)
        assert torch.equal(batch[row, ids.shape[1] :], alone[0, len(prompt) :]), f"row {row}"


@pytest.mark.parametrize(
    "rollback", [{"assistant_model": "model"}, {"prompt_lookup_num_tokens": 2}, {"assistant_early_exit": 1}]
)
def test_rollback_decoding_is_refused(model, prompt, rollback):
    # transformers < 5.25 refused it for `_is_stateful` models; 5.25 dropped that check, so the model refuses.
    kwargs = {name: model if value == "model" else value for name, value in rollback.items()}
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} is not allowed: a BCT cache is stateful"):
        model.generate(prompt, max_new_tokens=4, **kwargs)


def test_rollback_decoding_in_a_generation_config_is_refused(model, prompt):
    config = GenerationConfig(max_new_tokens=4, prompt_lookup_num_tokens=2)
    with pytest.raises(ValueError, match="prompt_lookup_num_tokens is not allowed"):
        model.generate(prompt, generation_config=config)
