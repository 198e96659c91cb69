"""The documentation a newcomer reads: every Markdown link resolves inside the repository, and nothing in the
code cites a design document that a clone does not contain."""

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "bench-results").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")  # [text](target)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_link_resolves_inside_the_repository(doc):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):  # a web address or an anchor on the page
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(REPO), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def repository_files(*patterns: str) -> list[Path]:
    """The files a commit would hold (tracked, or new and not ignored): no virtual environment or run folder,
    whatever its name."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *patterns],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [REPO / name for name in listed.stdout.splitlines() if (REPO / name).is_file()]


def test_code_and_docs_cite_only_documents_in_the_repository():
    files = repository_files("*.py", "*.md")
    assert REPO / "README.md" in files and REPO / "train.py" in files
    for path in files:
        if path == Path(__file__).resolve():
            continue
        text = path.read_text()
        for name in ("DESIGN.md", "RECIPES.md", "shared/"):
            assert name not in text, f"{path.relative_to(REPO)} cites {name}, which a clone does not contain"
