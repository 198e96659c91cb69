"""Synthetic long-context tasks: passkey retrieval and multi-query associative recall (MQAR).

Every example is a dict of int64 tensors: `input_ids` (L,), `labels` (L,) equal to `input_ids` at the answer
positions and -100 elsewhere, and `answer_positions` (k,). Exact-match accuracy at an answer position `p`
means `argmax(logits[p - 1]) == input_ids[p]` (HF convention: the model shifts labels internally).

The example makers are plain functions of an `np.random.Generator`, so the same call with the same
generator state gives the same example; `eval/` calls them over a grid, and training mixes them in through
`data.mixer.SyntheticMixer`, seeded by `(seed, position)` so that a resumed run draws the same ones.

- **Passkey** (`make_passkey_example`): an instruction, filler made of real corpus token ids, a needle
  "The pass key is <5 digits>." at a chosen depth in the filler, then the question and the answer. The
  pieces are tokenized separately and concatenated, so the answer tokens are exactly the tokens of the key
  piece " <key>", which also appears verbatim (same ids) inside the needle.
- **MQAR** (`make_mqar_example`): `num_pairs` key→value pairs, random filler tokens, then `num_queries`
  distinct keys of those pairs each followed by its value (the answer). Keys, values and filler come from
  disjoint id ranges (`mqar_token_ranges`), so a key id never occurs in the filler or as a value.
- **Copy** (`make_text_copy_example`): the row's own text with its last `copy_span` tokens replaced by a
  copy of an earlier span, at a distance drawn uniformly by row; the answers are the copy after its first
  token. Each is an induction step on real tokens (what passkey and MQAR need), many per row.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from data.config import INDUCTION_SEGMENT, INDUCTION_SPAN, invalid
from data.tokenizer import encode_batch

IGNORE_INDEX = -100
PASSKEY_INTRO = (
    "Somewhere in the long text below there is a pass key. "
    "Find it and keep it in mind: you will be asked for it at the end.\n"
)
PASSKEY_NEEDLE = ("\nThe pass key is", ". Remember it.\n")  # the key piece " <key>" goes between
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"
PASSKEY_KEY_BYTES = 6  # " 12345": a key piece is at most this many tokens (byte-level BPE: tokens <= bytes)

Example = dict[str, torch.Tensor]


def make_passkey_example(
    tokenizer: PreTrainedTokenizerFast,
    filler_ids: np.ndarray | torch.Tensor,
    context_len: int,
    depth: float,
    rng: np.random.Generator,
) -> Example:
    """A passkey example of exactly `context_len` tokens.

    `filler_ids` (1-D) is real corpus text as token ids (e.g. `corpus.validation.flatten()`); a contiguous
    window of it at a random offset fills the context (wrapping around if it is too short). `depth` in
    [0, 1] places the needle: 0 right after the instruction, 1 right before the question. The key is a
    random 5-digit number. The answer is the last `len(answer_positions)` tokens."""
    if not 0 <= depth <= 1:
        raise ValueError(
            f"depth = {depth!r} is not allowed: a fraction in [0, 1] of the filler before the needle."
        )
    filler_ids = np.asarray(filler_ids, dtype=np.int64).reshape(-1)
    if filler_ids.size == 0:
        raise ValueError("filler_ids = [] is not allowed: at least one token of filler text.")
    key = f" {int(rng.integers(10_000, 100_000))}"
    pieces = [PASSKEY_INTRO, PASSKEY_NEEDLE[0], key, PASSKEY_NEEDLE[1], PASSKEY_QUESTION]
    intro, needle_start, answer, needle_end, question = (
        np.asarray(ids, dtype=np.int64) for ids in encode_batch(tokenizer, pieces)
    )
    needle = np.concatenate([needle_start, answer, needle_end])
    filler_len = context_len - len(intro) - len(needle) - len(question) - len(answer)
    if filler_len < 0:
        raise ValueError(
            f"context_len = {context_len} is not allowed: at least {context_len - filler_len} tokens for the "
            "passkey's instruction, needle, question and answer with this tokenizer."
        )
    start = int(rng.integers(len(filler_ids)))
    filler = filler_ids[(start + np.arange(filler_len)) % len(filler_ids)]  # (filler_len,) window, wrapping
    before = round(depth * filler_len)
    # (context_len,) instruction, filler, needle, filler, question, answer
    ids = np.concatenate([intro, filler[:before], needle, filler[before:], question, answer])
    return answer_example(ids, np.arange(context_len - len(answer), context_len))


def make_passkey_grid(
    tokenizer: PreTrainedTokenizerFast,
    filler_ids: np.ndarray,
    lengths: list[int],
    depths: list[float],
    samples: int,
    seed: int,
) -> dict[tuple[int, float], list[Example]]:
    """Passkey examples over a grid: cell (length, depth) -> `samples` examples, each drawn from its own
    generator seeded by (seed, length index, depth index, sample), so a cell never depends on the others. The
    passkey eval (`eval/tasks/passkey.py`) and the training probe (`training/probe.py`) draw from it."""
    grid = {}
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            grid[length, depth] = [
                make_passkey_example(
                    tokenizer, filler_ids, length, depth, np.random.default_rng([seed, i, j, k])
                )
                for k in range(samples)
            ]
    return grid


def passkey_min_length(tokenizer: PreTrainedTokenizerFast) -> int:
    """Upper bound on the tokens a passkey example needs besides filler, for any key."""
    fixed = encode_batch(tokenizer, [PASSKEY_INTRO, *PASSKEY_NEEDLE, PASSKEY_QUESTION])
    return sum(len(ids) for ids in fixed) + 2 * PASSKEY_KEY_BYTES


def mqar_token_ranges(vocab_size: int) -> dict[str, range]:
    """Disjoint id ranges for MQAR: filler [V/4, V/2), keys [V/2, 3V/4), values [3V/4, V).

    The lowest quarter is left out because tokenizers put special tokens and raw bytes there. Pass the size
    of the tokenizer's base vocabulary (`tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False)`),
    so that added special tokens above it are never drawn."""
    quarter = vocab_size // 4
    return {
        "filler": range(quarter, 2 * quarter),
        "keys": range(2 * quarter, 3 * quarter),
        "values": range(3 * quarter, vocab_size),
    }


def make_mqar_example(
    vocab_size: int, num_pairs: int, num_queries: int, seq_len: int, rng: np.random.Generator
) -> Example:
    """An MQAR example of exactly `seq_len` tokens:
    `k1 v1 ... kn vn  f f ... f  q1 a1 ... qm am` with distinct keys, `q_i` distinct keys among the `k`,
    `a_i` the value paired with `q_i`; `answer_positions` are the positions of the `a_i`. The filler length
    `seq_len - 2 * (num_pairs + num_queries)` sets the distance between the pairs and the queries."""
    ranges = mqar_token_ranges(vocab_size)
    if not 1 <= num_pairs <= len(ranges["keys"]):
        raise ValueError(
            f"num_pairs = {num_pairs} is not allowed: between 1 and the {len(ranges['keys'])} distinct keys a "
            f"vocabulary of {vocab_size} offers."
        )
    if not 1 <= num_queries <= num_pairs:
        raise ValueError(
            f"num_queries = {num_queries} is not allowed: between 1 and num_pairs = {num_pairs}."
        )
    gap = seq_len - 2 * (num_pairs + num_queries)
    if gap < 0:
        raise ValueError(
            f"seq_len = {seq_len} is not allowed: at least 2 * (num_pairs + num_queries) = {seq_len - gap}."
        )
    keys = ranges["keys"].start + rng.choice(len(ranges["keys"]), size=num_pairs, replace=False)
    values = rng.integers(ranges["values"].start, ranges["values"].stop, size=num_pairs)
    asked = rng.choice(num_pairs, size=num_queries, replace=False)
    filler = rng.integers(ranges["filler"].start, ranges["filler"].stop, size=gap)
    pairs = np.stack([keys, values], axis=1).reshape(-1)  # (2n,) k1 v1 k2 v2 ...
    queries = np.stack([keys[asked], values[asked]], axis=1).reshape(-1)  # (2m,) q1 a1 q2 a2 ...
    ids = np.concatenate([pairs, filler, queries])  # (seq_len,)
    return answer_example(ids, 2 * num_pairs + gap + 2 * np.arange(num_queries) + 1)


def make_text_copy_example(row_ids: np.ndarray, span: int, rng: np.random.Generator) -> Example:
    """`row_ids` (T,) text whose last `span` tokens become a copy of the span `distance` tokens earlier,
    `distance` uniform in [span, T - span]; the answers are the copy's tokens after its first."""
    ids = np.array(row_ids, dtype=np.int64).reshape(-1)
    seq_len = len(ids)
    if not 2 <= span <= seq_len // 2:
        raise invalid("copy_span", span, f"between 2 and seq_len / 2 = {seq_len // 2}")
    return repeat_span_at_end(ids, int(rng.integers(span, seq_len - span + 1)), span)


def make_induction_example(
    vocab_size: int,
    seq_len: int,
    rng: np.random.Generator,
    segment: int = INDUCTION_SEGMENT,
    span: int = INDUCTION_SPAN,
    exclude: Sequence[int] = (),
    lookback: int | None = None,
) -> Example:
    """`seq_len` random ids from the whole vocabulary but `exclude` (the tokenizer's special ids), cut into
    `seq_len // segment` segments; each segment's last `span` ids repeat the `span` ids `distance` earlier.
    `distance` is uniform per segment in [span, segment - span] (inside the segment), or with `lookback` in
    [span, min(lookback, tokens before the repeat)]: the source may lie in any earlier segment, so a row of
    many segments trains long and short look-backs at once, with as many answers as short rows. Answers:
    every repeated id after its segment's first (span - 1 each). Every id a text may hold occurs: a head
    trained on part of the vocabulary copies only that part (docs/design.md §8.7: ids from [V/4, V) gave 87%
    there and 0% on digits)."""
    if not 2 <= span <= segment // 2 or segment > seq_len:
        raise ValueError(
            f"segment = {segment}, span = {span} are not allowed with seq_len = {seq_len}: "
            "2 <= span <= segment / 2 and segment <= seq_len."
        )
    if lookback is not None and not span <= lookback < seq_len:
        raise ValueError(
            f"lookback = {lookback} is not allowed: span = {span} <= lookback < seq_len = {seq_len}."
        )
    allowed = _ids_but(vocab_size, tuple(exclude))  # (V - specials,)
    ids = allowed[rng.integers(0, len(allowed), size=seq_len)]  # (seq_len,)
    answers = []
    for end in range(segment, seq_len + 1, segment):
        # The repeat fills ids[end - span : end]; its source must start at or after 0.
        farthest = segment - span if lookback is None else min(lookback, end - span)
        distance = int(rng.integers(span, farthest + 1))
        answers.append(repeat_span_in_place(ids[:end], distance, span))
    return answer_example(ids, np.concatenate(answers))


@functools.lru_cache(maxsize=8)
def _ids_but(vocab_size: int, exclude: tuple[int, ...]) -> np.ndarray:
    """Every id below `vocab_size` but `exclude`; built once per vocabulary, not once per training row."""
    allowed = np.setdiff1d(np.arange(vocab_size), np.asarray(exclude, dtype=np.int64))
    allowed.flags.writeable = False  # shared by every call
    return allowed


def repeat_span_at_end(ids: np.ndarray, distance: int, span: int, **extra: np.ndarray) -> Example:
    """The example of `ids` (T,) after `repeat_span_in_place`."""
    return answer_example(ids, repeat_span_in_place(ids, distance, span), **extra)


def repeat_span_in_place(ids: np.ndarray, distance: int, span: int) -> np.ndarray:
    """Overwrite the last `span` tokens of `ids` (T,), in place, by the span `distance` tokens before them;
    return the answer positions, the repeat's tokens after its first (the first cannot be predicted)."""
    copy_at = len(ids) - span
    ids[copy_at:] = ids[copy_at - distance : copy_at - distance + span]
    return copy_at + 1 + np.arange(span - 1)


def answer_example(ids: np.ndarray, answer_positions: np.ndarray, **extra: np.ndarray) -> Example:
    """The example dict: answer-only labels, plus any `extra` int64 fields (e.g. `distances`)."""
    # Built in numpy and wrapped: tiny torch ops can stall on a busy intra-op thread pool (see loader.py).
    ids = ids.astype(np.int64)
    labels = np.full_like(ids, IGNORE_INDEX)
    labels[answer_positions] = ids[answer_positions]
    fields = {"input_ids": ids, "labels": labels, "answer_positions": answer_positions, **extra}
    return {name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in fields.items()}


class SyntheticDataset(torch.utils.data.Dataset):
    """A map-style dataset of `size` examples; item `i` is `make_example(np.random.default_rng([seed, i]))`,
    so it does not depend on access order. E.g.
    `SyntheticDataset(functools.partial(make_passkey_example, tok, filler, 4096, 0.5), size=50, seed=0)`."""

    def __init__(self, make_example: Callable[[np.random.Generator], Example], size: int, seed: int) -> None:
        self.make_example, self.size, self.seed = make_example, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.make_example(np.random.default_rng([self.seed, index]))
