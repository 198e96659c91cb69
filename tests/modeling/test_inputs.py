"""Inputs the model refuses with a ValueError that names the value and what is allowed: an empty prompt, a
token id outside the vocabulary, an attention mask of another shape (through generate() and forward)."""

import pytest
import torch

from modeling.cache import CACHE_ARG

from .conftest import TINY, tiny_model

IDS = torch.tensor([[1, 2, 5]])


@pytest.fixture(scope="module")
def model():
    return tiny_model(pad_token_id=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_ids": torch.zeros(1, 0, dtype=torch.long)}, r"0 tokens .*empty prompt"),
        (
            {"input_ids": torch.tensor([[1, 2, TINY["vocab_size"]]])},
            r"token id 101: allowed ids are 0 \.\. 100",
        ),
        ({"input_ids": torch.tensor([[1, -3, 5]])}, r"token id -3: allowed ids are 0 \.\. 100"),
        (
            {"input_ids": IDS, "attention_mask": torch.ones(1, 5, dtype=torch.long)},
            r"shape \(1, 5\).*\(1, 3\)",
        ),
        (
            {"input_ids": IDS, "attention_mask": torch.ones(2, 3, dtype=torch.long)},
            r"shape \(2, 3\).*\(1, 3\)",
        ),
    ],
    ids=["empty-prompt", "id-too-large", "negative-id", "mask-too-long", "mask-other-batch"],
)
@pytest.mark.parametrize("entry", ["generate", "forward"])
def test_bad_inputs_raise_a_clear_value_error(model, kwargs, message, entry):
    with torch.no_grad(), pytest.raises(ValueError, match=message):
        if entry == "generate":
            model.generate(**kwargs, max_new_tokens=2, do_sample=False)
        else:
            model(**kwargs)


@torch.no_grad()
def test_a_cached_call_takes_the_mask_of_past_and_new_tokens(model):
    """Decoding passes a mask of every column so far with one new token: that is allowed."""
    first = model(IDS, attention_mask=torch.ones_like(IDS), use_cache=True)
    mask = torch.ones(1, 4, dtype=torch.long)
    step = model(torch.tensor([[7]]), attention_mask=mask, **{CACHE_ARG: getattr(first, CACHE_ARG)})
    assert step.logits.shape == (1, 1, TINY["vocab_size"])
