"""Copy one model's weights into another architecture's model and prove the copy computes the same function
(used by `to-llama` and `export-source`)."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel


@torch.no_grad()
def copy_weights(target: PreTrainedModel, weights: dict[str, torch.Tensor]) -> PreTrainedModel:
    """Load `weights` into `target`, refusing anything but a one-to-one mapping (a tied `lm_head.weight` may
    be missing); re-tie the embeddings if the config ties them. Returns `target`."""
    missing, unexpected = target.load_state_dict(weights, strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise ValueError(
            f"Weights do not map one to one: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    if target.config.tie_word_embeddings:
        target.tie_weights()
    return target


@torch.no_grad()
def check_same_logits(expected: PreTrainedModel, copy: PreTrainedModel, length: int, what: str) -> None:
    """Raise unless both models' logits agree within 1e-3 on one seeded random sequence of `length` ids."""
    vocab = expected.config.vocab_size
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(0))
    gap = (expected(ids).logits.float() - copy(ids).logits.float()).abs().max().item()
    if gap > 1e-3:
        raise ValueError(f"{what}'s logits differ from the original's by {gap:.2e} on {length} tokens.")
