"""Streaming mode: on-the-fly packing from a local dataset, rank sharding, exact resume."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

from data import DataConfig, Document, RowPacker, build_train_loader, pack_rows, prepare_corpus, split_hash
from tests.data.batches import same_batches, take


@pytest.fixture
def stream_cfg(tmp_path, texts) -> DataConfig:
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(folder))
    return DataConfig(
        source=f"hf:{folder}",
        streaming=True,
        seq_len=32,
        validation_fraction=0.2,
        shuffle_buffer=8,
        streaming_validation_sequences=4,
        cache_dir=str(tmp_path / "cache"),
    )


def test_streaming_corpus_and_batches(stream_cfg, tokenizer, texts):
    corpus = prepare_corpus(stream_cfg, tokenizer)
    assert corpus.train is None and corpus.validation.shape == (4, 32)
    validation_texts = [t for t in texts if split_hash(Document(t)) < 0.2]
    assert tokenizer.decode(corpus.validation[0].tolist()).startswith(validation_texts[0][:20])
    loader = build_train_loader(stream_cfg, None, tokenizer, batch_size=3, seed=0, rank=0, world_size=1)
    batches = take(loader, 4)
    assert all(b["input_ids"].shape == (3, 32) and b["input_ids"].dtype == torch.long for b in batches)
    assert all(torch.equal(b["labels"], b["input_ids"]) for b in batches)
    again = build_train_loader(stream_cfg, None, tokenizer, batch_size=3, seed=0, rank=0, world_size=1)
    assert same_batches(batches, take(again, 4))


def test_streaming_ranks_are_disjoint_and_cover_the_train_side(stream_cfg, tokenizer, texts):
    loaders = [
        build_train_loader(stream_cfg, None, tokenizer, batch_size=2, seed=4, rank=r, world_size=2)
        for r in range(2)
    ]
    shards = [[d.text for d in loader.documents(epoch=1)] for loader in loaders]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(t for t in texts if split_hash(Document(t)) >= 0.2)
    assert shards[0] != [d.text for d in loaders[0].documents(epoch=2)]  # reshuffled every epoch


@pytest.mark.parametrize("where", ["mid-epoch", "across-epochs"])
@pytest.mark.parametrize("fraction", [0.0, 0.5], ids=["plain", "synthetic"])
def test_streaming_resume_is_exact(stream_cfg, tokenizer, where, fraction):
    cfg = stream_cfg.replace(
        synthetic_fraction=fraction,
        synthetic_tasks=["mqar"],
        mqar_num_pairs=4,
        mqar_num_queries=2,
    )

    def loader():
        return build_train_loader(cfg, None, tokenizer, batch_size=4, seed=1, rank=1, world_size=2)

    uninterrupted, expected, epochs = loader(), [], []
    for batch in uninterrupted:
        expected.append(batch)
        epochs.append(uninterrupted.epoch)
        if uninterrupted.epoch == 2:
            break
    # Resume after batch k; "across-epochs" stops just before the batch that holds both epochs' rows.
    k = 2 if where == "mid-epoch" else epochs.index(1) - 1
    first = loader()
    take(first, k)
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    assert same_batches(take(resumed, len(expected) - k), expected[k:])


def test_row_packer_matches_pack_rows_and_resumes():
    rng = np.random.default_rng(0)
    documents = [rng.integers(1, 50, size=n).astype(np.int32) for n in rng.integers(1, 30, size=25)]
    rows, dropped = pack_rows(documents, eos_id=0, seq_len=7)
    assert dropped == (sum(len(d) + 1 for d in documents)) % 7

    def stream(packer, start):
        out = []
        for ids in documents[start:]:
            packer.add(ids)
            while packer.ready():
                out.append(packer.pop_row())
        return out

    packer = RowPacker(7, eos_id=0)
    assert np.array_equal(np.stack(stream(packer, 0)), rows)
    for cut in (5, 13, 20):  # resume from the position after `cut` rows
        packer = RowPacker(7, eos_id=0)
        head = []
        for ids in documents:
            packer.add(ids)
            while packer.ready() and len(head) < cut:
                head.append(packer.pop_row())
            if len(head) == cut:
                break
        documents_done, offset = packer.position
        tail = stream(RowPacker(7, 0, documents_done, offset), documents_done)
        assert np.array_equal(np.stack(head + tail), rows)
