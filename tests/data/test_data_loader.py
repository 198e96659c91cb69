"""Packed loader: determinism, rank sharding, exact resume, synthetic mixing, validation batches."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from data import (
    PackedLoader,
    build_tokenizer,
    build_train_loader,
    build_validation_batches,
    make_passkey_example,
    prepare_corpus,
)
from tests.data.batches import same_batches, take

SEQ = 4


def _rows(n: int) -> torch.Tensor:
    """(n, SEQ) rows whose content names them: row i is [i*SEQ, ..., i*SEQ + SEQ - 1]."""
    return torch.arange(n * SEQ, dtype=torch.int32).reshape(n, SEQ)


def _row_ids(batch: dict) -> list[int]:
    return (batch["input_ids"][:, 0] // SEQ).tolist()


def _flat_ids(batches: list[dict]) -> list[int]:
    return [i for batch in batches for i in _row_ids(batch)]


def test_batches_are_int64_dicts_with_labels(small_cfg, corpus, tokenizer):
    loader = build_train_loader(small_cfg, corpus, tokenizer, batch_size=3, seed=0, rank=0, world_size=1)
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "labels"}
    assert batch["input_ids"].shape == (3, small_cfg.seq_len) and batch["input_ids"].dtype == torch.long
    assert torch.equal(batch["labels"], batch["input_ids"])  # packed rows: every token is a target


def test_same_seed_same_batches_other_seed_differs(small_cfg, corpus, tokenizer):
    def batches(seed):
        loader = build_train_loader(
            small_cfg, corpus, tokenizer, batch_size=4, seed=seed, rank=0, world_size=1
        )
        return take(loader, 5)

    assert same_batches(batches(7), batches(7))
    assert not same_batches(batches(7), batches(8))


@pytest.mark.parametrize(
    ("rows", "batch_size", "world_size"), [(48, 4, 2), (50, 4, 3)], ids=["even", "remainder"]
)
def test_rank_shards_are_disjoint_and_cover_the_epoch_once(rows, batch_size, world_size):
    loaders = [
        PackedLoader(_rows(rows), batch_size=batch_size, seed=3, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    per_epoch = loaders[0].batches_per_epoch
    assert per_epoch == rows // (batch_size * world_size)
    union = [i for loader in loaders for i in _flat_ids(take(loader, per_epoch))]
    assert len(union) == len(set(union)) == per_epoch * batch_size * world_size  # disjoint, each row once
    order = loaders[0].epoch_order(0)
    assert sorted(union) == sorted(order[: len(union)].tolist())  # the epoch's order minus its remainder
    if rows % (batch_size * world_size) == 0:
        assert sorted(union) == list(range(rows))


def test_global_batches_do_not_depend_on_the_split_into_ranks():
    two_ranks = [
        take(PackedLoader(_rows(40), batch_size=2, seed=5, rank=r, world_size=2), 6) for r in range(2)
    ]
    one_rank = take(PackedLoader(_rows(40), batch_size=4, seed=5, rank=0, world_size=1), 6)
    for step in range(6):
        assert _row_ids(two_ranks[0][step]) + _row_ids(two_ranks[1][step]) == _row_ids(one_rank[step])


def test_epochs_repeat_forever_with_a_new_order():
    loader = PackedLoader(_rows(12), batch_size=3, seed=0, rank=0, world_size=1)
    batches = take(loader, 4 * 3 + 1)  # three full epochs and one batch
    epochs = [_flat_ids(batches[4 * e : 4 * e + 4]) for e in range(3)]
    assert all(sorted(epoch) == list(range(12)) for epoch in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    assert loader.epoch == 3


@pytest.mark.parametrize("k", [3, 8, 10], ids=["mid-epoch", "at-epoch-end", "next-epoch"])
def test_resume_continues_with_the_next_batch(k):
    uninterrupted = take(PackedLoader(_rows(36), batch_size=4, seed=1, rank=1, world_size=2), 14)
    first = PackedLoader(_rows(36), batch_size=4, seed=1, rank=1, world_size=2)  # 4 batches per epoch
    assert same_batches(take(first, k), uninterrupted[:k])
    state = first.state_dict()
    resumed = PackedLoader(_rows(36), batch_size=4, seed=1, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert same_batches(take(resumed, 14 - k), uninterrupted[k:])


def test_resume_with_synthetic_mixing(small_cfg, corpus, tokenizer):
    cfg = small_cfg.replace(
        synthetic_fraction=0.5, synthetic_tasks=["mqar"], mqar_num_pairs=8, mqar_num_queries=4
    )

    def loader():
        return build_train_loader(cfg, corpus, tokenizer, batch_size=4, seed=2, rank=0, world_size=1)

    per_epoch = loader().batches_per_epoch
    total = per_epoch + 3  # across an epoch boundary
    uninterrupted = take(loader(), total)
    first = loader()
    take(first, per_epoch - 2)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert same_batches(take(resumed, 5), uninterrupted[per_epoch - 2 :])
    assert any((b["labels"] == -100).any() for b in uninterrupted)  # mixing did happen


def test_synthetic_rows_replace_about_the_fraction(small_cfg):
    # A longer seq_len, so that passkey fits next to MQAR.
    cfg = small_cfg.replace(seq_len=256, synthetic_fraction=0.25)
    tokenizer = build_tokenizer(cfg)
    packed = prepare_corpus(cfg, tokenizer)
    loader = build_train_loader(cfg, packed, tokenizer, batch_size=8, seed=0, rank=0, world_size=1)
    batches = take(loader, 25)
    labels = torch.cat([b["labels"] for b in batches])  # (200, 256)
    synthetic = (labels == -100).any(dim=1)
    assert 0.15 < synthetic.float().mean() < 0.35
    assert torch.equal(torch.cat([b["synthetic"] for b in batches]), synthetic)  # the loader marks them
    ids = torch.cat([b["input_ids"] for b in batches])
    passkey = [tokenizer.decode(row) for row in ids[synthetic] if "pass key" in tokenizer.decode(row)]
    assert passkey and len(passkey) < synthetic.sum()  # both tasks drawn
    # Synthetic rows carry labels only at their answers, equal to the inputs there.
    answers = labels[synthetic] != -100
    assert torch.equal(labels[synthetic][answers], ids[synthetic][answers])
    assert torch.equal(labels[~synthetic], ids[~synthetic])


@pytest.mark.parametrize("depths", [(0.0, 0.25), (0.75, 1.0)])
def test_passkey_needles_sit_in_their_depth_range(small_cfg, depths):
    """The key's first occurrence (the needle) lies in the drawn share of the filler: measured against where
    the needle sits at depth 0 and at depth 1 in a row of the same length."""
    cfg = small_cfg.replace(
        seq_len=256, synthetic_fraction=1.0, synthetic_tasks=["passkey"], passkey_depth_range=depths
    )
    tokenizer = build_tokenizer(cfg)
    loader = build_train_loader(
        cfg, prepare_corpus(cfg, tokenizer), tokenizer, batch_size=8, seed=0, rank=0, world_size=1
    )

    def needle(ids: torch.Tensor, labels: torch.Tensor) -> int:
        answer = ids[labels != -100]  # (A,) the key's ids, at the row's end
        return next(p for p in range(len(ids)) if torch.equal(ids[p : p + len(answer)], answer))

    filler = np.arange(300, 400)
    ends = [make_passkey_example(tokenizer, filler, 256, d, np.random.default_rng(0)) for d in (0.0, 1.0)]
    first, last = (needle(e["input_ids"], e["labels"]) for e in ends)
    batches = take(loader, 2)
    rows = zip(torch.cat([b["input_ids"] for b in batches]), torch.cat([b["labels"] for b in batches]))
    for ids, labels in rows:
        depth = (needle(ids, labels) - first) / (last - first)
        assert depths[0] - 0.02 <= depth <= depths[1] + 0.02, (depth, depths)


def test_validation_batches_are_fixed_and_ordered(corpus):
    batches = build_validation_batches(corpus, batch_size=4, max_batches=3)
    assert len(batches) == 3
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), corpus.validation[:12].long())
    assert same_batches(batches, build_validation_batches(corpus, batch_size=4, max_batches=3))
    everything = build_validation_batches(corpus, batch_size=4)
    assert sum(len(b["input_ids"]) for b in everything) == len(corpus.validation)
    assert np.all([torch.equal(b["labels"], b["input_ids"]) for b in everything])


def test_copy_rows_mix_in_with_the_other_tasks(small_cfg):
    cfg = small_cfg.replace(
        seq_len=128,
        synthetic_fraction=0.75,
        synthetic_tasks=["copy", "mqar", "induction"],
        copy_span=16,
        mqar_num_pairs=8,
    )
    tokenizer = build_tokenizer(cfg)
    loader = build_train_loader(
        cfg, prepare_corpus(cfg, tokenizer), tokenizer, batch_size=8, seed=0, rank=0, world_size=1
    )
    batches = take(loader, 6)
    ids, labels = torch.cat([b["input_ids"] for b in batches]), torch.cat([b["labels"] for b in batches])
    answers = (labels != -100).sum(dim=1)  # (48,) 128 for text rows, 15 copies, 8 MQAR, 4 x 7 induction
    copies = answers == 15
    assert copies.any() and (answers == 8).any() and (answers == 28).any()
    for row in ids[copies]:  # the row's end repeats an earlier span of the same row
        assert any(torch.equal(row[a : a + 16], row[112:]) for a in range(0, 97))


@pytest.mark.parametrize(
    "setting, farthest",
    [({"induction_segment": 128}, 120), ({"induction_lookback": 100}, 100)],
    ids=["segment", "lookback"],
)
def test_induction_rows_look_back_as_far_as_their_settings_allow(small_cfg, setting, farthest):
    """`induction_segment` = the row: one repeat a row, 8 to seq_len - 8 ids back (the default 32: 8 to 24);
    `induction_lookback`: a repeat each 32-token segment, the last one's source up to 100 back, across segments."""
    cfg = small_cfg.replace(seq_len=128, synthetic_fraction=1.0, synthetic_tasks=["induction"], **setting)
    tokenizer = build_tokenizer(cfg)
    loader = build_train_loader(
        cfg, prepare_corpus(cfg, tokenizer), tokenizer, batch_size=8, seed=0, rank=0, world_size=1
    )
    ids = torch.cat([b["input_ids"] for b in take(loader, 4)])  # (32, 128)
    distances = []
    for row in ids:  # the span of 8 that ends the row repeats the one `distance` earlier
        distances.append(
            next(d for d in range(8, farthest + 1) if torch.equal(row[120 - d : 128 - d], row[120:]))
        )
    assert max(distances) > 24 and min(distances) >= 8


def test_text_mqar_rows_ask_for_values_paired_in_the_same_row(small_cfg):
    cfg = small_cfg.replace(
        seq_len=256,
        synthetic_fraction=1.0,
        synthetic_tasks=["text_mqar"],
        mqar_num_pairs=4,
        mqar_num_queries=2,
    )
    tokenizer = build_tokenizer(cfg)
    packed = prepare_corpus(cfg, tokenizer)
    batches = take(build_train_loader(cfg, packed, tokenizer, batch_size=4, seed=3, rank=0, world_size=1), 3)
    for batch in batches:
        assert batch["synthetic"].all()
        for ids, labels in zip(batch["input_ids"], batch["labels"]):
            text = tokenizer.decode(ids)
            pairs = dict(re.findall(r"The code for (\w+) is (\d+)\.", text.split("Now the codes")[0]))
            asked = re.findall(r"The code for (\w+) is (\d+)", text.split("Now the codes")[1])
            assert len(pairs) == 4 and len(asked) == 2
            assert all(pairs[key] == value for key, value in asked)  # each answer is its key's value
            answers = tokenizer.decode(labels[labels != -100])
            assert answers.split() == [value for _, value in asked]  # loss only on the asked values
