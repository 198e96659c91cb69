"""Corpus sources: one interface, `open_source(cfg).documents()`, over every kind of `data.source`.

A source yields `Document`s lazily, in a deterministic order (files sorted by path, rows in file order),
with the caps `max_documents`/`max_chars` applied and whitespace-only documents dropped. Opening a source
is cheap: it lists files (or opens a memory-mapped dataset) and computes a `fingerprint` from their paths,
sizes and mtimes (or the dataset's identity), which keys the caches; the text itself is read only while
iterating.

- ``stdlib``: every `.py` file under `sysconfig.get_paths()["stdlib"]` outside site-packages, one document
  per file (~1 800 documents, ~30 MB).
- ``shakespeare``: one document per play text (see `data.shakespeare`).
- a path: a `.txt` file is one document; a `.jsonl` file is one document per line (`text_field` of each
  JSON object); a `.parquet` file is one document per row (`text_field` column). A directory is read
  recursively for those three suffixes; a glob may match any files (those not `.jsonl`/`.parquet` are read
  as text). A source that is a single text file is cut into pieces of about `piece_chars` characters at
  blank lines (`text_pieces`), one document each: a split by document needs more than one. Packing puts an
  eos after each piece, as after any document.
- ``hf:<name>``: `datasets.load_dataset(name, hf_config, split=hf_split, data_files=hf_data_files,
  streaming=streaming)`; when `<name>` is a local folder written by `save_to_disk`, `datasets.load_from_disk`
  (a `DatasetDict` folder is indexed with `hf_split`).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from data.config import FILE_SUFFIXES, HF_PREFIX, DataConfig, invalid
from data.shakespeare import play_key, shakespeare_texts

if TYPE_CHECKING:  # imported where used: only parquet and hf: sources need datasets (and pyarrow)
    import datasets

_BATCH_ROWS = 1000  # rows read at a time from parquet/hf sources


class Document(NamedTuple):
    """One document. `group` is its split key when documents must travel together (both editions of a
    play); None means the text itself is the key."""

    text: str
    group: str | None = None


@dataclass
class Source:
    """An opened corpus source. `documents()` may be iterated any number of times (once per epoch when
    streaming) and always gives the same documents in the same order."""

    description: str
    fingerprint: str
    read: Callable[[], Iterator[Document]]
    max_documents: int | None = None
    max_chars: int | None = None

    def documents(self) -> Iterator[Document]:
        """Non-empty documents in source order, capped. Raises `ValueError` if there are none at all."""
        count = chars = 0
        for document in self.read():
            if not document.text.strip():
                continue
            count += 1
            chars += len(document.text)
            yield document
            if (self.max_documents is not None and count >= self.max_documents) or (
                self.max_chars is not None and chars >= self.max_chars
            ):
                return
        if count == 0:
            raise ValueError(
                f"data.source = {self.description!r} is not allowed: it holds no non-empty documents "
                "(an empty corpus cannot be split, tokenized or packed)."
            )


def open_source(cfg: DataConfig) -> Source:
    """Resolve `cfg.source` to a `Source` (lists files / opens the dataset; reads no text yet)."""
    if cfg.source.startswith(HF_PREFIX):
        description, fingerprint, read = _open_hf(cfg)
    else:
        if cfg.source == "stdlib":
            files = stdlib_files()
            readers = [_text_reader(path) for path in files]
        elif cfg.source == "shakespeare":
            files = shakespeare_texts(cfg.cache_dir)
            readers = [_text_reader(path, group=play_key(path)) for path in files]
        else:
            files = _local_files(cfg.source)
            readers = [_file_reader(path, cfg.text_field) for path in files]
        extra = [cfg.source, cfg.text_field]  # another column is another corpus
        if cfg.piece_chars is not None and len(files) == 1 and files[0].suffix not in (".jsonl", ".parquet"):
            # One document could not be split: a lone text file is read as pieces (another size, another corpus).
            readers = [_pieces_reader(files[0], cfg.piece_chars)]
            extra.append(f"piece_chars={cfg.piece_chars}")
        description = cfg.source
        fingerprint = _stat_fingerprint(files, extra=extra)

        def read() -> Iterator[Document]:
            for reader in readers:
                yield from reader()

    return Source(description, fingerprint, read, cfg.max_documents, cfg.max_chars)


def stdlib_files() -> list[Path]:
    """Every `.py` file of this interpreter's standard library outside site-packages, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(
        path
        for path in root.rglob("*.py")
        if not {"site-packages", "dist-packages"} & set(path.relative_to(root).parts)
    )


def _local_files(source: str) -> list[Path]:
    path = Path(os.path.expanduser(source))
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES)
        if not files:
            raise ValueError(
                f"data.source = {source!r} is not allowed: the directory holds no {'/'.join(FILE_SUFFIXES)} files."
            )
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(
                f"data.source = {source!r} is not allowed: no such file or directory, and no file matches it "
                "as a glob."
            )
    return files


def _stat_fingerprint(files: list[Path], extra: list[str]) -> str:
    digest = hashlib.sha256("\n".join(extra).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"\n{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _read_text(path: Path) -> str:
    # A few stdlib test files are deliberately not UTF-8; replacing bad bytes keeps them deterministic.
    return path.read_bytes().decode("utf-8", errors="replace")


def _text_reader(path: Path, group: str | None = None) -> Callable[[], Iterator[Document]]:
    def read() -> Iterator[Document]:
        yield Document(_read_text(path), group)

    return read


def text_pieces(text: str, size: int) -> list[str]:
    """`text` cut into contiguous pieces (joined, they are `text` again) of `size` to `2 * size` characters,
    the last one possibly shorter. Each ends just after the first blank line past `size` characters, else
    after the first line end there, else at `size` characters."""
    pieces, start = [], 0
    while len(text) - start > 2 * size:
        lo, hi = start + size, start + 2 * size
        if (cut := text.find("\n\n", lo, hi)) >= 0:
            cut += 2
        elif (cut := text.find("\n", lo, hi)) >= 0:
            cut += 1
        else:
            cut = lo
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _pieces_reader(path: Path, size: int) -> Callable[[], Iterator[Document]]:
    def read() -> Iterator[Document]:
        for piece in text_pieces(_read_text(path), size):
            yield Document(piece)

    return read


def _file_reader(path: Path, text_field: str) -> Callable[[], Iterator[Document]]:
    if path.suffix == ".jsonl":
        return lambda: _read_jsonl(path, text_field)
    if path.suffix == ".parquet":
        return lambda: _read_parquet(path, text_field)
    return _text_reader(path)


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if not isinstance(record, dict) or text_field not in record:
                fields = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise invalid(
                    "text_field", text_field, f"a field of every record, and {path}:{number} has {fields}"
                )
            yield Document(_as_text(record[text_field], text_field, f"{path}:{number}"))


def _read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    import datasets

    # Streaming reads the row groups lazily and writes nothing into the datasets cache.
    table = datasets.load_dataset("parquet", data_files=str(path), split="train", streaming=True)
    _check_column(table, text_field, str(path))
    yield from _read_dataset(table, text_field, str(path))


def _open_hf(cfg: DataConfig) -> tuple[str, str, Callable[[], Iterator[Document]]]:
    import datasets

    name = cfg.source[len(HF_PREFIX) :]
    folder = Path(os.path.expanduser(name))
    identity = [cfg.source, str(cfg.hf_config), cfg.hf_split, json.dumps(cfg.hf_data_files), cfg.text_field]
    if (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(folder))
        if isinstance(dataset, datasets.DatasetDict):
            if cfg.hf_split not in dataset:
                raise invalid("hf_split", cfg.hf_split, f"one of the folder's splits {sorted(dataset)}")
            dataset = dataset[cfg.hf_split]
        identity.append(dataset._fingerprint)
        fingerprint = _stat_fingerprint(sorted(p for p in folder.rglob("*") if p.is_file()), extra=identity)
        if cfg.streaming:
            dataset = dataset.to_iterable_dataset()
    else:
        dataset = datasets.load_dataset(
            name,
            cfg.hf_config,
            split=cfg.hf_split,
            data_files=cfg.hf_data_files,
            streaming=cfg.streaming,
            cache_dir=cfg.hf_cache_dir,
        )
        # A materialised dataset's fingerprint follows its data files; a stream is known by its name only.
        if not cfg.streaming:
            identity.append(dataset._fingerprint)
        fingerprint = hashlib.sha256("\n".join(identity).encode()).hexdigest()
    _check_column(dataset, cfg.text_field, cfg.source)
    return cfg.source, fingerprint, lambda: _read_dataset(dataset, cfg.text_field, cfg.source)


def _check_column(dataset: datasets.Dataset | datasets.IterableDataset, text_field: str, where: str) -> None:
    columns = dataset.column_names
    if columns is None:  # a stream with unknown features: look at its first row
        columns = list(next(iter(dataset), {}))
    if text_field not in columns:
        raise invalid("text_field", text_field, f"a column of {where!r}, whose columns are {columns}")


def _read_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset, text_field: str, where: str
) -> Iterator[Document]:
    for batch in dataset.select_columns([text_field]).iter(batch_size=_BATCH_ROWS):
        for text in batch[text_field]:
            yield Document(_as_text(text, text_field, where))


def _as_text(value: object, text_field: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise invalid(
            "text_field", text_field, f"a column of strings, and {where} holds {type(value).__name__}"
        )
    return value
