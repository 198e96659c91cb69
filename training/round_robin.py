"""Dealing evaluation items to the ranks so that every rank runs the same number of forwards.

Under ZeRO-3 every forward gathers parameters collectively, so a rank with one item fewer would hang the
others. Item `i` goes to rank `i mod world`; a rank whose turn falls past the end repeats the last item and
must count it as nothing (`counts` is False)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TypeVar

from accelerate import Accelerator

Item = TypeVar("Item")


def deal(accelerator: Accelerator, items: Sequence[Item]) -> Iterator[tuple[Item, bool]]:
    """This rank's share of `items`, as (item, counts) pairs, ceil(len(items) / world) of them on every rank."""
    rank, world = accelerator.process_index, accelerator.num_processes
    for turn in range(math.ceil(len(items) / world)):
        index = rank + turn * world
        yield items[min(index, len(items) - 1)], index < len(items)
