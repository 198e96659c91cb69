"""Deterministic, resumable, rank-sharded training batches.

Batches are `{"input_ids": (B, seq_len) int64, "labels": (B, seq_len) int64}`; labels equal input_ids
(every packed token is a real next token; the model shifts internally) except in synthetic rows, which
carry -100 outside their answers. When synthetic examples are mixed in, batches also hold `"synthetic"`
(B,) bool, the replaced rows (the trainer weighs their answers with `data.synthetic_loss_weight`; it is not
a model input). Iteration never ends: the trainer stops at `max_steps`. Use one
iterator at a time: the loader itself holds the position, and `state_dict()` taken after `k` batches makes
`load_state_dict` + `iter` continue with batch `k + 1` exactly. The trainer passes `rank`/`world_size` and
does not wrap the loader with `accelerator.prepare` (that would re-shard it).

**Packed (cached corpus), `PackedLoader`.** Epoch `e` visits the train rows in the order
`default_rng([seed, e]).permutation(N)`. Global batch `b` is the slice `[b·B·W, (b+1)·B·W)` of that order and
rank `r` takes its `r`-th block of `B` rows, so the ranks' shards are disjoint and the sequence of global
batches is the same for any `(B, W)` with the same product. An epoch has `N // (B·W)` batches; the
remainder (fewer than `B·W` rows) is skipped in that epoch, and as the order is reshuffled every epoch, a
different remainder is skipped each time. State: `(epoch, batch)`.

**Streaming, `StreamingLoader`.** Epoch `e` reads the source in order, keeps the train side of the split,
shuffles it through a buffer of `shuffle_buffer` documents (generator seeded by `(seed, e)`), and gives
document `i` to rank `i mod W`. Each rank tokenizes and packs its documents on the fly (`RowPacker`); the
tail of an epoch that does not fill a row is dropped, and a batch may hold the last rows of one epoch and
the first of the next. Ranks may reach an epoch's end at different steps. State: `(epoch, documents
consumed, tokens consumed of the next document, step)`; resuming re-reads (without tokenizing) the
documents before that position, so it costs a pass over the skipped text, and is exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from data.config import DataConfig, invalid
from data.corpus import PackedCorpus
from data.mixer import SyntheticMixer
from data.packing import RowPacker
from data.sources import Document, Source, open_source
from data.split import split_hash
from data.tokenizer import encode_batch

Batch = dict[str, torch.Tensor]
_ENCODE_DOCUMENTS = 16  # documents tokenized per call while streaming


class PackedLoader:
    """Batches of rows of a packed corpus; see the module docstring for order, sharding and remainder."""

    def __init__(
        self,
        rows: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        mixer: SyntheticMixer | None = None,
    ) -> None:
        self.rows = rows  # (N, seq_len) int32
        # Batches are gathered in numpy: torch's intra-op thread pool makes such small copies stall for
        # milliseconds when the cores are busy (measured: 20-100x slower under load).
        self._rows = rows.numpy()
        self.batch_size, self.seed, self.mixer = batch_size, seed, mixer
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(rows) // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"batch_size = {batch_size} is not allowed with {world_size} rank(s): the corpus has "
                f"{len(rows)} train rows, fewer than one global batch of {batch_size * world_size}; use a "
                "smaller batch, a shorter seq_len or more documents."
            )
        self._epoch = 0
        self._batch = 0  # batches of the current epoch already yielded

    @property
    def epoch(self) -> int:
        return self._epoch

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Permutation `(N,)` of the train rows that epoch `epoch` follows (all ranks)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def shard(self, epoch: int) -> np.ndarray:
        """Row indices `(batches_per_epoch, B)` this rank reads in `epoch`, batch by batch."""
        order = self.epoch_order(epoch)[: self.batches_per_epoch * self.batch_size * self.world_size]
        return order.reshape(self.batches_per_epoch, self.world_size, self.batch_size)[:, self.rank]

    def __iter__(self) -> Iterator[Batch]:
        while True:
            shard = self.shard(self._epoch)
            while self._batch < self.batches_per_epoch:
                batch = self._batch
                input_ids, labels = _as_batch(self._rows[shard[batch]])  # (B, seq_len) each
                out = {"input_ids": input_ids, "labels": labels}
                if self.mixer is not None:
                    out["synthetic"] = self.mixer.apply(input_ids, labels, (self._epoch, batch, self.rank))
                self._batch += 1  # before yielding: a state_dict taken now resumes after this batch
                yield out
            self._epoch += 1
            self._batch = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "packed",
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "global_batch_size": self.batch_size * self.world_size,
            "num_rows": len(self.rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off. The seed, the corpus and the global batch size must match (the
        split of the global batch into ranks may change)."""
        expected = self.state_dict()
        for key in ("kind", "seed", "global_batch_size", "num_rows"):
            if state.get(key) != expected[key]:
                raise ValueError(
                    f"loader state {key} = {state.get(key)!r} is not allowed: this loader has {expected[key]!r}, "
                    "so resuming could not continue with the same batches."
                )
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])


class StreamingLoader:
    """Batches packed on the fly from a document stream; see the module docstring."""

    def __init__(
        self,
        cfg: DataConfig,
        source: Source,
        tokenizer: PreTrainedTokenizerFast,
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        mixer: SyntheticMixer | None = None,
    ) -> None:
        self.source, self.tokenizer = source, tokenizer
        self.seq_len, self.shuffle_buffer = cfg.seq_len, cfg.shuffle_buffer
        self.validation_fraction = cfg.validation_fraction
        self.batch_size, self.seed, self.mixer = batch_size, seed, mixer
        self.rank, self.world_size = rank, world_size
        self._epoch = 0
        self._step = 0  # batches yielded so far, all epochs
        self._packer = RowPacker(cfg.seq_len, tokenizer.eos_token_id)

    @property
    def epoch(self) -> int:
        return self._epoch

    def documents(self, epoch: int) -> Iterator[Document]:
        """This rank's documents in `epoch`, in the order it packs them."""
        train = self.source.documents()
        if self.validation_fraction > 0:
            train = (d for d in train if split_hash(d) >= self.validation_fraction)
        shuffled = _buffer_shuffle(train, self.shuffle_buffer, np.random.default_rng([self.seed, epoch]))
        return islice(shuffled, self.rank, None, self.world_size)

    def __iter__(self) -> Iterator[Batch]:
        rows: list[np.ndarray] = []  # rows of the batch being filled; empty whenever a batch is yielded
        while True:
            start = self._packer.position
            new_rows = 0
            remaining = islice(self.documents(self._epoch), start[0], None)
            while group := list(islice(remaining, _ENCODE_DOCUMENTS)):
                for ids in encode_batch(self.tokenizer, [document.text for document in group]):
                    self._packer.add(ids)
                    while self._packer.ready():
                        rows.append(self._packer.pop_row())
                        new_rows += 1
                        if len(rows) == self.batch_size:
                            batch, rows = self._make_batch(rows), []
                            yield batch
            if new_rows == 0 and start == (0, 0):
                raise ValueError(
                    f"data.seq_len = {self.seq_len} is not allowed here: rank {self.rank} of {self.world_size} "
                    "received no complete row in a whole epoch of the stream; use more documents, a shorter "
                    "seq_len or fewer ranks."
                )
            self._epoch += 1
            self._packer = RowPacker(self.seq_len, self.tokenizer.eos_token_id)  # the epoch's tail is dropped

    def _make_batch(self, rows: list[np.ndarray]) -> Batch:
        input_ids, labels = _as_batch(np.stack(rows))  # (B, seq_len) each
        out = {"input_ids": input_ids, "labels": labels}
        if self.mixer is not None:
            out["synthetic"] = self.mixer.apply(input_ids, labels, (self._step, self.rank))
        self._step += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        documents, offset = self._packer.position
        return {
            "kind": "streaming",
            "epoch": self._epoch,
            "documents": documents,
            "offset": offset,
            "step": self._step,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off (same seed, rank, world size and batch size)."""
        expected = self.state_dict()
        for key in ("kind", "seed", "rank", "world_size", "batch_size"):
            if state.get(key) != expected[key]:
                raise ValueError(
                    f"loader state {key} = {state.get(key)!r} is not allowed: this loader has {expected[key]!r}, "
                    "so resuming could not continue with the same batches."
                )
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._packer = RowPacker(
            self.seq_len, self.tokenizer.eos_token_id, int(state["documents"]), int(state["offset"])
        )


def _as_batch(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 `input_ids` and an independent copy as `labels`, from `(B, seq_len)` int32 rows."""
    input_ids = rows.astype(np.int64)
    return torch.from_numpy(input_ids), torch.from_numpy(input_ids.copy())


def _buffer_shuffle(items: Iterable[Document], size: int, rng: np.random.Generator) -> Iterator[Document]:
    """Shuffle a stream through a buffer of `size` items: each arriving item replaces and releases a
    random buffered one; the rest is released in random order at the end."""
    buffer: list[Document] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def build_train_loader(
    cfg: DataConfig,
    corpus: PackedCorpus | None,
    tokenizer: PreTrainedTokenizerFast,
    *,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
) -> PackedLoader | StreamingLoader:
    """The training loader of one rank: over `corpus.train`, or over the stream when `cfg.streaming`
    (`corpus` may then be None). Synthetic examples are mixed in when `cfg.synthetic_fraction > 0`."""
    cfg.validate()
    for name, value, low in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} = {value!r} is not allowed: an integer >= {low}.")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank = {rank!r} is not allowed: an integer in [0, world_size = {world_size}).")
    mixer = SyntheticMixer(cfg, tokenizer, seed) if cfg.synthetic_fraction > 0 else None
    sharding = {
        "batch_size": batch_size,
        "seed": seed,
        "rank": rank,
        "world_size": world_size,
        "mixer": mixer,
    }
    if cfg.streaming:
        return StreamingLoader(cfg, open_source(cfg), tokenizer, **sharding)
    if corpus is None or corpus.train is None:
        raise invalid(
            "streaming", cfg.streaming, "true when no packed corpus is given (call prepare_corpus first)"
        )
    if corpus.seq_len != cfg.seq_len:
        raise invalid(
            "seq_len", cfg.seq_len, f"the packed corpus' seq_len = {corpus.seq_len} (re-run prepare_corpus)"
        )
    return PackedLoader(corpus.train, **sharding)
