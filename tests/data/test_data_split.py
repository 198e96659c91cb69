"""The train/validation split is by document, deterministic, and never puts a document on both sides."""

from __future__ import annotations

import re

import pytest

from data import DataConfig, Document, open_source, prepare_corpus, split_hash, validation_cutoff
from data.sources import text_pieces


def test_no_document_in_both_splits(tmp_path, text_dir, texts, tokenizer):
    cfg = DataConfig(
        source=str(text_dir), cache_dir=str(tmp_path / "cache"), seq_len=32, validation_fraction=0.25
    )
    corpus = prepare_corpus(cfg, tokenizer)
    found = {}
    for side, rows in (("train", corpus.train), ("validation", corpus.validation)):
        # Decode each split as one stream: a marker is split across rows only at a row boundary.
        found[side] = set(re.findall(r"docmarker\d{4}", tokenizer.decode(rows.flatten().tolist())))
    assert found["train"] and found["validation"]
    assert not found["train"] & found["validation"]
    expected = {"train": set(), "validation": set()}
    for text in texts:
        h = split_hash(Document(text))
        expected["validation" if h < 0.25 else "train"].add(text.split()[0])
    for side in expected:
        # Every document is where its hash says; at most one (whose tail was dropped) is missing.
        assert found[side] <= expected[side]
        assert len(expected[side] - found[side]) <= 1
    assert corpus.stats["train_documents"] == len(expected["train"])
    assert corpus.stats["validation_documents"] == len(expected["validation"])


def test_split_is_by_content_and_stable():
    documents = list(open_source(DataConfig(source="stdlib")).documents())
    hashes = [split_hash(d) for d in documents]
    assert hashes == [split_hash(d) for d in documents]  # deterministic
    share = sum(h < 0.1 for h in hashes) / len(hashes)
    assert 0.07 < share < 0.13  # uniform: ~10 % of ~1 800 documents


def test_groups_travel_together():
    a, b = Document("first edition", group="lear"), Document("folio edition", group="lear")
    assert split_hash(a) == split_hash(b) != split_hash(Document("first edition"))


@pytest.mark.parametrize(
    ("hashes", "fraction", "validation"),
    [([0.5, 0.03, 0.9], 0.1, [0.03]), ([0.5, 0.3, 0.9], 0.1, [0.3]), ([0.5, 0.3, 0.9], 0.0, [])],
    ids=["below-fraction", "smallest-hash-fallback", "no-validation"],
)
def test_validation_cutoff(hashes, fraction, validation):
    cutoff = validation_cutoff(hashes, fraction)
    assert [h for h in hashes if h < cutoff] == validation


@pytest.mark.parametrize(
    ("text", "ends_with"),
    [
        ("".join(f"paragraph {i}\nof two lines\n\n" for i in range(200)), "\n\n"),
        ("".join(f"line {i} of a file without blank lines\n" for i in range(200)), "\n"),
        ("x" * 5000, ""),
    ],
    ids=["blank-lines", "line-ends", "one-long-line"],
)
def test_text_pieces_cut_at_the_nearest_break(text, ends_with):
    pieces = text_pieces(text, 500)
    assert "".join(pieces) == text and len(pieces) > 2
    for piece in pieces[:-1]:
        assert 500 <= len(piece) <= 1000 and piece.endswith(ends_with)
    assert len(pieces[-1]) <= 1000


def test_single_text_file_is_split_in_pieces(tmp_path, text_dir, texts, tokenizer):
    """One text file, the default validation fraction: its pieces are the documents, none on both sides."""
    path = tmp_path / "input.txt"
    path.write_text("\n".join(texts))
    cfg = DataConfig(source=str(path), cache_dir=str(tmp_path / "cache"), seq_len=32, piece_chars=1000)
    pieces = text_pieces(path.read_text(), 1000)
    assert [d.text for d in open_source(cfg).documents()] == pieces
    corpus = prepare_corpus(cfg, tokenizer)
    assert corpus.stats["train_documents"] + corpus.stats["validation_documents"] == len(pieces) > 10
    assert corpus.stats["validation_documents"] >= 1 and len(corpus.validation) > 0
    found = {
        side: set(re.findall(r"docmarker\d{4}", tokenizer.decode(rows.flatten().tolist())))
        for side, rows in (("train", corpus.train), ("validation", corpus.validation))
    }
    # A marker at a piece boundary would be on one side only; a piece's markers stay with it.
    assert found["train"] and found["validation"] and not found["train"] & found["validation"]
    # Several files keep one document each; null piece_chars keeps the lone file whole.
    assert len(list(open_source(DataConfig(source=str(text_dir), piece_chars=100)).documents())) == len(texts)
    assert len(list(open_source(DataConfig(source=str(path), piece_chars=None)).documents())) == 1
