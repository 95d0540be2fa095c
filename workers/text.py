"""Small text functions: ``reverse`` (the PHP example's string reverse, by code point
where its ``strrev`` goes by byte), ``upper``, ``lower``, ``wordcount`` and ``echo``.

Every worker function in ``workers/`` receives the ``farm.worker.Job`` (``job.data``
is the payload as bytes, ``job.text`` as str) and returns bytes, str or None.
Text is UTF-8; a byte that is not valid UTF-8 is kept as it came, as one character of its
own (so Latin-1 text is reversed byte-wise, and UTF-8 text cut mid-character stays UTF-8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["reverse", "upper", "lower", "wordcount", "echo"]


def reverse(job: Any) -> bytes:
    """The payload reversed, code point by code point (a byte that is not UTF-8 as one).

    A letter written with a combining mark (decomposed text), a flag or a ZWJ emoji is
    several code points, and comes back with them in reverse order, as Python's
    ``str[::-1]`` has it. Reversing by grapheme cluster was tried (December 2026) and
    taken out: its regex held ~60 bytes a byte of input (60 MB of marks: 3.6 GB), ordinary
    decomposed or Indic text took 40-95 times as long, and Thai's SARA AM still split."""
    # surrogateescape, as _recase: one stray byte (text cut at N bytes mid-character) had
    # the whole payload reversed byte-wise, every other accented letter with it.
    text = bytes(job.data).decode("utf-8", "surrogateescape")
    return text[::-1].encode("utf-8", "surrogateescape")


def upper(job: Any) -> bytes:
    return _recase(job.data, str.upper)


def lower(job: Any) -> bytes:
    return _recase(job.data, str.lower)


def _recase(data: bytes, case: Callable[[str], str]) -> bytes:
    # surrogateescape: a byte that is not UTF-8 passes through as it came (case changes
    # leave surrogates alone), where "replace" turned each into U+FFFD.
    return case(bytes(data).decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")


#: Each ASCII whitespace byte (as ``bytes.split`` has them) to a space, any other to "x".
_SPACE_OR_NOT = bytes(0x20 if bytes([b]).isspace() else 0x78 for b in range(256))


def wordcount(job: Any) -> str:
    """The number of whitespace-separated words, as decimal text."""
    # Counted as word starts, in one copy of the payload: ``len(data.split())`` held a
    # list of every word (1.25 GB for 63 MB of "ab ab ...").
    marks = bytes(job.data).translate(_SPACE_OR_NOT)
    return str(marks.count(b" x") + marks.startswith(b"x"))


def echo(job: Any) -> bytes:
    return bytes(job.data)
