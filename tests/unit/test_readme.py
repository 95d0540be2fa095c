"""README.md as a newcomer reads it: the files it and docs/*.md send the reader to are in
the repository (a clone's, and the package's long description: the README)."""

from __future__ import annotations

import re

from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_docs_send_the_reader_to_files_in_the_repository() -> None:
    # The README's table sent readers to ../shared/DESIGN.md and ../shared/PROTOCOL.md,
    # outside the repository: broken in a clone and on the package's page.
    wrong = []
    for doc in DOCS:
        text = doc.read_text()
        # A link resolves from the page's folder; a path in backticks is named from the root.
        linked = [
            (target, doc.parent / target)
            for target in re.findall(r"\]\(([^)#\s]+)", text)
            if not re.match(r"[a-z]+:", target)  # https:, mailto:
        ]
        named = [(path, ROOT / path) for path in re.findall(r"`(\.{0,2}/?[\w./-]+\.md)`", text)]
        for said, path in (*linked, *named):
            resolved = path.resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                wrong.append(f"{doc.relative_to(ROOT)}: {said}")
    assert not wrong, wrong
