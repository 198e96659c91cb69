"""Helpers the loader tests share: take batches from a loader and compare two runs of batches."""

from __future__ import annotations

from itertools import islice

import torch


def take(loader, count: int) -> list[dict]:
    return list(islice(iter(loader), count))


def same_batches(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        for x, y in zip(a, b)
    )
