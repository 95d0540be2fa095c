"""The admin protocol's reply pieces, shared by farm.server.admin and
farm.server.adminpeers: gearmand's error lines, and names and unique keys as a listing
prints them."""

from __future__ import annotations

import re

from farm.protocol.codec import name_problem

OK = "OK\r\n"


def incomplete(command: str) -> str:
    text = "An+incomplete+set+of+arguments+was+sent+to+this+command+"
    return f"ERR INVALID_ARGUMENTS {text}{command}\r\n"


def bad_name(name: bytes) -> str | None:
    """Why an admin command may not make a function of ``name`` (the binary protocol's
    rule, farm.protocol.codec.name_problem, in the admin protocol's words), or None."""
    if (problem := name_problem(name)) is None:
        return None
    code, why = problem
    code = code if code == "ARGUMENT_TOO_LARGE" else "INVALID_ARGUMENTS"  # gearmand's admin code
    return f"ERR {code} function+name+{why.replace(' ', '+')}\r\n"


#: A-Z to a-z and nothing else: gearmand's strcasecmp, where str.lower() also folds a
#: Kelvin sign to k and a dotted capital I to i.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(word: str) -> str:
    return word.translate(_ASCII_LOWER)


def unknown(command: str) -> str:
    return f"ERR UNKNOWN_COMMAND Unknown+server+command{command}\r\n"


def as_text(raw: bytes) -> str:
    # Names are bytes on the wire: a name that is not UTF-8 goes back out as it came (the
    # connection encodes replies with surrogateescape), as gearmand prints it.
    return raw.decode("utf-8", "surrogateescape")


#: Bytes a unique key may hold that would break a listing's lines (and a tab its fields).
_BREAKS_LINES = re.compile("[\x00-\x1f\x7f]")


def key_line(raw: bytes) -> str:
    """A unique key as one line of a listing: gearmand prints it as it came, so a key
    holding a newline, or a key that is ``.``, ended the listing early and the rest was
    read as the reply to the next command. Control characters are written ``\\xNN`` (and
    ``.`` as ``\\x2e``); every other key is printed as gearmand prints it."""
    text = as_text(raw)
    if text == ".":
        return "\\x2e"
    return _BREAKS_LINES.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def as_raw(word: str) -> bytes:
    """An admin line's word as the bytes it was (farm.protocol.codec: surrogateescape)."""
    return word.encode("utf-8", "surrogateescape")
