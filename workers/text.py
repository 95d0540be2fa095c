"""Small text functions: ``reverse`` (the PHP example's string reverse, by character
where its ``strrev`` goes by byte), ``upper``, ``lower``, ``wordcount`` and ``echo``.

Every worker function in ``workers/`` receives the ``farm.worker.Job`` (``job.data``
is the payload as bytes, ``job.text`` as str) and returns bytes, str or None.
Text is UTF-8; a byte that is not valid UTF-8 is kept as it came, as one character of its
own (so Latin-1 text is reversed byte-wise, and UTF-8 text cut mid-character stays UTF-8).
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
from collections.abc import Callable
from typing import Any

__all__ = ["reverse", "upper", "lower", "wordcount", "echo"]


def reverse(job: Any) -> bytes:
    """The payload reversed, character by character (a byte that is not UTF-8 as one).

    A character is what a reader sees as one: a letter with its combining marks, a flag's
    two regional indicators, an emoji with its skin tone or a ZWJ sequence, CR LF
    (close to Unicode's extended grapheme clusters; Hangul jamo, Indic conjuncts and the
    marks of scripts past plane 0, as Brahmi's, are split as code points)."""
    # surrogateescape, as _recase: one stray byte (text cut at N bytes mid-character) had
    # the whole payload reversed byte-wise, every other accented letter with it.
    # CR LF turned first in one pass, not a cluster each: a match per line took 13 s.
    text = bytes(job.data).decode("utf-8", "surrogateescape").replace("\r\n", "\n\r")
    if not text.isascii():
        text = _clusters_turned(text)
    return text[::-1].encode("utf-8", "surrogateescape")


def _clusters_turned(text: str) -> str:
    """``text`` with each character of several code points turned, so that turning the
    whole puts it back in order."""
    # The pattern starts at what joins (a mark, a regional indicator), which the regex
    # engine finds fast: one that may start at any code point took 18 s over 60 MB with
    # nothing to join. Written as it goes: a list of the pieces held ~100 bytes a cluster.
    out, done = io.StringIO(), 0
    for found in _clusters().finditer(text):
        start, end = found.span()
        if found[0][0] not in _NO_BASE and start > done and text[start - 1] not in "\r\n":
            start -= 1  # the marks' base, unless a control (Unicode's rule GB4)
        out.write(text[done:start])
        out.write(text[start:end][::-1])
        done = end
    out.write(text[done:])
    return out.getvalue()


#: Where a cluster begins at its match (a flag's two letters), not at the code point before.
_NO_BASE = frozenset(map(chr, range(0x1F1E6, 0x1F200)))


@functools.cache
def _clusters() -> re.Pattern[str]:
    """What joins the code point before it (marks, ZWJ and what follows), and the clusters
    that start with what joins (a flag's two regional indicators). Built at the
    first text that is not ASCII (0.05 s, from this Python's Unicode tables)."""
    marks: list[str] = []
    start = None
    for cp in range(0x10000):
        is_mark = unicodedata.category(chr(cp)) in ("Mn", "Me", "Mc")
        if is_mark and start is None:
            start = cp
        elif not is_mark and start is not None:
            marks.append(f"{chr(start)}-{chr(cp - 1)}")
            start = None
    # The marks of plane 0 (with ZWNJ, ZWJ and halfwidth kana marks) apart from the few
    # joiners past it (skin tones, tag characters, variation selectors 17-256): the regex
    # engine tests a class of plane 0 alone by a table, one with others range by range,
    # which with plane 1's marks took 10 s over 30 M characters with nothing to join.
    plane0 = "[" + "".join(marks) + "\u200c\u200d\uff9e\uff9f]"
    beyond = "[\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f\U000e0100-\U000e01ef]"
    regional = "[\U0001f1e6-\U0001f1ff]"
    # After a ZWJ, the next code point joins too (an emoji ZWJ sequence).
    joined = f"(?:\u200d[^\r\n]|{plane0}|{beyond})"
    # The lookahead lets the engine skip fast to where a match may begin (3x faster).
    begins = f"(?={plane0}|[\U0001f1e6-\U0001f1ff\U0001f3fb-\U0001f3ff\U000e0020-\U000e01ef])"
    return re.compile(f"{begins}(?:{regional}{{2}}{joined}*|{joined}+)")


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
