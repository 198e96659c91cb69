"""MQAR in words, for pretrained models: "The code for apple is 417." pairs, real text, then the questions.

`data.synthetic.make_mqar_example` draws keys, values and filler as random token ids. A model trained on that
format learns it; a pretrained model never saw it, and on SmolLM2 every method scored 0% on it, full attention
included (bench-results/smollm2/control/mqar.md): the task measured the format, not the cache. This one is the
same task in a form a pretrained model reads:

    <intro> The code for apple is 417. ... The code for river is 902.  <held-out text>
    Now the codes you were asked to remember.
    The code for river is 902. The code for apple is 417. ...

`num_pairs` pairs with distinct key words and distinct 3-digit values, real corpus text as filler (its length
sets the distance), then `num_queries` of the keys asked in a random order, each followed by its value (the
answer: the value's tokens). The pieces are tokenized separately and concatenated, so an answer's ids are
exactly the ids of the value inside its pair. Answers come in runs of consecutive positions, one run per
question; a question is recalled when every token of its run is predicted (`eval/tasks/mqar.py`).

Levels: chance is 1/900 (the values are 3-digit numbers); knowing which values occurred but not which key
they belong to ("bag of values") scores 1/num_pairs.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerFast

from data.synthetic import Example, answer_example
from data.tokenizer import encode_batch

TEXT_MQAR_INTRO = "Here is a list of codes. Remember them all: you will be asked for some of them later.\n"
TEXT_MQAR_RECALL = "\n\nNow the codes you were asked to remember.\n"  # between the filler and the questions
TEXT_MQAR_PAIR = (
    "The code for ",
    " is",
    ".\n",
)  # the key word goes after the first piece, the value after " is"
# Distinct common nouns: each key is asked by its word, so the words must differ; 64 allow up to 64 pairs.
TEXT_MQAR_KEYS = (
    "apple", "river", "chair", "tiger", "cloud", "pencil", "garden", "window", "candle", "bottle", "mirror",
    "basket", "ladder", "rocket", "violin", "anchor", "castle", "forest", "island", "jacket", "kettle", "lemon",
    "magnet", "needle", "orange", "parrot", "rabbit", "saddle", "turtle", "valley", "wagon", "zebra", "bridge",
    "camera", "desert", "engine", "feather", "guitar", "hammer", "iceberg", "jungle", "kitten", "lantern",
    "monkey", "napkin", "oyster", "pillow", "quilt", "ribbon", "spider", "tomato", "umbrella", "volcano",
    "walnut", "yogurt", "button", "carpet", "dolphin", "falcon", "goblet", "helmet", "igloo", "marble", "otter",
)  # fmt: skip
TEXT_MQAR_VALUES = range(100, 1000)  # 3-digit values: chance is 1/900


def text_mqar_fixed_length(tokenizer: PreTrainedTokenizerFast, num_pairs: int, num_queries: int) -> int:
    """Upper bound on the tokens a text MQAR example needs besides filler: intro, pairs and questions with
    their answers, for any keys and values (each pair counted at the longest key and value)."""
    pieces = encode_batch(tokenizer, [TEXT_MQAR_INTRO, TEXT_MQAR_RECALL, *TEXT_MQAR_PAIR])
    intro, recall, start, is_, end = map(len, pieces)
    key = max(len(ids) for ids in encode_batch(tokenizer, list(TEXT_MQAR_KEYS)))
    value = max(len(ids) for ids in encode_batch(tokenizer, [f" {v}" for v in (100, 555, 999)]))
    return intro + recall + (num_pairs + num_queries) * (start + key + is_ + value + end) + value


def make_text_mqar_example(
    tokenizer: PreTrainedTokenizerFast,
    filler_ids: np.ndarray,
    num_pairs: int,
    num_queries: int,
    seq_len: int,
    rng: np.random.Generator,
) -> Example:
    """A text MQAR example of exactly `seq_len` tokens (see the module docstring). `filler_ids` (1-D) is
    held-out text as token ids; a window of it at a random offset (wrapping) fills the gap."""
    if not 1 <= num_pairs <= len(TEXT_MQAR_KEYS):
        raise ValueError(
            f"num_pairs = {num_pairs} is not allowed: between 1 and the {len(TEXT_MQAR_KEYS)} key words."
        )
    if not 1 <= num_queries <= num_pairs:
        raise ValueError(
            f"num_queries = {num_queries} is not allowed: between 1 and num_pairs = {num_pairs}."
        )
    filler_ids = np.asarray(filler_ids, dtype=np.int64).reshape(-1)
    if filler_ids.size == 0:
        raise ValueError("filler_ids = [] is not allowed: at least one token of filler text.")
    keys = rng.choice(len(TEXT_MQAR_KEYS), size=num_pairs, replace=False)
    values = TEXT_MQAR_VALUES.start + rng.choice(len(TEXT_MQAR_VALUES), size=num_pairs, replace=False)
    asked = rng.choice(num_pairs, size=num_queries, replace=False)
    words = [f"{TEXT_MQAR_PAIR[0]}{TEXT_MQAR_KEYS[k]}" for k in keys]  # "The code for apple"
    pieces = encode_batch(
        tokenizer,
        [TEXT_MQAR_INTRO, TEXT_MQAR_RECALL, *TEXT_MQAR_PAIR[1:], *words, *(f" {v}" for v in values)],
    )
    intro, recall, is_, end = (np.asarray(ids, dtype=np.int64) for ids in pieces[:4])
    asks = [np.concatenate([np.asarray(ids, dtype=np.int64), is_]) for ids in pieces[4 : 4 + num_pairs]]
    answers = [np.asarray(ids, dtype=np.int64) for ids in pieces[4 + num_pairs :]]
    pairs = [np.concatenate([asks[i], answers[i], end]) for i in range(num_pairs)]
    questions = [np.concatenate([asks[i], answers[i], end]) for i in asked]
    # The last question stops after its answer: the example ends on an answer, as passkey's does.
    questions[-1] = questions[-1][: len(asks[asked[-1]]) + len(answers[asked[-1]])]
    fixed = len(intro) + len(recall) + sum(map(len, pairs)) + sum(map(len, questions))
    gap = seq_len - fixed
    if gap < 0:
        raise ValueError(
            f"seq_len = {seq_len} is not allowed: at least {fixed} tokens for {num_pairs} pairs and "
            f"{num_queries} questions with this tokenizer."
        )
    start = int(rng.integers(len(filler_ids)))
    filler = filler_ids[(start + np.arange(gap)) % len(filler_ids)]  # (gap,) held-out text, wrapping
    ids = np.concatenate([intro, *pairs, filler, recall, *questions])  # (seq_len,)
    positions, at = [], len(ids) - sum(map(len, questions))
    for i, question in zip(asked, questions):
        first = at + len(asks[i])
        positions.append(first + np.arange(len(answers[i])))  # the value's tokens after " is"
        at += len(question)
    return answer_example(ids, np.concatenate(positions))
