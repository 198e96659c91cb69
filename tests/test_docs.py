"""The documentation a newcomer reads: every Markdown link resolves inside the repository, and nothing in the
code cites a design document that a clone does not contain."""

import re
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


def test_code_and_docs_cite_only_documents_in_the_repository():
    for path in [*REPO.glob("**/*.py"), *REPO.glob("**/*.md")]:
        if path == Path(__file__).resolve() or {".venv", ".venv-upstream", "runs"} & set(path.parts):
            continue
        text = path.read_text()
        for name in ("DESIGN.md", "RECIPES.md", "shared/"):
            assert name not in text, f"{path.relative_to(REPO)} cites {name}, which a clone does not contain"
