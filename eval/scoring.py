"""Exact-match scoring of prompt -> answer examples (passkey, MQAR), the same protocol for every method.

An example's prompt is everything before its first answer token; the method prefills it (its own way:
streamed through a bounded cache, or compressed by FastKV), then the remaining tokens are fed with teacher
forcing. The prediction for position `p` is `argmax(logits[p - 1])` (data/synthetic.py's convention).
"""

from __future__ import annotations

import torch

from eval.methods import Method


@torch.no_grad()
def predict_answers(method: Method, input_ids: torch.Tensor, answer_positions: torch.Tensor) -> torch.Tensor:
    """input_ids (L,), answer_positions (k,) -> the method's predicted ids at those positions (k,)."""
    first = int(answer_positions.min())
    ids = input_ids[None]  # (1, L)
    rest = ids[:, first:-1]  # fed after the prompt; predicts positions first + 1 .. L - 1
    cache = method.new_cache()
    predicted = [method.prefill(ids[:, :first], cache, reserve=rest.shape[1]).argmax(-1)]  # (1,) for `first`
    if rest.shape[1]:
        predicted += [logits[0].argmax(-1) for _, logits in method.stream(rest, cache)]
    predicted = torch.cat(predicted)  # (L - first,) predictions for positions first .. L - 1
    return predicted[answer_positions - first]


def score_example(method: Method, example: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-answer-token correctness (k,) bool for one example from data.synthetic."""
    positions = example["answer_positions"]
    return predict_answers(method, example["input_ids"], positions) == example["input_ids"][positions]
