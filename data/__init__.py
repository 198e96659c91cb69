"""BCT data pipeline: sources, split, tokenizer, packing, cache, resumable loaders and synthetic tasks.

The trainer's path, in order::

    cfg.validate(chunk_size=model_config.chunk_size)           # cheap, before anything heavy
    tokenizer = build_tokenizer(cfg, pretrained=..., gguf_file=...)
    check_vocab_fits(tokenizer, model_config.vocab_size)
    corpus = prepare_corpus(cfg, tokenizer)                     # cached on disk, shared by ranks and runs
    loader = build_train_loader(cfg, corpus, tokenizer, batch_size=..., seed=..., rank=..., world_size=...)
    validation = build_validation_batches(corpus, batch_size, max_batches)

This package imports only torch, numpy, datasets, tokenizers, transformers and the standard library.
"""

from data.config import DataConfig
from data.corpus import PackedCorpus, build_validation_batches, prepare_corpus, tokenize_documents
from data.loader import PackedLoader, StreamingLoader, build_train_loader
from data.mixer import SyntheticMixer
from data.packing import RowPacker, pack_rows
from data.sources import Document, Source, open_source
from data.split import split_hash, validation_cutoff
from data.synthetic import (
    IGNORE_INDEX,
    SyntheticDataset,
    make_mqar_example,
    make_passkey_example,
    make_passkey_grid,
    mqar_token_ranges,
    passkey_min_length,
)
from data.tokenizer import (
    build_tokenizer,
    check_vocab_fits,
    encode_batch,
    load_pretrained_tokenizer,
    tokenizer_fingerprint,
    train_bpe_tokenizer,
)

__all__ = [
    "IGNORE_INDEX",
    "DataConfig",
    "Document",
    "PackedCorpus",
    "PackedLoader",
    "RowPacker",
    "Source",
    "StreamingLoader",
    "SyntheticDataset",
    "SyntheticMixer",
    "build_tokenizer",
    "build_train_loader",
    "build_validation_batches",
    "check_vocab_fits",
    "encode_batch",
    "load_pretrained_tokenizer",
    "make_mqar_example",
    "make_passkey_example",
    "make_passkey_grid",
    "mqar_token_ranges",
    "open_source",
    "pack_rows",
    "passkey_min_length",
    "prepare_corpus",
    "split_hash",
    "tokenize_documents",
    "tokenizer_fingerprint",
    "train_bpe_tokenizer",
    "validation_cutoff",
]
