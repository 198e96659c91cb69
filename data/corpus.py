"""The packed corpus: split, tokenize, pack, cache; and the fixed validation batches.

`prepare_corpus` reads every document once, tokenizes it with the Rust batch API, splits by document
(`data.split`), and packs each side into `(N, seq_len)` rows (`data.packing`). The result is cached under
`cache_dir/corpus-<key>/` (`train.npy`, `validation.npy`, `meta.json`), where the key hashes the source
fingerprint (files, sizes, mtimes, or the dataset's identity and fingerprint), the caps, the split
fraction, `seq_len` and the tokenizer fingerprint (its tokenizer.json and eos id): change any of them and a
new entry is built; keep them and every run and rank reuses the entry. Under `accelerate launch` the first
rank to arrive builds it while the others wait on its lock (`data.cache`).

Streaming mode caches nothing: the validation rows are packed from the first validation-side documents of
the stream (`streaming_validation_sequences` rows at most) and `train` is None.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from data.cache import atomic_directory, build_lock, cache_key
from data.config import DataConfig, invalid
from data.packing import TOKEN_DTYPE, RowPacker, pack_rows
from data.sources import Source, open_source
from data.split import split_hash, validation_cutoff
from data.tokenizer import encode_batch, tokenizer_fingerprint

_CACHE_FORMAT = "packed-corpus/v1"
_ENCODE_DOCUMENTS = 64  # documents per call to the batch tokenizer


@dataclass
class PackedCorpus:
    """Token rows of both splits. `train` is `(N, seq_len)` int32 (None when streaming), `validation` is
    `(Nv, seq_len)` int32; `stats` counts documents, characters, tokens, rows and dropped tail tokens per
    split, and says where the cache entry is and whether it was reused."""

    train: torch.Tensor | None
    validation: torch.Tensor
    seq_len: int
    eos_token_id: int
    stats: dict[str, Any] = field(default_factory=dict)


def prepare_corpus(cfg: DataConfig, tokenizer: PreTrainedTokenizerFast) -> PackedCorpus:
    """The packed corpus for `cfg` and `tokenizer`, from the cache when possible (see module docstring)."""
    cfg.validate()
    source = open_source(cfg)
    if cfg.streaming:
        return _streaming_validation(cfg, source, tokenizer)
    spec = {
        "format": _CACHE_FORMAT,
        "source": source.fingerprint,
        "max_documents": cfg.max_documents,
        "max_chars": cfg.max_chars,
        "validation_fraction": cfg.validation_fraction,
        "seq_len": cfg.seq_len,
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    folder = os.path.join(cfg.cache_dir, f"corpus-{cache_key(spec)}")
    cache_hit = True
    with build_lock(folder):
        if not os.path.isdir(folder):
            cache_hit = False
            train, validation, stats = _build(cfg, source, tokenizer)
            with atomic_directory(folder) as staging:
                np.save(os.path.join(staging, "train.npy"), train)
                np.save(os.path.join(staging, "validation.npy"), validation)
                with open(os.path.join(staging, "meta.json"), "w") as f:
                    json.dump({"spec": spec, "stats": stats}, f, indent=2)
    with open(os.path.join(folder, "meta.json")) as f:
        stats = json.load(f)["stats"]
    stats.update(cache_dir=folder, cache_hit=cache_hit)
    return PackedCorpus(
        train=torch.from_numpy(np.load(os.path.join(folder, "train.npy"))),
        validation=torch.from_numpy(np.load(os.path.join(folder, "validation.npy"))),
        seq_len=cfg.seq_len,
        eos_token_id=tokenizer.eos_token_id,
        stats=stats,
    )


def tokenize_documents(
    tokenizer: PreTrainedTokenizerFast, texts: list[str], batch: int = _ENCODE_DOCUMENTS
) -> list[np.ndarray]:
    """int32 token ids of each text (no special tokens), `batch` texts per call to the batch tokenizer."""
    return [
        np.asarray(ids, dtype=TOKEN_DTYPE)
        for start in range(0, len(texts), batch)
        for ids in encode_batch(tokenizer, texts[start : start + batch])
    ]


def _build(
    cfg: DataConfig, source: Source, tokenizer: PreTrainedTokenizerFast
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    start = time.perf_counter()
    hashes, tokens, chars = [], [], []
    batch = []
    for document in source.documents():
        hashes.append(split_hash(document))
        chars.append(len(document.text))
        batch.append(document.text)
        if len(batch) == _ENCODE_DOCUMENTS:
            tokens.extend(tokenize_documents(tokenizer, batch))
            batch = []
    tokens.extend(tokenize_documents(tokenizer, batch))
    cutoff = validation_cutoff(hashes, cfg.validation_fraction)
    sides = {"train": [], "validation": []}
    for index, h in enumerate(hashes):
        sides["validation" if h < cutoff else "train"].append(index)
    stats: dict[str, Any] = {"source": source.description, "tokenize_seconds": time.perf_counter() - start}
    packed = {}
    for side, indices in sides.items():
        packed[side], dropped = pack_rows([tokens[i] for i in indices], tokenizer.eos_token_id, cfg.seq_len)
        stats[f"{side}_documents"] = len(indices)
        stats[f"{side}_chars"] = sum(chars[i] for i in indices)
        stats[f"{side}_tokens"] = sum(len(tokens[i]) + 1 for i in indices)  # + the eos after each
        stats[f"{side}_rows"] = len(packed[side])
        stats[f"{side}_dropped_tokens"] = dropped
    if not sides["train"]:
        raise invalid(
            "validation_fraction",
            cfg.validation_fraction,
            f"0 for this corpus: its {len(hashes)} document(s) would all go to validation (the split is by "
            "document; give more documents, e.g. a folder or a .jsonl, to validate on some; a single text "
            f"file is cut into pieces of data.piece_chars = {cfg.piece_chars} characters: lower it for a "
            "short file)",
        )
    if len(packed["train"]) == 0:
        raise invalid(
            "seq_len",
            cfg.seq_len,
            f"at most the train split's {stats['train_tokens']} tokens ({stats['train_documents']} documents) "
            "so that it fills a row; use a shorter seq_len or more documents (max_documents/max_chars)",
        )
    if cfg.validation_fraction > 0 and len(packed["validation"]) == 0:
        raise invalid(
            "validation_fraction",
            cfg.validation_fraction,
            f"large enough that validation fills one seq_len = {cfg.seq_len} row; it got "
            f"{stats['validation_documents']} documents, {stats['validation_tokens']} tokens (or set it to 0)",
        )
    return packed["train"], packed["validation"], stats


def _streaming_validation(
    cfg: DataConfig, source: Source, tokenizer: PreTrainedTokenizerFast
) -> PackedCorpus:
    rows: list[np.ndarray] = []
    if cfg.validation_fraction > 0:
        texts = (d.text for d in source.documents() if split_hash(d) < cfg.validation_fraction)
        rows = list(islice(_pack_stream(texts, tokenizer, cfg.seq_len), cfg.streaming_validation_sequences))
        if not rows:
            raise invalid(
                "validation_fraction",
                cfg.validation_fraction,
                f"large enough that the stream's validation documents fill one seq_len = {cfg.seq_len} row "
                "(or set it to 0)",
            )
    validation = np.stack(rows) if rows else np.empty((0, cfg.seq_len), dtype=TOKEN_DTYPE)
    stats = {"source": source.description, "validation_rows": len(rows)}
    return PackedCorpus(None, torch.from_numpy(validation), cfg.seq_len, tokenizer.eos_token_id, stats)


def _pack_stream(
    texts: Iterator[str], tokenizer: PreTrainedTokenizerFast, seq_len: int
) -> Iterator[np.ndarray]:
    """Rows `(seq_len,)` packed on the fly from `texts`, tokenized `_ENCODE_DOCUMENTS` at a time."""
    packer = RowPacker(seq_len, tokenizer.eos_token_id)
    while batch := list(islice(texts, _ENCODE_DOCUMENTS)):
        for ids in encode_batch(tokenizer, batch):
            packer.add(ids)
            while packer.ready():
                yield packer.pop_row()


def build_validation_batches(
    corpus: PackedCorpus, batch_size: int, max_batches: int | None = None
) -> list[dict[str, torch.Tensor]]:
    """Validation rows in order, `batch_size` at a time (the last batch may be smaller), at most
    `max_batches`: the same batches in every run and on every rank. Each batch is
    `{"input_ids": (B, seq_len) int64, "labels": (B, seq_len) int64}` with labels == input_ids."""
    if batch_size < 1:
        raise ValueError(f"batch_size = {batch_size!r} is not allowed: a positive integer.")
    rows = corpus.validation
    if max_batches is not None:
        rows = rows[: max_batches * batch_size]
    batches = []
    for start in range(0, len(rows), batch_size):
        input_ids = rows[start : start + batch_size].long()
        batches.append({"input_ids": input_ids, "labels": input_ids.clone()})
    return batches
