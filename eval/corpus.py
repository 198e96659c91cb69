"""Held-out long documents for evaluation, read through `data/` so the split is the training split.

A document is held out iff `data.split_hash(document) < validation_cutoff(..., fraction)`, the rule the
trainer uses; pass the training run's `validation_fraction` (default 0.02, DataConfig's) and the windows are
text the model never saw. The default corpus is the Shakespeare plays (`source: shakespeare`); at 0.02 the
held-out side is one play in both editions (~80 K tokens with a 4 K BPE). Each document is cut into
consecutive, non-overlapping windows of `context` tokens; every window is one evaluation stream that starts
at position 0. With `join` (perplexity's `--join-documents`) the held-out documents are first packed into
one stream with an eos after each, as the trainer packs its rows, for contexts longer than any one held-out
document (stdlib's longest is ~48 K SmolLM2 tokens).
"""

from __future__ import annotations

import argparse

import numpy as np

from data import DataConfig, open_source, split_hash, tokenize_documents, validation_cutoff
from data.packing import pack_rows

DEFAULT_SOURCE = "shakespeare"
DATA_DEFAULTS = DataConfig()  # read from an instance: the class need not expose its defaults as attributes


def add_heldout_args(parser: argparse.ArgumentParser) -> None:
    """--source, --validation-fraction, --cache-dir: which held-out text the tasks read."""
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="any data.source; its held-out side is used")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=DATA_DEFAULTS.validation_fraction,
        help="the training run's split",
    )
    parser.add_argument("--cache-dir", default=DATA_DEFAULTS.cache_dir)


def heldout_documents(
    source: str = DEFAULT_SOURCE,
    validation_fraction: float = DATA_DEFAULTS.validation_fraction,
    cache_dir: str = DATA_DEFAULTS.cache_dir,
) -> list[str]:
    """Texts of the validation side of `source` (any `data.source`), in source order."""
    cfg = DataConfig(source=source, validation_fraction=validation_fraction, cache_dir=cache_dir)
    documents = list(open_source(cfg).documents())
    hashes = [split_hash(document) for document in documents]
    cutoff = validation_cutoff(hashes, validation_fraction)
    return [document.text for document, h in zip(documents, hashes) if h < cutoff]


def token_windows(
    tokenizer, texts: list[str], context: int, count: int, join: bool = False
) -> list[np.ndarray]:
    """Up to `count` windows (context,) int64 of consecutive tokens, cut from each text in turn, or with
    `join` from all texts packed into one stream (an eos after each, as in training)."""
    if join:
        rows, dropped = pack_rows(tokenize_documents(tokenizer, texts), tokenizer.eos_token_id, context)
        if not len(rows):  # then every joined token was dropped as the tail
            raise ValueError(
                f"context = {context} is not allowed: the held-out documents hold {dropped} tokens joined; "
                "use a shorter context or a larger validation fraction / another source."
            )
        return [row.astype(np.int64) for row in rows[:count]]
    windows = []
    for ids in tokenize_documents(tokenizer, texts):
        for start in range(0, len(ids) - context + 1, context):
            windows.append(ids[start : start + context].astype(np.int64))
            if len(windows) == count:
                return windows
    if not windows:
        longest = max((len(ids) for ids in tokenize_documents(tokenizer, texts)), default=0)
        raise ValueError(
            f"context = {context} is not allowed: the held-out documents' longest is {longest} tokens; "
            "use a shorter context or a larger validation fraction / another source."
        )
    return windows
