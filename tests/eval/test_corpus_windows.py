"""Held-out windows: per document, or from the documents joined as the trainer packs them."""

from __future__ import annotations

import numpy as np
import pytest

from eval.corpus import token_windows
from tests.eval.conftest import prose


def test_joined_windows_cross_documents_with_an_eos_after_each(tokenizer) -> None:
    texts = [prose(30, seed) for seed in range(6)]
    ids = [tokenizer(text, add_special_tokens=False).input_ids for text in texts]
    longest = max(len(piece) for piece in ids)
    with pytest.raises(ValueError, match=r"context = .* longest is"):
        token_windows(tokenizer, texts, longest + 1, 2)  # one window per document cannot hold it
    stream = [token for piece in ids for token in (*piece, tokenizer.eos_token_id)]
    context = longest + 1
    windows = token_windows(tokenizer, texts, context, 2, join=True)
    assert len(windows) == 2 and all(w.dtype == np.int64 for w in windows)
    assert np.concatenate(windows).tolist() == stream[: 2 * context]
    assert tokenizer.eos_token_id in windows[0].tolist()


def test_joined_windows_refuse_a_context_past_all_the_text(tokenizer) -> None:
    texts = [prose(10, 0)]
    with pytest.raises(ValueError, match=r"context = 100000 is not allowed: .* joined"):
        token_windows(tokenizer, texts, 100_000, 1, join=True)
