"""The source lines of a notebook cell's code, put into the worker's traceback by the caller.

A function defined in a Jupyter/IPython cell travels by value and keeps its file name,
``/tmp/ipykernel_PID/HASH.py``, but no such file exists: IPython keeps the cell's text in
the kernel's ``linecache`` alone (an entry without a modification time, which
``linecache.checkcache`` never drops; Python 3.13's REPL keeps its ``<python-input-N>`` so
too). The worker cannot read it, so its traceback named the frame with no line under it:
nothing of the user's cell showed. The caller has the text, so it adds each missing line
for such files only; a file on disk was the worker's to read, and is left as it wrote it.
``<string>`` is left too: every string compiled without a name has it (a dataclass's
``__init__``, a namedtuple's ``__new__`` in the worker), and Python 3.13 keeps a ``python -c``
program's text under it, so the caller's entry need not be the frame's code.
"""

from __future__ import annotations

import linecache
import re
from typing import cast

__all__ = ["with_cell_lines"]

# A frame line of traceback.format_exception; its source line is indented two spaces
# deeper than "File", after the same margin (an exception group's "  | ").
_FRAME = re.compile(r'^(?P<indent>[ |]*)File "(?P<file>.+)", line (?P<line>\d+), in ')

# The name of code compiled from a string without one of its own (see the module's text).
_ANY_STRING = "<string>"


def with_cell_lines(text: str) -> str:
    """``text`` (a worker's formatted traceback) with the source line of each frame of
    in-memory code that the caller's ``linecache`` holds, where the worker wrote none."""
    # A copy, made in one step: another thread may add to the cache meanwhile (formatting a
    # traceback of its own), and iterating the dict itself would then raise here, in the
    # thread that settles the call's future.
    cached = dict(linecache.cache)
    if not any(len(entry) == 4 and entry[1] is None for entry in cached.values()):
        return text  # no in-memory source here (no notebook): nothing to add
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        frame = _FRAME.match(line)
        if frame is None:
            continue
        indent = frame["indent"] + "  "
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith(indent) and following[len(indent) :].strip():
            continue  # the worker wrote the line (a frame's source is indented under it)
        entry = cached.get(frame["file"]) if frame["file"] != _ANY_STRING else None
        if entry is None or len(entry) != 4 or entry[1] is not None:
            continue  # not in-memory source: a real file, or one this process never saw
        number, source = int(frame["line"]), cast(object, entry[2])  # typeshed's shape, not all
        if not isinstance(source, (list, tuple)):
            continue  # what another tool put there in another shape: nothing to show
        code = source[number - 1] if 1 <= number <= len(source) else None
        if isinstance(code, str) and code.strip():  # what another tool put there: only text
            out.append(f"{indent}{code.strip()}\n")
    return "".join(out)
