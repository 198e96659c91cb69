"""Recall rows (data/recall.py): distances set exactly, every bucket reached, answer-only labels, and the
curriculum that grows the number of pairs with accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data import IGNORE_INDEX
from data.recall import (
    NEEDLE,
    QUESTION,
    RecallCurriculum,
    distance_buckets,
    kv_query_positions,
    make_copy_example,
    make_kv_example,
    make_passkey_example,
    make_recall_batch,
    recall_token_ranges,
    sample_kv_distances,
)

VOCAB, SEQ_LEN = 128, 256
BUCKETS = distance_buckets(window=32, chunk_size=16, num_layers=2, seq_len=SEQ_LEN)  # far: d >= 96


@pytest.mark.parametrize(
    "distances",
    [[5], [200, 7], [40, 100, 180, 2 + 2 * 3 + 1]],
    ids=["one-near", "far-and-near", "all-buckets"],
)
def test_kv_distances_are_exact(distances):
    example = make_kv_example(VOCAB, SEQ_LEN, distances, np.random.default_rng(0))
    ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
    ranges = recall_token_ranges(VOCAB)
    assert ids.shape == labels.shape == (SEQ_LEN,)
    assert example["distances"].tolist() == distances
    assert (positions - 1).tolist() == kv_query_positions(
        SEQ_LEN, len(distances)
    ).tolist()  # queries at the end
    for answer, d in zip(positions.tolist(), distances):
        query = answer - 1
        assert ids[query] in ranges["keys"] and ids[answer] in ranges["values"]
        assert ids[query - d] == ids[query] and ids[answer - d] == ids[answer]  # the pair, exactly d back
        assert (ids == ids[query]).sum() == 2  # the key occurs in its pair and its query only
    keys = ids[positions - 1]
    values = ids[positions]
    assert len(set(keys.tolist())) == len(set(values.tolist())) == len(distances)  # distinct: bag = 1/n
    # Answer-only loss: labels at the answers, -100 everywhere else.
    assert torch.equal(labels[positions], ids[positions]) and (labels != IGNORE_INDEX).sum() == len(distances)


@pytest.mark.parametrize(
    ("distance", "key_len"), [(3, 2), (150, 1), (240, 4)], ids=["near", "far", "far-long-key"]
)
def test_passkey_distance_is_exact(distance, key_len):
    example = make_passkey_example(VOCAB, SEQ_LEN, distance, key_len, np.random.default_rng(1))
    ids, positions = example["input_ids"], example["answer_positions"]
    question = SEQ_LEN - 1 - key_len
    assert positions.tolist() == list(range(question + 1, SEQ_LEN))
    assert ids[question] == QUESTION and ids[question - distance] == NEEDLE
    assert (ids == NEEDLE).sum() == 1 and (ids == QUESTION).sum() == 1
    assert torch.equal(ids[positions - distance], ids[positions])  # each key token, exactly d back
    assert example["distances"].tolist() == [distance] * key_len
    assert (example["labels"] != IGNORE_INDEX).sum() == key_len


@pytest.mark.parametrize(
    ("distance", "span"), [(16, 16), (31, 16), (240, 4)], ids=["adjacent", "window", "far"]
)
def test_copy_distance_is_exact(distance, span):
    example = make_copy_example(VOCAB, SEQ_LEN, distance, span, np.random.default_rng(2))
    ids, labels, positions = example["input_ids"], example["labels"], example["answer_positions"]
    copy_at = SEQ_LEN - span
    assert positions.tolist() == list(range(copy_at + 1, SEQ_LEN))  # x2..xn of the copy ending the row
    assert torch.equal(ids[copy_at:], ids[copy_at - distance : copy_at - distance + span])
    assert torch.equal(ids[positions], ids[positions - distance])
    assert example["distances"].tolist() == [distance] * (span - 1)
    assert int(ids.min()) >= 4  # no specials
    assert torch.equal(labels[positions], ids[positions]) and (labels != IGNORE_INDEX).sum() == span - 1


def test_copy_rows_sample_distances_from_the_ranges():
    batch = make_recall_batch(["copy"], VOCAB, SEQ_LEN, 16, [(16, 31)], 8, np.random.default_rng(3))
    assert batch["input_ids"].shape == (8, SEQ_LEN)
    assert ((batch["distances"] >= 16) & (batch["distances"] <= 31)).all()
    with pytest.raises(ValueError, match=r"copy_span = 16 is not allowed with seq_len = 256.*\[16, 240\]"):
        make_recall_batch(["copy"], VOCAB, SEQ_LEN, 16, [(1, 8)], 1, np.random.default_rng(3))
    with pytest.raises(ValueError, match=r"recall.copy_span = 1 is not allowed"):
        make_copy_example(VOCAB, SEQ_LEN, 10, 1, np.random.default_rng(3))


def test_overlapping_or_impossible_distances_are_refused():
    with pytest.raises(ValueError, match=r"distances = \[4, 6\] is not allowed .*without overlapping"):
        make_kv_example(VOCAB, SEQ_LEN, [4, 6], np.random.default_rng(0))  # both pairs would be at 248
    with pytest.raises(ValueError, match=r"distances = \[300\] is not allowed"):
        make_kv_example(VOCAB, SEQ_LEN, [300], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"distance = 2 is not allowed .*between 3"):
        make_passkey_example(VOCAB, SEQ_LEN, 2, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"recall\.num_pairs = 40 is not allowed: between 1 and 32"):
        make_kv_example(VOCAB, SEQ_LEN, list(range(3, 83, 2)), np.random.default_rng(0))


@pytest.mark.parametrize("num_pairs", [1, 4, 8], ids=["1-pair", "4-pairs", "8-pairs"])
def test_sampled_distances_fill_every_bucket_and_place_cleanly(num_pairs):
    rng = np.random.default_rng(2)
    seen = []
    for _ in range(600 // num_pairs):
        distances = sample_kv_distances(SEQ_LEN, num_pairs, list(BUCKETS.values()), rng)
        make_kv_example(VOCAB, SEQ_LEN, distances, rng)  # placeable without overlap
        seen += distances.tolist()
    seen = np.array(seen)
    shares = [np.mean((seen >= lo) & (seen <= hi)) for lo, hi in BUCKETS.values()]
    assert all(0.26 < share < 0.41 for share in shares), shares  # about a third each
    assert seen.max() >= 200  # truly far distances occur


def test_recall_batch_stacks_rows_of_both_tasks():
    batch = make_recall_batch(
        ["kv", "passkey"], VOCAB, SEQ_LEN, 4, list(BUCKETS.values()), 16, np.random.default_rng(3)
    )
    assert batch["input_ids"].shape == batch["labels"].shape == (16, SEQ_LEN)
    assert batch["answer_positions"].shape == batch["distances"].shape == (16, 4)
    assert set(batch["tasks"].tolist()) == {0, 1}
    rows = torch.arange(16)[:, None]
    assert torch.equal(
        batch["input_ids"][rows, batch["answer_positions"]],
        batch["input_ids"][rows, batch["answer_positions"] - batch["distances"]],
    )


def test_curriculum_doubles_pairs_when_accuracy_reaches_threshold():
    curriculum = RecallCurriculum(start_pairs=1, max_pairs=8, threshold=0.9)
    assert curriculum.num_pairs == 1
    assert not curriculum.update(0.5) and curriculum.num_pairs == 1  # below threshold: stay
    assert curriculum.update(0.9) and curriculum.num_pairs == 2
    assert curriculum.update(0.95) and curriculum.num_pairs == 4
    assert not curriculum.update(0.2) and curriculum.num_pairs == 4
    assert curriculum.update(1.0) and curriculum.num_pairs == 8
    assert not curriculum.update(1.0) and curriculum.num_pairs == 8  # capped at max_pairs
    assert curriculum.levels == [(0, 1), (2, 2), (3, 4), (5, 8)]
    resumed = RecallCurriculum(start_pairs=1, max_pairs=8, threshold=0.9)
    resumed.load_state_dict(curriculum.state_dict())
    assert resumed.num_pairs == 8 and resumed.levels == curriculum.levels


def test_curriculum_growth_is_capped_at_max_pairs():
    curriculum = RecallCurriculum(start_pairs=3, max_pairs=10, threshold=0.5, growth=3)
    curriculum.update(0.6)
    curriculum.update(0.6)
    assert curriculum.num_pairs == 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"threshold": 1.5}, r"recall\.threshold = 1\.5 is not allowed: a fraction in \(0, 1\]"),
        ({"max_pairs": 0}, r"recall\.max_pairs = 0 is not allowed: a positive integer"),
        (
            {"start_pairs": 4, "max_pairs": 2},
            r"recall\.start_pairs = 4 is not allowed: at most max_pairs = 2",
        ),
        ({"growth": 1}, r"recall\.growth = 1 is not allowed: an integer >= 2"),
    ],
    ids=["threshold", "max-pairs", "start-above-max", "growth"],
)
def test_curriculum_fields_are_validated(fields, message):
    with pytest.raises(ValueError, match=message):
        RecallCurriculum(**fields)


def test_small_vocabulary_is_refused():
    with pytest.raises(ValueError, match=r"recall\.vocab_size = 8 is not allowed: an integer >= 16"):
        recall_token_ranges(8)
