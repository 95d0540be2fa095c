"""Where the code's comments, docstrings and messages send the reader: the docs they cite
are files of the repository, and a section they name in one ("docs/operations.md, When
things go wrong") is a heading or an item of it. A section renamed or a note left outside
the repository (../shared/PROTOCOL.md) otherwise goes on being cited, by an error line
too, for an engineer or an operator to look for in vain."""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT

DOCS = ROOT / "docs"
# The files that name a wrong citation on purpose, as what the checks refuse.
ABOUT_CITATIONS = {Path(__file__).resolve(), (ROOT / "tests" / "unit" / "test_readme.py").resolve()}
SOURCES = [
    path
    for path in sorted(
        [*ROOT.glob("farm/**/*.py"), *ROOT.glob("workers/**/*.py"), *ROOT.glob("bench/**/*.py")]
        + [*ROOT.glob("tests/**/*.py"), *DOCS.glob("*.md"), ROOT / "README.md"]
    )
    if path.resolve() not in ABOUT_CITATIONS
]
# docs/NAME.md, "Section" (or 'Section'), or docs/NAME.md, Section) unquoted, up to the
# parenthesis that closes it on the same line.
CITED_SECTION = re.compile(
    r"docs/([\w-]+\.md)(?:,? +\"([^\"\n]+)\"|,? +'([^'\n]+)'|, +([A-Za-z][\w -]*?)\))"
)
# A note named bare (PROTOCOL.md) or by a path that leaves the repository (../shared/X.md).
NAMED_NOTE = re.compile(r"(?<![\w/.-])((?:\.\./)*[\w-]+(?:/[\w-]+)*\.md)\b")


def _sections(doc: Path) -> list[str]:
    """What a citation may name in ``doc``, lower case: its headings, its bold items
    (``* **Replay.**``), and the words a paragraph or an item starts with."""
    found, after_blank = [], True
    for line in doc.read_text().splitlines():
        text = line.strip()
        if text.startswith(("#", "* ", "- ")) or (after_blank and text):
            found.append(text.lstrip("#*- ").replace("`", "").lower())
        found += [bold.replace("`", "").lower() for bold in re.findall(r"\*\*(.+?)\*\*", line)]
        after_blank = not text
    return found


def test_a_cited_section_is_in_the_doc_it_names() -> None:
    sections = {doc.name: _sections(doc) for doc in DOCS.glob("*.md")}
    wrong = []
    for source in SOURCES:
        for number, line in enumerate(source.read_text().splitlines(), 1):
            for match in CITED_SECTION.finditer(line):
                name, *said = match.groups()
                title = next(s for s in said if s).strip().lower()
                if name not in sections or not any(s.startswith(title) for s in sections[name]):
                    wrong.append(f"{source.relative_to(ROOT)}:{number}: {match.group(0)}")
    assert not wrong, wrong


def test_a_note_named_is_in_the_repository() -> None:
    # The README's README.md and docs/'s own names (client.md) are the repository's; a
    # note named bare or up out of it (PROTOCOL.md, ../shared/DESIGN.md) is not there
    # in a clone or an installed package.
    ours = {"README.md", *(doc.name for doc in DOCS.glob("*.md"))}
    ours |= {f"docs/{name}" for name in ours}
    wrong = []
    for source in SOURCES:
        text = source.read_text()
        for match in NAMED_NOTE.finditer(text):
            if match.group(1) not in ours:
                number = text.count("\n", 0, match.start()) + 1
                wrong.append(f"{source.relative_to(ROOT)}:{number}: {match.group(1)}")
    assert not wrong, wrong
