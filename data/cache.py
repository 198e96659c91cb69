"""On-disk cache primitives shared by the tokenizer and the packed corpus.

Entries are folders named by a key (a hash of everything that decides their content). A folder is built
under a temporary name in the same parent and renamed into place, and `rename` is atomic, so a reader (any
rank, any run) sees a complete entry or none. A per-entry `flock` makes the other ranks on a host wait for
the first builder instead of building the same entry again; where locks are unavailable (e.g. some network
file systems) duplicate builds stay correct: the first rename wins and the others are discarded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the atomic rename alone keeps entries whole
    fcntl = None


def cache_key(spec: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able description of an entry."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@contextmanager
def atomic_directory(final: str | os.PathLike) -> Iterator[str]:
    """Yield an empty staging folder; when the block succeeds, it becomes `final` by one rename.

    If `final` already exists by then (another process won the race), the staging copy is dropped. On an
    exception nothing is left behind."""
    final = os.path.abspath(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(final)}-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    try:
        yield staging
        try:
            os.rename(staging, final)
        except OSError:
            if not os.path.isdir(final):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def build_lock(final: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `<final>.lock` (blocks while another process builds the same entry)."""
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    with open(f"{os.path.abspath(final)}.lock", "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)
