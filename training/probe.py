"""A passkey probe during training (`probe:` in the run config): does the memory carry a needle past the window?

Validation loss barely moves when a memory starts or stops carrying needles (closing a BCT's writes changed
it by 0.00001 nats, docs/design.md §8.8), and far passkey accuracy rose and then fell to 0 in one continued
run. The probe measures it while training: held-out passkeys (`data.make_passkey_grid`, filled with the
validation rows' text, seed `probe.seed`), scored exact-match (every answer token the argmax) through the
training model's parallel forward, which equals cached decoding (docs/design.md §6). A BCT with memory slots
is also probed with its writes closed on the same weights, the control. `train.keep_best: probe/passkey`
keeps the checkpoint where it peaked (training/best.py).

Metrics: `probe/passkey` (mean over every example), `probe/passkey_<length>`, and with writes closed
`probe/passkey_closed`, `probe/passkey_closed_<length>`.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerFast

from data import make_passkey_grid, passkey_min_length
from data.schema import refusal
from data.synthetic import Example
from training.config import ProbeConfig
from training.round_robin import deal


class PasskeyProbe:
    """The probe's fixed examples, drawn once, and their scoring. `validation` (N, seq_len) token rows."""

    def __init__(
        self, cfg: ProbeConfig, tokenizer: PreTrainedTokenizerFast, validation: torch.Tensor
    ) -> None:
        shortest = passkey_min_length(tokenizer)
        if min(cfg.lengths) <= shortest:
            raise refusal(
                "probe.lengths",
                cfg.lengths,
                f"lengths above {shortest}, the tokens a passkey needs besides filler with this tokenizer",
            )
        if validation.numel() == 0:
            raise refusal(
                "probe.every", cfg.every, "0 when the corpus has no validation rows to fill passkeys with"
            )
        filler = validation.reshape(-1).numpy()
        grid = make_passkey_grid(tokenizer, filler, cfg.lengths, cfg.depths, cfg.samples, cfg.seed)
        self.lengths = list(cfg.lengths)
        self.examples = [(length, example) for (length, _), examples in grid.items() for example in examples]
        self.writes_closed = cfg.writes_closed

    def run(self, accelerator: Accelerator, model: torch.nn.Module) -> dict[str, float]:
        """Every metric of the module docstring. Collective: every rank calls it at the same step."""
        metrics = self._accuracies(accelerator, model, "probe/passkey")
        bct = accelerator.unwrap_model(model)
        if self.writes_closed and bct.config.memory_slots > 0:
            bct.set_memory_writes(False)  # a runtime switch, not a weight: reopened below whatever happens
            try:
                metrics |= self._accuracies(accelerator, model, "probe/passkey_closed")
            finally:
                bct.set_memory_writes(True)
        return metrics

    @torch.no_grad()
    def _accuracies(self, accelerator: Accelerator, model: torch.nn.Module, name: str) -> dict[str, float]:
        was_training = model.training
        model.eval()
        # (correct, total) per length, summed over this rank's examples, then over the ranks.
        counts = torch.zeros(len(self.lengths), 2, device=accelerator.device, dtype=torch.float64)
        for (length, example), counted in deal(accelerator, self.examples):
            hit = answer_exact(model, example, accelerator.device)
            counts[self.lengths.index(length)] += torch.tensor([hit, 1.0], device=counts.device) * counted
        model.train(was_training)
        counts = accelerator.reduce(counts, reduction="sum").cpu().numpy()  # (lengths, 2)
        metrics = {name: float(counts[:, 0].sum() / counts[:, 1].sum())}
        for length, (correct, total) in zip(self.lengths, counts):
            metrics[f"{name}_{length}"] = float(correct / total)
        return metrics


def answer_exact(model: torch.nn.Module, example: Example, device: torch.device) -> bool:
    """Whether every answer token of one example is the model's argmax, given the tokens before it. Only the
    logits that predict an answer are computed (a vocabulary-wide row per token of a long context is not)."""
    ids = example["input_ids"].to(device)[None]  # (1, T)
    answers = example["answer_positions"].to(device)  # (A,)
    logits = model(input_ids=ids, logits_to_keep=answers - 1).logits  # (1, A, V): position t predicts t + 1
    return bool(torch.equal(logits[0].argmax(-1), ids[0, answers]))
