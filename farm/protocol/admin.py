"""The admin text protocol's replies, parsed (the server writes them in farm/server/admin.py).

Lists end with a line ``.``; single replies are one line starting ``OK`` or
``ERR``. ``reply_complete`` tells a reader when a whole reply has arrived.
"""

from __future__ import annotations

from typing import NamedTuple

from farm.protocol.codec import MAX_ADMIN_LINE, ProtocolError, text_bytes

__all__ = [
    "StatusRow",
    "PoisonRow",
    "JobRow",
    "reply_complete",
    "named_lines",
    "parse_status",
    "parse_poison",
    "parse_jobs",
]


def named_lines(command: str, names: list[str]) -> list[str]:
    """``COMMAND NAME...`` lines that together name ``names``, each within the server's
    longest admin line (a longer one closes the connection unanswered, as gearmand's).
    Measured in UTF-8 bytes, as the server reads them: counted in characters, a line of
    ``€`` names came to 10,273 bytes, and the server closed it unanswered every time."""
    lines: list[str] = []
    line, size = command, len(command.encode())
    for name in names:
        width = 1 + len(name.encode())  # its space and itself
        if size + width > MAX_ADMIN_LINE - 2:  # and its line end
            lines.append(line)
            line, size = command, len(command.encode())
        line, size = line + " " + name, size + width
    return lines if line == command else [*lines, line]


def reply_complete(buf: bytes | bytearray) -> bool:
    """Whether ``buf`` holds a whole reply: a list ended by ``.``, or one OK/ERR line."""
    if buf.startswith((b"OK", b"ERR")):
        return buf.endswith(b"\n")
    return buf == b".\n" or buf.endswith(b"\n.\n")


class StatusRow(NamedTuple):
    function: str
    total: int
    running: int
    workers: int


def _list_lines(text: str) -> list[str]:
    lines = []
    # "\n" only: splitlines() also splits at characters a name may hold (\x1c, U+2028).
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line == ".":
            break
        if line:
            lines.append(line)
    return lines


def parse_status(text: str) -> list[StatusRow]:
    """Parse the reply to the admin ``status`` command.

    gearmand lists a name as a client sent it: one with a newline spans lines, the last
    ending in the counts. Lines before such a line are its name's first lines (one lost
    reader's ``bad status line`` failed the whole listing for as long as the job was
    queued); lines left over without counts are still refused."""
    lines = text.split("\n")
    # The listing's end, "." and what follows it, taken off first: a "." within the listing
    # is a name's line (".\nafter" listed by gearmand), which ended it there, every later
    # row dropped with no error.
    while lines and not lines[-1].removesuffix("\r"):
        lines.pop()
    if lines and lines[-1].removesuffix("\r") == ".":
        lines.pop()
    rows = []
    held: list[str] = []  # a name's lines so far, as they came (\r and blank ones too)
    for raw in lines:
        line = raw.removesuffix("\r")
        # From the right: gearmand takes a tab in a function name, and the name comes first.
        parts = line.rsplit("\t", 3)
        if len(parts) == 4 and all(n.isdigit() for n in parts[1:]):
            name = "\n".join([*held, parts[0]])
            rows.append(StatusRow(name, int(parts[1]), int(parts[2]), int(parts[3])))
            held = []
        else:  # a blank line too: "\nleading" lost its newline
            held.append(raw)
    if any(line.removesuffix("\r") for line in held):
        first = next(line for line in held if line.removesuffix("\r"))
        raise ProtocolError(f"bad status line {first!r}", fatal=False)
    return rows


class PoisonRow(NamedTuple):
    """farm's ``show poison jobs``: a job failed after ``job_retries`` worker deaths."""

    handle: str
    function: str
    unique: str


class JobRow(NamedTuple):
    """farm's ``jobs``: one live job (gearmand has no such command)."""

    function: str
    handle: str
    state: str  # running, queued or scheduled
    priority: str  # high, normal or low
    age: float  # seconds since it was queued, or since a worker took it


def parse_jobs(text: str) -> list[JobRow]:
    """Parse farm's ``jobs`` (tab-separated: function, handle, state, priority, age)."""
    rows = []
    for line in _list_lines(text):
        parts = line.split("\t")
        if len(parts) != 5:
            raise ProtocolError(f"bad jobs line {line!r}", fatal=False)
        rows.append(JobRow(parts[0], parts[1], parts[2], parts[3], float(parts[4])))
    return rows


def parse_poison(text: str) -> list[PoisonRow]:
    """Parse farm's ``show poison jobs`` (handle, function, unique; tab-separated)."""
    rows = []
    for line in _list_lines(text):
        handle, function, unique = (line.split("\t") + ["", ""])[:3]
        rows.append(PoisonRow(handle, function, unique))
    return rows


def workers_serving(rows: list[StatusRow], function: str) -> int:
    """How many workers ``rows`` (a ``status`` listing decoded with surrogateescape) give
    ``function``. Compared as bytes: a name with a byte that is not UTF-8 is a U+FFFD in a
    lossy decode, which no name given equals ("r\\udcff", as os.fsdecode keeps the byte)
    and which would match any other such name (r\\xfe's workers counted for r\\xff)."""
    try:
        wanted = text_bytes(function)
    except UnicodeEncodeError:  # a surrogate that stands for no byte: no server lists it
        return 0
    return next((r.workers for r in rows if text_bytes(r.function) == wanted), 0)
