"""The training loss when synthetic answers get their own share of it (`data.synthetic_loss_weight`).

A mixed batch holds text rows (every token labelled) and synthetic rows (only their ~10-20 answers
labelled). Averaged together, the answers are ~2% of the gradient (docs/design.md §8). With a weight `w` the
loss is `w · mean(synthetic answers) + (1 - w) · mean(text tokens)`; a kind the batch lacks contributes 0,
so the shares hold on average whatever the batch size (one row per micro-batch included).

`data.synthetic_answer_mean` says what the answers' mean is over: every answer token alike ("tokens"), or
every synthetic row alike ("rows": the mean over rows of each row's own answer mean). With "tokens", a task
of many answers a row drowns one of few: an induction row holds ~112 answers, a passkey row ~5, so in a
passkey + induction mix the passkeys got ~4% of the synthetic share (docs/design.md §8.8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from data import IGNORE_INDEX


def synthetic_weighted_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    synthetic: torch.Tensor | None,
    weight: float,
    answer_mean: str = "tokens",
) -> torch.Tensor:
    """logits (B, T, V), labels (B, T) unshifted (HF convention), synthetic (B,) bool rows or None (no
    synthetic rows), answer_mean "tokens" or "rows" -> the scalar loss above. Next-token cross-entropy in
    float32, as the model's own loss."""
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t + 1
    per_token = F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, T-1)
    labelled = targets != IGNORE_INDEX
    if synthetic is None:
        synthetic = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
    rows = synthetic.to(labels.device)[:, None]  # (B, 1)
    answers, text = labelled & rows, labelled & ~rows

    def mean(mask: torch.Tensor) -> torch.Tensor:
        return (per_token * mask).sum() / mask.sum().clamp_min(1)

    if answer_mean == "rows":
        per_row = (per_token * answers).sum(1) / answers.sum(1).clamp_min(1)  # (B,) each row's answer mean
        answered = answers.any(1)  # (B,) rows holding answers
        answer_loss = (per_row * answered).sum() / answered.sum().clamp_min(1)
    else:
        answer_loss = mean(answers)
    return weight * answer_loss + (1 - weight) * mean(text)


def synthetic_answer_hits(
    logits: torch.Tensor, labels: torch.Tensor, synthetic: torch.Tensor
) -> torch.Tensor:
    """How many synthetic answer tokens the model predicts exactly (greedy), and how many there are: (2,)
    float32 [correct, total], summed so that micro-batches and ranks can be added before dividing. logits
    (B, T, V), labels (B, T) unshifted, synthetic (B,) bool rows."""
    targets = labels[:, 1:]  # (B, T-1)
    answers = (targets != IGNORE_INDEX) & synthetic.to(labels.device)[:, None]
    correct = (logits[:, :-1].argmax(dim=-1) == targets) & answers
    return torch.stack([correct.sum(), answers.sum()]).float()
