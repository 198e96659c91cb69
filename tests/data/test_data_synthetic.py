"""Passkey and MQAR examples: exact lengths, recoverable answers, right answer positions and labels."""

from __future__ import annotations

import re
from functools import partial

import numpy as np
import pytest
import torch

from data import (
    IGNORE_INDEX,
    SyntheticDataset,
    make_mqar_example,
    make_passkey_example,
    mqar_token_ranges,
    passkey_min_length,
)
from data.synthetic import (
    PASSKEY_INTRO,
    PASSKEY_NEEDLE,
    PASSKEY_QUESTION,
    make_induction_example,
    make_text_copy_example,
)


@pytest.fixture
def filler(corpus) -> torch.Tensor:
    return corpus.validation.flatten()  # real corpus token ids


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0], ids=["depth-0", "depth-0.5", "depth-1"])
@pytest.mark.parametrize("context_len", [256, 1000], ids=["256-tokens", "1000-tokens"])
def test_passkey_answer_is_recoverable_and_positioned(tokenizer, filler, context_len, depth):
    example = make_passkey_example(tokenizer, filler, context_len, depth, np.random.default_rng(11))
    ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
    assert ids.shape == labels.shape == (context_len,) and ids.dtype == torch.long
    # The answer is the last tokens, and they decode to the 5-digit key.
    assert positions.tolist() == list(range(context_len - len(positions), context_len))
    key = tokenizer.decode(ids[positions].tolist())
    assert re.fullmatch(r" \d{5}", key)
    # The same key, with the very same token ids, is stated in the needle before the question.
    context = tokenizer.decode(ids[: positions[0]].tolist())
    assert f"The pass key is{key}." in context and context.endswith("What is the pass key? The pass key is")
    answer = ids[positions].tolist()
    starts = [i for i in range(positions[0] - len(answer)) if ids[i : i + len(answer)].tolist() == answer]
    assert starts
    # Labels: the answer tokens only (accuracy at p compares argmax(logits[p - 1]) with input_ids[p]).
    assert torch.equal(labels[positions], ids[positions])
    assert (labels != IGNORE_INDEX).sum() == len(positions)

    # The needle sits at the requested depth of the filler, to the token.
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    intro, pre, post, question = (encode(t) for t in (PASSKEY_INTRO, *PASSKEY_NEEDLE, PASSKEY_QUESTION))
    assert ids[: len(intro)].tolist() == intro
    needle_at = next(i for i in range(len(intro), context_len) if ids[i : i + len(pre)].tolist() == pre)
    filler_len = context_len - len(intro) - len(pre) - len(post) - len(question) - 2 * len(answer)
    assert needle_at - len(intro) == round(depth * filler_len)


def test_passkey_is_deterministic_and_keys_vary(tokenizer, filler):
    def make(seed):
        return make_passkey_example(tokenizer, filler, 300, 0.3, np.random.default_rng(seed))

    assert torch.equal(make(1)["input_ids"], make(1)["input_ids"])
    keys = {tokenizer.decode(make(s)["input_ids"][-6:].tolist()) for s in range(5)}
    assert len(keys) > 1


def test_passkey_needs_room(tokenizer, filler):
    too_short = passkey_min_length(tokenizer) - 2 * 6 - 1
    with pytest.raises(ValueError, match=rf"context_len = {too_short} .*at least"):
        make_passkey_example(tokenizer, filler, too_short, 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"depth = 1\.5 "):
        make_passkey_example(tokenizer, filler, 300, 1.5, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("pairs", "queries", "seq_len"), [(8, 8, 32), (16, 4, 512)], ids=["dense", "long-gap"]
)
def test_mqar_queries_have_their_answers_earlier(pairs, queries, seq_len):
    vocab = 400
    example = make_mqar_example(vocab, pairs, queries, seq_len, np.random.default_rng(5))
    ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
    assert ids.shape == labels.shape == (seq_len,) and positions.shape == (queries,)
    ranges = mqar_token_ranges(vocab)
    keys, values = ids[0 : 2 * pairs : 2].tolist(), ids[1 : 2 * pairs : 2].tolist()
    assert len(set(keys)) == pairs and all(k in ranges["keys"] for k in keys)
    assert all(v in ranges["values"] for v in values)
    assert all(t in ranges["filler"] for t in ids[2 * pairs : seq_len - 2 * queries].tolist())
    asked = []
    for p in positions.tolist():
        query = ids[p - 1].item()
        asked.append(query)
        assert query in keys  # the queried key is present earlier...
        assert ids[p].item() == values[keys.index(query)]  # ...and the answer is its value
    assert len(set(asked)) == queries
    assert torch.equal(labels[positions], ids[positions]) and (labels != IGNORE_INDEX).sum() == queries


def test_mqar_validates_sizes():
    with pytest.raises(ValueError, match=r"num_pairs = 200 .*100 distinct keys"):
        make_mqar_example(400, 200, 4, 1024, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"seq_len = 10 .*at least 2 \* \(num_pairs \+ num_queries\) = 12"):
        make_mqar_example(400, 4, 2, 10, np.random.default_rng(0))


def test_synthetic_dataset_items_depend_only_on_seed_and_index():
    dataset = SyntheticDataset(partial(make_mqar_example, 400, 4, 2, 64), size=10, seed=3)
    assert len(dataset) == 10
    assert torch.equal(dataset[7]["input_ids"], dataset[7]["input_ids"])
    assert not torch.equal(dataset[7]["input_ids"], dataset[8]["input_ids"])
    other_seed = SyntheticDataset(partial(make_mqar_example, 400, 4, 2, 64), size=10, seed=4)
    assert not torch.equal(dataset[7]["input_ids"], other_seed[7]["input_ids"])
    with pytest.raises(IndexError):
        dataset[10]


def test_text_copy_repeats_an_earlier_span_of_the_row(filler):
    row = filler[:128].numpy()
    for seed in range(20):
        example = make_text_copy_example(row, 16, np.random.default_rng(seed))
        ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
        assert positions.tolist() == list(range(113, 128))  # the copy's tokens after its first
        assert torch.equal(ids[:112], torch.from_numpy(row[:112]))  # the text before it is untouched
        starts = [a for a in range(0, 113 - 16) if torch.equal(ids[a : a + 16], ids[112:])]
        assert starts, "the last 16 tokens copy an earlier span"
        assert torch.equal(labels[positions], ids[positions]) and (labels != IGNORE_INDEX).sum() == 15
    with pytest.raises(
        ValueError, match=r"copy_span = 65 is not allowed: expected between 2 and seq_len / 2 = 64"
    ):
        make_text_copy_example(row, 65, np.random.default_rng(0))


def test_induction_rows_repeat_a_span_inside_each_segment():
    for seed in range(20):
        example = make_induction_example(400, 96, np.random.default_rng(seed), exclude=[0, 3])
        ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
        assert ((ids >= 0) & (ids < 400)).all() and not torch.isin(ids, torch.tensor([0, 3])).any()
        assert positions.tolist() == [p for end in (32, 64, 96) for p in range(end - 7, end)]
        for end in (32, 64, 96):  # each segment's last 8 ids repeat 8 ids 8..24 back, inside the segment
            starts = [a for a in range(end - 32, end - 15) if torch.equal(ids[a : a + 8], ids[end - 8 : end])]
            assert starts, f"segment ending at {end} repeats no earlier span"
        assert torch.equal(labels[positions], ids[positions]) and (labels != IGNORE_INDEX).sum() == 21
    with pytest.raises(ValueError, match=r"segment = 32, span = 8 are not allowed with seq_len = 16"):
        make_induction_example(400, 16, np.random.default_rng(0))


def test_induction_lookback_reaches_across_segments_as_far_as_the_row_allows():
    """With `lookback` each segment still ends in a repeat, but its source lies 8 to min(lookback, tokens
    before it) back, so later segments copy from earlier ones; with the same rng and no lookback, the rows
    are the ones the default always drew."""
    distances = []
    for seed in range(40):
        example = make_induction_example(4000, 512, np.random.default_rng(seed), lookback=200)
        ids = example["input_ids"]
        assert example["answer_positions"].tolist() == [
            p for e in range(32, 513, 32) for p in range(e - 7, e)
        ]
        for end in range(32, 513, 32):
            found = [
                d for d in range(8, end - 7) if torch.equal(ids[end - 8 - d : end - d], ids[end - 8 : end])
            ]
            assert found and min(found) <= min(200, end - 8), f"segment ending at {end}"
            distances.append(min(found))
    assert max(distances) > 150 and min(distances) == 8  # long and short look-backs in the same rows
    default = make_induction_example(4000, 512, np.random.default_rng(7))
    assert torch.equal(
        default["input_ids"],
        make_induction_example(4000, 512, np.random.default_rng(7), lookback=None)["input_ids"],
    )
    with pytest.raises(
        ValueError, match=r"lookback = 512 is not allowed: span = 8 <= lookback < seq_len = 512"
    ):
        make_induction_example(4000, 512, np.random.default_rng(0), lookback=512)


def test_induction_rows_draw_from_the_whole_vocabulary():
    """A head trained on part of the vocabulary copies only that part (docs/design.md §8.7), so every id
    but the excluded ones occurs: low ids (a BPE's digits and single bytes) included."""
    seen = torch.cat(
        [
            make_induction_example(64, 96, np.random.default_rng(s), exclude=[0])["input_ids"]
            for s in range(20)
        ]
    )
    assert set(seen.tolist()) == set(range(1, 64))
