"""Exact-match scoring of prompt -> answer examples (passkey, MQAR), the same protocol for every method.

The prediction for position `p` is `argmax(logits[p - 1])` (data/synthetic.py's convention), with teacher
forcing. A streaming method prefills everything before the first answer token and then feeds the rest.
A prompt compressor (SnapKV, FastKV) compresses anew before each run of consecutive answer tokens: its
prompt is everything before that run (earlier questions and answers included), compressed to the budget less
the run's own tokens, so that MQAR's later queries are asked of a compression that has seen them (the
reference compresses once per prompt; re-compressing per answer is that, once per question).

Each call can record the KV bytes the method held (`KVBytes`): after each prefill, after the last token fed,
and the peak during any prefill; tasks report the largest over their examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eval.contenders.kv_bytes import PeakBytes
from eval.contenders.methods import Method


@dataclass
class KVBytes:
    """The most KV bytes a method held over the examples scored with it."""

    after_prefill: int = 0
    after_decode: int = 0
    peak_prefill: int = 0

    def as_row(self) -> dict[str, int]:
        return {
            "kv_bytes_after_prefill": self.after_prefill,
            "kv_bytes_after_decode": self.after_decode,
            "kv_bytes_peak_prefill": self.peak_prefill,
        }


def answer_runs(positions: torch.Tensor) -> list[tuple[int, int]]:
    """Runs of consecutive positions, as (first, last + 1), in order."""
    ordered = sorted(int(p) for p in positions)
    runs = [[ordered[0], ordered[0] + 1]]
    for p in ordered[1:]:
        if p == runs[-1][1]:
            runs[-1][1] += 1
        else:
            runs.append([p, p + 1])
    return [(a, b) for a, b in runs]


@torch.no_grad()
def _predict_span(
    method: Method, ids: torch.Tensor, first: int, end: int, ledger: KVBytes | None
) -> torch.Tensor:
    """Predictions (end - first,) for positions first .. end - 1: prefill ids[:, :first], then feed
    ids[:, first : end - 1] with teacher forcing."""
    rest = ids[:, first : end - 1]
    cache = method.new_cache()
    with PeakBytes(cache) as peak:
        predicted = [method.prefill(ids[:, :first], cache, reserve=rest.shape[1]).argmax(-1)]  # (1,)
    prefill_bytes = method.cache_bytes(cache)
    if rest.shape[1]:
        predicted += [logits[0].argmax(-1) for _, logits in method.stream(rest, cache)]
    if ledger is not None:
        ledger.after_prefill = max(ledger.after_prefill, prefill_bytes)
        ledger.after_decode = max(ledger.after_decode, method.cache_bytes(cache))
        ledger.peak_prefill = max(ledger.peak_prefill, peak.bytes)
    return torch.cat(predicted)


@torch.no_grad()
def predict_answers(
    method: Method, input_ids: torch.Tensor, answer_positions: torch.Tensor, ledger: KVBytes | None = None
) -> torch.Tensor:
    """input_ids (L,), answer_positions (k,) -> the method's predicted ids at those positions (k,)."""
    ids = input_ids[None]  # (1, L)
    if not method.compresses_prompt:
        first = int(answer_positions.min())
        predicted = _predict_span(method, ids, first, ids.shape[1], ledger)  # positions first .. L - 1
        return predicted[answer_positions - first]
    by_position = {}
    for first, end in answer_runs(answer_positions):
        for offset, token in enumerate(_predict_span(method, ids, first, end, ledger)):
            by_position[first + offset] = token
    return torch.stack([by_position[int(p)] for p in answer_positions])


def score_example(
    method: Method, example: dict[str, torch.Tensor], ledger: KVBytes | None = None
) -> torch.Tensor:
    """Per-answer-token correctness (k,) bool for one example from data.synthetic."""
    positions = example["answer_positions"]
    return predict_answers(method, example["input_ids"], positions, ledger) == example["input_ids"][positions]
