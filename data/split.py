"""Deterministic train/validation split by document.

Each document gets a position `u ∈ [0, 1)` from a keyed BLAKE2b hash of its split key (its text, or its
`group` when documents must travel together, e.g. both editions of a play). A document is in validation
iff `u < cutoff`, with `cutoff = validation_fraction`. So:

- the split depends on nothing but the content: no seed, no order, no document count; `max_documents`
  caps and streaming agree with the full corpus about every document they share;
- identical documents (the stdlib holds several identical files) and all documents of a group have one
  hash, so they can never sit on both sides.

Small corpora: when no group falls below the fraction, the group with the smallest hash becomes the
validation set (`validation_cutoff`), so a 78-play corpus at 2 % still validates on something. Streaming
cannot look ahead and uses the plain fraction.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from data.sources import Document

_KEY = b"bct-split"


def split_hash(document: Document) -> float:
    """Position of `document` in [0, 1) (uniform over documents, stable across runs and machines)."""
    key = document.text if document.group is None else f"group:{document.group}"
    digest = hashlib.blake2b(key.encode("utf-8", errors="surrogatepass"), digest_size=8, key=_KEY).digest()
    return int.from_bytes(digest, "big") / 2**64


def validation_cutoff(hashes: Iterable[float], fraction: float) -> float:
    """Cutoff for a finite corpus: `fraction`, raised just above the smallest hash if that would leave the
    validation side empty (and `fraction > 0`)."""
    smallest = min(hashes, default=1.0)
    if fraction > 0 and smallest >= fraction:
        return math.nextafter(smallest, 2.0)
    return fraction
