"""`data.synthetic_loss_weight`: the synthetic answers' share of the loss (training/loss.py, train.forward_loss)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modeling import BCTConfig, BCTForCausalLM
from train import forward_loss
from training.loss import synthetic_answer_hits, synthetic_weighted_loss


def mixed_batch(vocab: int = 11, seq_len: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows 0 and 2 text (every token labelled), row 1 synthetic (two answers labelled)."""
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (3, seq_len))
    labels = ids.clone()
    labels[1] = -100
    labels[1, [4, 8]] = ids[1, [4, 8]]
    return ids, labels, torch.tensor([False, True, False])


def token_losses(logits, labels, rows) -> torch.Tensor:
    """Cross-entropy of each labelled next token in `rows`, one by one."""
    out = []
    for r in rows:
        for t in range(1, labels.shape[1]):
            if labels[r, t] != -100:
                out.append(F.cross_entropy(logits[r, t - 1][None], labels[r, t][None]))
    return torch.stack(out)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0], ids=["w0", "w0.3", "w1"])
def test_weight_is_the_answers_share(weight):
    ids, labels, synthetic = mixed_batch()
    logits = torch.randn(3, ids.shape[1], 11)
    expected = (
        weight * token_losses(logits, labels, [1]).mean()
        + (1 - weight) * token_losses(logits, labels, [0, 2]).mean()
    )
    assert torch.allclose(synthetic_weighted_loss(logits, labels, synthetic, weight), expected, atol=1e-6)


def test_token_share_weight_is_todays_plain_mean():
    ids, labels, synthetic = mixed_batch()
    logits = torch.randn(3, ids.shape[1], 11)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=-100)
    share = 2 / (2 + 2 * 8)  # 2 answers among 18 labelled next tokens
    assert torch.allclose(synthetic_weighted_loss(logits, labels, synthetic, share), plain, atol=1e-6)


def test_rows_mean_gives_each_synthetic_row_the_same_share():
    """Row 1 holds two answers, row 2 six: "rows" averages the two rows' means, "tokens" the eight answers."""
    ids, labels, _ = mixed_batch()
    labels[2] = -100
    labels[2, 3:] = ids[2, 3:]
    synthetic = torch.tensor([False, True, True])
    logits = torch.randn(3, ids.shape[1], 11)
    row1, row2 = token_losses(logits, labels, [1]), token_losses(logits, labels, [2])
    by_rows = synthetic_weighted_loss(logits, labels, synthetic, 1.0, "rows")
    by_tokens = synthetic_weighted_loss(logits, labels, synthetic, 1.0, "tokens")
    assert torch.allclose(by_rows, (row1.mean() + row2.mean()) / 2, atol=1e-6)
    assert torch.allclose(by_tokens, torch.cat([row1, row2]).mean(), atol=1e-6)
    assert not torch.allclose(by_rows, by_tokens)  # the modes differ when rows hold unequal answer counts


def test_a_kind_the_batch_lacks_contributes_nothing():
    ids, labels, _ = mixed_batch()
    logits = torch.randn(3, ids.shape[1], 11)
    text = token_losses(logits, labels, [0, 1, 2]).mean()  # as if every row were text
    assert torch.allclose(synthetic_weighted_loss(logits, labels, None, 0.25), 0.75 * text, atol=1e-6)


def test_forward_loss_keeps_the_model_loss_without_a_weight():
    torch.manual_seed(0)
    model = BCTForCausalLM(
        BCTConfig(
            vocab_size=11,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            memory_slots=2,
            window=4,
            chunk_size=4,
        )
    )
    ids, labels, synthetic = mixed_batch()
    batch = {"input_ids": ids, "labels": labels}
    output, loss = forward_loss(model, batch, synthetic, None, "tokens", False)
    assert torch.equal(loss, model(**batch).loss)
    output, loss = forward_loss(model, batch, synthetic, 0.5, "tokens", False)
    assert torch.allclose(loss, synthetic_weighted_loss(output.logits, labels, synthetic, 0.5))
    loss.backward()  # a training loss: gradients reach the weights
    assert model.lm_head.weight.grad is not None


def test_answer_hits_count_only_synthetic_answers():
    ids, labels, synthetic = mixed_batch()
    logits = torch.full((3, ids.shape[1], 11), -5.0)
    logits[:, :-1].scatter_(-1, ids[:, 1:, None], 5.0)  # every next token predicted...
    logits[1, 3, :] = 0.0
    logits[1, 3, (ids[1, 4] + 1) % 11] = 5.0  # ...but the first answer (position 4)
    assert synthetic_answer_hits(logits, labels, synthetic).tolist() == [1.0, 2.0]  # text rows not counted
    assert synthetic_answer_hits(logits, labels, torch.zeros(3, dtype=torch.bool)).tolist() == [0.0, 0.0]
