"""Recall tasks whose distances are set exactly, on a small synthetic vocabulary, and a curriculum over their
number of pairs (docs/design.md §8: answer-only loss, many examples, pairs growing with accuracy).

Every example is a dict of int64 tensors, as in `data.synthetic`: `input_ids` (T,), `labels` (T,) equal to
`input_ids` at the answers and -100 elsewhere (answer-only loss), `answer_positions` (n,) and `distances`
(n,), the distance of each answer to the token it must recall. Accuracy at an answer position `p` means
`argmax(logits[p - 1]) == input_ids[p]`.

**Distance.** The distance of an answer is `answer position - position of the value it repeats`, which is
also `query position - position of the key`: the query at `p - 1` must find its key `d` tokens back. A
query sees its key in its own window when `d < window` (a query always sees the last `window` tokens),
possibly through the layers below when `d < num_layers * (window + chunk_size)` (each layer sees up to
`window + chunk_size` tokens back), and only through the memory beyond that (`distance_buckets`).

Vocabulary (`recall_token_ranges`, vocabulary V): specials [0, 4) (`NEEDLE`, `QUESTION`), filler [4, V/2),
keys [V/2, 3V/4), values [3V/4, V); the ranges are disjoint, so a key never occurs as filler or as a value.

- **Key-value** (`make_kv_example`): `n` pairs `k v` placed in filler so that the query of slot `j`, at
  `T - 2n + 2j`, is exactly `distances[j]` tokens after its pair; the queries fill the end of the row, each
  followed by its value (the answer). Keys are distinct, and so are values: knowing which values occurred
  but not which key they belong to ("bag of values") scores 1/n, chance is 1/(number of values).
- **Passkey** (`make_passkey_example`): `NEEDLE k1..kn` at exactly `distance` tokens before
  `QUESTION k1..kn`, which ends the row; the answers are the `n` key tokens after `QUESTION` (distinct
  values, so the same two levels apply).
- **Copy** (`make_copy_example`, a training aid, not scored): a span of random tokens from the whole
  non-special vocabulary, repeated exactly `distance` tokens later at the end of the row; the answers are
  the span's tokens after its first. Every answer is an induction step (find the previous occurrence of
  this token, emit the one after it) at a distance that varies by row, so it cannot be solved by position.
  This dense signal is what let the recall study's models bind keys to values: full attention reaches 99%
  training accuracy at 8 pairs by step 1,500 with 32 short copy rows a step (both seeds), 60% without them
  (docs/design.md §8.3).

`RecallCurriculum` holds the current number of pairs (a passkey's key length): it starts at `start_pairs`
and multiplies by `growth` up to `max_pairs` whenever the accuracy the training loop measured on the current
level reaches `threshold`. `make_recall_batch` draws a batch at a level, one task per row, each answer's
distance drawn from a bucket picked uniformly (so every bucket gets a third of the answers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data.synthetic import Example, answer_example, repeat_span_at_end

RECALL_TASKS = ("kv", "passkey")  # the scored tasks
TRAINING_TASKS = (*RECALL_TASKS, "copy")
NEEDLE, QUESTION = 1, 2  # passkey markers; 0 and 3 are reserved
NUM_SPECIALS = 4
MIN_RECALL_VOCAB = 16
BUCKETS = ("near", "reach", "far")


def invalid(field_name: str, value: Any, allowed: str) -> ValueError:
    """The error every recall check raises: field, value, what is allowed."""
    return ValueError(f"recall.{field_name} = {value!r} is not allowed: {allowed}.")


def answer_correct(logits: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: `argmax(logits[p - 1]) == input_ids[p]` at each answer position `p` of `positions`
    (B, n); `logits` (B, T, V), `input_ids` (B, T)."""
    predicted = logits.gather(1, (positions - 1)[..., None].expand(-1, -1, logits.shape[-1])).argmax(-1)
    return predicted == input_ids.gather(1, positions)


def recall_token_ranges(vocab_size: int) -> dict[str, range]:
    """Disjoint id ranges: specials [0, 4), filler [4, V/2), keys [V/2, 3V/4), values [3V/4, V)."""
    if not _is_int(vocab_size) or vocab_size < MIN_RECALL_VOCAB:
        raise invalid("vocab_size", vocab_size, f"an integer >= {MIN_RECALL_VOCAB}")
    quarter = vocab_size // 4
    return {
        "filler": range(NUM_SPECIALS, 2 * quarter),
        "keys": range(2 * quarter, 3 * quarter),
        "values": range(3 * quarter, vocab_size),
    }


def max_recall_pairs(vocab_size: int) -> int:
    """Pairs a row can hold with distinct keys and distinct values."""
    ranges = recall_token_ranges(vocab_size)
    return min(len(ranges["keys"]), len(ranges["values"]))


def stacked_reach(window: int, chunk_size: int, num_layers: int) -> int:
    """`L·(W+C)`: how far back the windows of `num_layers` stacked layers can carry a token at most."""
    return num_layers * (window + chunk_size)


def distance_buckets(
    window: int, chunk_size: int, num_layers: int, seq_len: int
) -> dict[str, tuple[int, int]]:
    """Inclusive distance ranges: `near` [1, W), `reach` [W, L·(W+C)), `far` [L·(W+C), T); empty ones left out."""
    reach = stacked_reach(window, chunk_size, num_layers)
    bounds = {"near": (1, window - 1), "reach": (window, reach - 1), "far": (reach, seq_len - 1)}
    return {
        name: (lo, min(hi, seq_len - 1)) for name, (lo, hi) in bounds.items() if lo <= min(hi, seq_len - 1)
    }


def bucket_of(distance: int, window: int, chunk_size: int, num_layers: int) -> str:
    """`near` (d < W), `reach` (W <= d < L·(W+C)) or `far` (d >= L·(W+C))."""
    if distance < window:
        return "near"
    return "reach" if distance < stacked_reach(window, chunk_size, num_layers) else "far"


def kv_query_positions(seq_len: int, num_pairs: int) -> np.ndarray:
    """Positions (n,) of the queries of a key-value row: the row ends with `q1 a1 ... qn an`."""
    return seq_len - 2 * num_pairs + 2 * np.arange(num_pairs)


def sample_kv_distances(
    seq_len: int, num_pairs: int, ranges: Sequence[tuple[int, int]], rng: np.random.Generator
) -> np.ndarray:
    """Distances (n,), one per query slot, that `make_kv_example` can place without pairs overlapping.

    Slots are filled in random order; each picks one of `ranges` (inclusive `(lo, hi)`) uniformly, then a
    distance uniformly among those in it whose pair lands on two free positions before the queries (another
    range if none does). Raises `ValueError` when some slot has no free place in any range."""
    queries = kv_query_positions(seq_len, num_pairs)
    used = np.zeros(seq_len - 2 * num_pairs, dtype=bool)  # positions before the queries
    starts = np.arange(len(used) - 1)  # a pair at k takes k and k + 1
    distances = np.zeros(num_pairs, dtype=np.int64)
    for slot in rng.permutation(num_pairs):
        free = starts[~used[starts] & ~used[starts + 1]]
        for i in rng.permutation(len(ranges)):
            lo, hi = ranges[i]
            candidates = free[(queries[slot] - free >= lo) & (queries[slot] - free <= hi)]
            if len(candidates):
                key_at = int(rng.choice(candidates))
                used[key_at : key_at + 2] = True
                distances[slot] = queries[slot] - key_at
                break
        else:
            raise ValueError(
                f"num_pairs = {num_pairs} is not allowed with seq_len = {seq_len} and distances in {list(ranges)}: "
                "no free place left for a pair; use fewer pairs, a longer row or wider ranges."
            )
    return distances


def make_kv_example(
    vocab_size: int, seq_len: int, distances: Sequence[int], rng: np.random.Generator
) -> Example:
    """A key-value row of exactly `seq_len` tokens whose query `j` (at `T - 2n + 2j`) is exactly
    `distances[j]` tokens after its key; `n = len(distances)` pairs, distinct keys, distinct values."""
    distances = np.asarray(distances, dtype=np.int64).reshape(-1)
    num_pairs = len(distances)
    ranges = recall_token_ranges(vocab_size)
    if not 1 <= num_pairs <= max_recall_pairs(vocab_size):
        raise invalid(
            "num_pairs", num_pairs, f"between 1 and {max_recall_pairs(vocab_size)} (distinct keys and values)"
        )
    queries = kv_query_positions(seq_len, num_pairs)
    key_at = queries - distances
    occupied = np.concatenate([key_at, key_at + 1])
    if (key_at < 0).any() or (key_at + 1 >= queries[0]).any() or len(np.unique(occupied)) != 2 * num_pairs:
        raise ValueError(
            f"distances = {distances.tolist()} is not allowed with seq_len = {seq_len}: every pair must lie "
            f"before the queries (query j at {queries[0]} + 2j) without overlapping another pair."
        )
    keys = ranges["keys"].start + rng.choice(len(ranges["keys"]), size=num_pairs, replace=False)
    values = ranges["values"].start + rng.choice(len(ranges["values"]), size=num_pairs, replace=False)
    ids = rng.integers(ranges["filler"].start, ranges["filler"].stop, size=seq_len)
    ids[key_at], ids[key_at + 1] = keys, values
    ids[queries], ids[queries + 1] = keys, values
    return answer_example(ids, queries + 1, distances=distances)


def make_passkey_example(
    vocab_size: int, seq_len: int, distance: int, key_len: int, rng: np.random.Generator
) -> Example:
    """`... NEEDLE k1..kn ... QUESTION k1..kn` of exactly `seq_len` tokens, QUESTION exactly `distance` tokens
    after NEEDLE; the answers are the last `key_len` tokens, each `distance` tokens after its copy."""
    ranges = recall_token_ranges(vocab_size)
    if not 1 <= key_len <= len(ranges["values"]):
        raise invalid("key_len", key_len, f"between 1 and the {len(ranges['values'])} distinct values")
    question = seq_len - 1 - key_len
    if not key_len < distance <= question:
        raise ValueError(
            f"distance = {distance} is not allowed with seq_len = {seq_len} and key_len = {key_len}: "
            f"between {key_len + 1} (after the key) and {question} (the needle inside the row)."
        )
    needle = question - distance
    key = ranges["values"].start + rng.choice(len(ranges["values"]), size=key_len, replace=False)
    ids = rng.integers(ranges["filler"].start, ranges["filler"].stop, size=seq_len)
    ids[needle], ids[question] = NEEDLE, QUESTION
    ids[needle + 1 : needle + 1 + key_len] = key
    ids[question + 1 :] = key
    return answer_example(ids, question + 1 + np.arange(key_len), distances=np.full(key_len, distance))


def make_copy_example(
    vocab_size: int, seq_len: int, distance: int, span: int, rng: np.random.Generator
) -> Example:
    """`... x1..xn ... x1..xn` of exactly `seq_len` random tokens (specials excluded), the second copy ending
    the row exactly `distance` tokens after the first; the answers are `x2..xn` of the second copy."""
    if not _is_int(span) or span < 2:
        raise invalid("copy_span", span, "an integer >= 2 (the first token of a copy cannot be predicted)")
    if not span <= distance <= seq_len - span:
        raise ValueError(
            f"distance = {distance} is not allowed with seq_len = {seq_len} and copy_span = {span}: between "
            f"{span} (copies apart) and {seq_len - span} (the first copy inside the row)."
        )
    ids = rng.integers(NUM_SPECIALS, vocab_size, size=seq_len)
    return repeat_span_at_end(ids, distance, span, distances=np.full(span - 1, distance))


def sample_passkey_distance(
    seq_len: int, key_len: int, ranges: Sequence[tuple[int, int]], rng: np.random.Generator
) -> int:
    """A distance for `make_passkey_example`: a range picked uniformly among those with a valid distance,
    then a distance uniformly in it."""
    return _sample_distance(key_len + 1, seq_len - 1 - key_len, ranges, rng, f"key_len = {key_len}", seq_len)


def _sample_distance(
    low: int, high: int, ranges: Sequence[tuple[int, int]], rng: np.random.Generator, what: str, seq_len: int
) -> int:
    """A distance in `[low, high]`: one of `ranges` overlapping it picked uniformly, then a distance in it."""
    valid = [(max(lo, low), min(hi, high)) for lo, hi in ranges if max(lo, low) <= min(hi, high)]
    if not valid:
        raise ValueError(
            f"{what} is not allowed with seq_len = {seq_len} and distances in {list(ranges)}: "
            f"its distance lies in [{low}, {high}]."
        )
    lo, hi = valid[int(rng.integers(len(valid)))]
    return int(rng.integers(lo, hi + 1))


def make_recall_example(
    task: str, vocab_size: int, seq_len: int, num_pairs: int, ranges: Sequence[tuple[int, int]], rng
) -> Example:
    """One row of `task` at `num_pairs` pairs (a passkey: a key of `num_pairs` tokens; a copy: a span of
    `num_pairs` tokens), distances drawn from `ranges` (see `sample_kv_distances`)."""
    if task == "kv":
        return make_kv_example(vocab_size, seq_len, sample_kv_distances(seq_len, num_pairs, ranges, rng), rng)
    if task == "passkey":
        distance = sample_passkey_distance(seq_len, num_pairs, ranges, rng)
        return make_passkey_example(vocab_size, seq_len, distance, num_pairs, rng)
    if task == "copy":
        distance = _sample_distance(
            num_pairs, seq_len - num_pairs, ranges, rng, f"copy_span = {num_pairs}", seq_len
        )
        return make_copy_example(vocab_size, seq_len, distance, num_pairs, rng)
    raise invalid("tasks", task, f"drawn from {list(TRAINING_TASKS)}")


def make_recall_batch(
    tasks: Sequence[str],
    vocab_size: int,
    seq_len: int,
    num_pairs: int,
    ranges: Sequence[tuple[int, int]],
    batch_size: int,
    rng: np.random.Generator,
) -> dict[str, torch.Tensor]:
    """`batch_size` rows, each of a task drawn uniformly from `tasks`: `input_ids`/`labels` (B, T) and
    `answer_positions`/`distances` (B, n) int64, plus `tasks` (B,) the index of each row's task in `tasks`."""
    picks = rng.integers(len(tasks), size=batch_size)
    rows = [make_recall_example(tasks[t], vocab_size, seq_len, num_pairs, ranges, rng) for t in picks]
    batch = {name: torch.stack([row[name] for row in rows]) for name in rows[0]}
    batch["tasks"] = torch.from_numpy(picks.astype(np.int64))
    return batch


@dataclass
class RecallCurriculum:
    """The number of pairs to train on now: starts at `start_pairs`, and `update(accuracy)` multiplies it by
    `growth` (up to `max_pairs`) when the accuracy measured on the current level is at least `threshold`.
    `levels` records `(update count, pairs)` at each change, starting with `(0, start_pairs)`."""

    start_pairs: int = 1
    max_pairs: int = 8
    threshold: float = 0.9
    growth: int = 2
    num_pairs: int = field(init=False)
    updates: int = field(init=False, default=0)
    levels: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        for name in ("start_pairs", "max_pairs", "growth"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < (2 if name == "growth" else 1):
                raise invalid(
                    name, getattr(self, name), "an integer >= 2" if name == "growth" else "a positive integer"
                )
        if self.start_pairs > self.max_pairs:
            raise invalid("start_pairs", self.start_pairs, f"at most max_pairs = {self.max_pairs}")
        if not _is_number(self.threshold) or not 0 < self.threshold <= 1:
            raise invalid("threshold", self.threshold, "a fraction in (0, 1]")
        self.num_pairs = self.start_pairs
        self.levels = [(0, self.start_pairs)]

    def update(self, accuracy: float) -> bool:
        """Record the accuracy measured at the current level; return whether the level grew."""
        if not _is_number(accuracy) or not 0 <= accuracy <= 1:
            raise ValueError(f"accuracy = {accuracy!r} is not allowed: a fraction in [0, 1].")
        self.updates += 1
        if accuracy < self.threshold or self.num_pairs >= self.max_pairs:
            return False
        self.num_pairs = min(self.max_pairs, self.num_pairs * self.growth)
        self.levels.append((self.updates, self.num_pairs))
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_pairs": self.num_pairs,
            "updates": self.updates,
            "levels": [list(x) for x in self.levels],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_pairs, self.updates = int(state["num_pairs"]), int(state["updates"])
        self.levels = [(int(u), int(p)) for u, p in state["levels"]]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)
    )
