"""Mixing synthetic recall rows into training batches (`SyntheticMixer`).

The tasks are the example makers of `data.synthetic` and `data.text_recall`; this module only draws which
rows are replaced, by which task, and checks up front that every task fits `seq_len` with the tokenizer.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from data.config import DataConfig, invalid
from data.synthetic import (
    Example,
    make_induction_example,
    make_mqar_example,
    make_passkey_example,
    make_text_copy_example,
    mqar_token_ranges,
    passkey_min_length,
)
from data.text_recall import TEXT_MQAR_KEYS, make_text_mqar_example, text_mqar_fixed_length

_MIX_STREAM = 0x5EED  # separates the mixer's random stream from other uses of the same seed


class SyntheticMixer:
    """Replaces training rows by synthetic examples, in place.

    Each row of a batch is replaced with probability `synthetic_fraction`, by a task drawn uniformly from
    `synthetic_tasks`. Draws come from a generator seeded by `(seed, position)`, where the loader passes the
    batch's position (epoch, batch index, rank), so they are the same in every run and after a resume. A
    replaced corpus row is not trained on in that epoch (another is, the next epoch). Passkey and text MQAR
    examples use the row they replace as filler, so their filler is real text in every mode, streaming
    included."""

    def __init__(self, cfg: DataConfig, tokenizer: PreTrainedTokenizerFast, seed: int) -> None:
        self.tokenizer, self.seed = tokenizer, seed
        self.fraction, self.tasks = cfg.synthetic_fraction, list(cfg.synthetic_tasks)
        self.seq_len = cfg.seq_len
        self.num_pairs, self.num_queries = cfg.mqar_num_pairs, cfg.mqar_num_queries
        self.copy_span = cfg.copy_span
        self.passkey_depths = cfg.passkey_depth_range
        self.induction_segment, self.induction_lookback = cfg.induction_segment, cfg.induction_lookback
        self.vocab_size = tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)
        if "passkey" in self.tasks and passkey_min_length(tokenizer) >= cfg.seq_len:
            raise invalid(
                "seq_len",
                cfg.seq_len,
                f"more than the {passkey_min_length(tokenizer)} tokens a passkey example needs besides filler "
                "with this tokenizer (or drop passkey from synthetic_tasks)",
            )
        if "mqar" in self.tasks and self.num_pairs > len(mqar_token_ranges(self.vocab_size)["keys"]):
            raise invalid(
                "mqar_num_pairs",
                self.num_pairs,
                f"at most {len(mqar_token_ranges(self.vocab_size)['keys'])}, the distinct keys this "
                f"tokenizer's {self.vocab_size} ids offer",
            )
        if "text_mqar" in self.tasks:
            if self.num_pairs > len(TEXT_MQAR_KEYS):
                raise invalid(
                    "mqar_num_pairs",
                    self.num_pairs,
                    f"at most {len(TEXT_MQAR_KEYS)}, the distinct key words text_mqar asks by",
                )
            needed = text_mqar_fixed_length(tokenizer, self.num_pairs, self.num_queries)
            if needed >= cfg.seq_len:
                raise invalid(
                    "seq_len",
                    cfg.seq_len,
                    f"more than the {needed} tokens a text_mqar example of mqar_num_pairs = {self.num_pairs} "
                    f"and mqar_num_queries = {self.num_queries} needs besides filler with this tokenizer",
                )

    def apply(self, input_ids: torch.Tensor, labels: torch.Tensor, position: tuple[int, ...]) -> torch.Tensor:
        """Mix into a batch `input_ids`/`labels` (B, seq_len) int64 CPU tensors, in place; return which rows
        were replaced, (B,) bool (their labels are the synthetic answers)."""
        rng = np.random.default_rng([self.seed, _MIX_STREAM, *position])
        mixed = rng.random(len(input_ids)) < self.fraction  # (B,)
        replaced = np.flatnonzero(mixed)
        ids, targets = input_ids.numpy(), labels.numpy()  # views: writes land in the tensors
        for row in replaced:
            task = self.tasks[int(rng.integers(len(self.tasks)))]
            example = self.example(task, ids[row], rng)
            ids[row] = example["input_ids"].numpy()
            targets[row] = example["labels"].numpy()
        return torch.from_numpy(mixed)

    def example(self, task: str, row: np.ndarray, rng: np.random.Generator) -> Example:
        """One example of `task` replacing the corpus `row` (seq_len,), which passkey and text_mqar use as
        filler."""
        if task == "passkey":
            low, high = self.passkey_depths  # the default (0, 1) draws exactly what rng.random() does
            depth = low + (high - low) * float(rng.random())
            return make_passkey_example(self.tokenizer, row, self.seq_len, depth, rng)
        if task == "text_mqar":
            return make_text_mqar_example(
                self.tokenizer, row, self.num_pairs, self.num_queries, self.seq_len, rng
            )
        if task == "copy":
            return make_text_copy_example(row, self.copy_span, rng)
        if task == "induction":
            return make_induction_example(
                self.vocab_size,
                self.seq_len,
                rng,
                segment=self.induction_segment,
                exclude=self.tokenizer.all_special_ids,
                lookback=self.induction_lookback,
            )
        return make_mqar_example(self.vocab_size, self.num_pairs, self.num_queries, self.seq_len, rng)
