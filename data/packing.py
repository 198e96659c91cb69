"""Packing: documents -> one token stream (an eos after every document) -> rows of exactly `seq_len` tokens.

Rows are cut without regard to document boundaries (a row may start mid-document and hold several), and no
token is padding, so every label is a real next token; attention crosses the eos like in GPT-2/Llama
pre-training. The tail that does not fill a last row is dropped (and counted). Token ids are stored as
int32: half the memory of int64, and every vocabulary in use fits.

`pack_rows` packs a finite list of documents at once (the cached corpus); `RowPacker` packs on the fly
(streaming) and knows its exact position, `(documents consumed, tokens consumed of the next one)`, so a
resumed stream continues at the very token it stopped at.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np

TOKEN_DTYPE = np.int32


def pack_rows(documents: Sequence[np.ndarray], eos_id: int, seq_len: int) -> tuple[np.ndarray, int]:
    """Pack token arrays (one per document) into rows `(N, seq_len)` int32; return them and the number of
    tail tokens dropped."""
    eos = np.array([eos_id], dtype=TOKEN_DTYPE)
    pieces = [piece for ids in documents for piece in (ids, eos)]
    stream = np.concatenate(pieces) if pieces else np.empty(0, dtype=TOKEN_DTYPE)  # (T,)
    rows, dropped = divmod(len(stream), seq_len)
    return stream[: rows * seq_len].astype(TOKEN_DTYPE, copy=False).reshape(rows, seq_len), dropped


class RowPacker:
    """Packs documents into `seq_len` rows on the fly.

    Feed documents in order with `add`; take rows with `pop_row` while `ready()`. `position` is
    `(documents, offset)`: documents fully consumed, and tokens already consumed of the next one; a packer
    built with that position and fed from document `documents` on yields the same rows as the original."""

    def __init__(self, seq_len: int, eos_id: int, documents: int = 0, offset: int = 0) -> None:
        self.seq_len = seq_len
        self._eos = np.array([eos_id], dtype=TOKEN_DTYPE)
        self._pending: deque[np.ndarray] = deque()  # documents (with their eos) not fully consumed
        self._documents = documents
        self._offset = offset  # tokens of _pending[0] already consumed
        self._available = -offset  # tokens in _pending not yet consumed

    @property
    def position(self) -> tuple[int, int]:
        return self._documents, self._offset

    def add(self, ids: Sequence[int]) -> None:
        document = np.concatenate([np.asarray(ids, dtype=TOKEN_DTYPE), self._eos])
        self._pending.append(document)
        self._available += len(document)

    def ready(self) -> bool:
        return self._available >= self.seq_len

    def pop_row(self) -> np.ndarray:
        """The next `(seq_len,)` row; requires `ready()`."""
        row = np.empty(self.seq_len, dtype=TOKEN_DTYPE)
        filled = 0
        while filled < self.seq_len:
            head = self._pending[0]
            take = min(len(head) - self._offset, self.seq_len - filled)
            row[filled : filled + take] = head[self._offset : self._offset + take]
            filled += take
            self._offset += take
            if self._offset == len(head):
                self._pending.popleft()
                self._documents += 1
                self._offset = 0
        self._available -= self.seq_len
        return row
