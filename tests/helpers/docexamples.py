"""The examples of README.md and docs/*.md (their fenced blocks: ``examples``), what one
says it prints, and what it may leave behind: the checks tests/integration/test_docs.py
makes of each example beside its exit status.

A ``print(...)`` line (in a python block, or in a python heredoc of an sh block) whose
trailing comment is a Python literal states what that print writes::

    print(client.call("reverse", "Hello"))   # b'olleH'
    print(total)                             # 21100

The example's stdout must then hold that text as a line of its own, or a line that reads as
the same value of the same type (``# b"olleH"`` is ``b'olleH'``), or for a str the str itself
(``print("hi")  # 'hi'``: print writes a str, not its repr). Any other comment on a
print line is prose and is not checked (``# JobStatus(known, running, numerator,
denominator)``, ``# b'0 enil', b'1 enil', ...``): a comment that names output which never
comes (a stream's events that its function never sends) has to be one of these to be
caught, so write what a print shows as the literal it prints.

An example that starts a server of its own on a default store (``farm server -p 4731``)
leaves no queued job in that store: every later server on a default store would warn of
it, and a reader's next `make run` did.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

from farm.server.otherstores import queued_in
from tests.helpers import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN = ("python", "sh", "php", "toml")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"<!-- not run: (.+?) -->\s*$")


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    lang: str
    code: str
    skip: str | None

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def examples() -> list[Example]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) not in RUN:
                continue
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NOT_RUN.search(before)
            line = text[: m.start()].count("\n") + 1
            found.append(Example(doc, line, m.group(1), m.group(2), marker and marker.group(1)))
    return found


@dataclass(frozen=True)
class Stated:
    line: int  # in the block, from 1
    text: str  # the comment's text: what the print writes

    def __str__(self) -> str:
        return f"line {self.line}: # {self.text}"


def literal(text: str) -> tuple[bool, object]:
    """Whether ``text`` is a Python literal, and its value."""
    try:
        return True, ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False, None


def _print_comment(line: str) -> str | None:
    """The trailing comment of ``line`` when the line is one whole ``print(...)`` call."""
    stripped = line.strip()
    if not stripped.startswith("print("):
        return None
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(stripped).readline))
    except (tokenize.TokenError, SyntaxError):
        return None  # one line of a call that goes on: not one whole print
    comment = next((t for t in tokens if t.type == tokenize.COMMENT), None)
    if comment is None:
        return None
    try:
        code = ast.parse(stripped[: comment.start[1]])
    except SyntaxError:
        return None
    match code.body:
        case [ast.Expr(value=ast.Call(func=ast.Name(id="print")))]:
            return comment.string[1:].strip()
    return None


def stated_prints(code: str) -> list[Stated]:
    """The print lines of ``code`` whose comment states what they write (a literal)."""
    found = []
    for number, line in enumerate(code.splitlines(), 1):
        text = _print_comment(line)
        if text is not None and literal(text)[0]:
            found.append(Stated(number, text))
    return found


def _printed(text: str, line: str) -> bool:
    line = line.strip()
    if line == text:
        return True
    (ok, want), (got_ok, got) = literal(text), literal(line)
    if ok and isinstance(want, str) and line == want.strip():
        return True  # print("hi")  # 'hi': print writes a str as it is, not its repr
    return ok and got_ok and type(want) is type(got) and want == got


def unprinted(code: str, stdout: str) -> list[Stated]:
    """What ``code`` states it prints that no line of ``stdout`` holds."""
    lines = stdout.splitlines()
    return [s for s in stated_prints(code) if not any(_printed(s.text, line) for line in lines)]


def stores_left_holding(state: Path, own: str) -> list[tuple[str, int]]:
    """The default stores in ``state`` other than ``own`` (the farm's, which it runs) that
    hold queued jobs: what a server an example started left for every later server on a
    default store to warn of."""
    stores = sorted(p for p in state.glob("queue-*.db") if p.name != own)
    return [(p.name, n) for p in stores if (n := queued_in(p))]
