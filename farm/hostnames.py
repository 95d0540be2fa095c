"""What a host name in an address may be: what a connect can send to the resolver.

``farm.net.parse_address`` asks :func:`host_problem` of the host of every ``HOST:PORT``
(an IP address passes: its labels are digits). A name refused here parsed before, and
failed at each connect with IDNA's "label empty or too long" (getaddrinfo encodes the
host with the ``idna`` codec): `farm status` said so with exit 1, a worker retried it
for ever, and `farm up` restarted a server that could never listen.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

__all__ = ["MAX_LABEL", "MAX_NAME", "host_problem"]

#: DNS's limits (RFC 1035 2.3.4): a label of 1 to 63 bytes, a name of 255 bytes on the
#: wire, which is 253 characters written out (the dots, no trailing one).
MAX_LABEL: Final = 63
MAX_NAME: Final = 253
# The dots IDNA splits a name at (encodings.idna): the ideographic and full-width ones too.
_DOTS: Final = re.compile("[.\u3002\uff0e\uff61]")


def host_problem(host: str) -> str | None:
    """Why ``host`` (no port, no brackets; "" for every interface) can name no address,
    as the end of an AddressError's reason; None when a connect may try it."""
    if not host:
        return None
    # Control characters (a NUL), and what IDNA refuses (U+202E, a surrogate from argv's
    # bytes): format ones it maps away (a ZWNJ, a soft hyphen) pass.
    if any(c.isspace() or c in "[]/" or unicodedata.category(c) == "Cc" for c in host):
        return f"{host!r} is not a host name or address"
    labels = _DOTS.split(host)
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # one trailing dot: a fully qualified name ("example.com.")
    if "" in labels:
        why = "an empty label (a dot at its start, or two dots together)"
        return f"{host!r} is not a host name or address: {why}"
    spelled = []  # each label as DNS carries it
    for label in labels:
        if label.isascii():  # IDNA passes ASCII as it is, "_" included (SRV-style names)
            ascii_label = label
        else:
            try:
                ascii_label = label.encode("idna").decode("ascii")
            except UnicodeError:  # a character IDNA refuses, or over 63 once encoded
                return f"{host!r} is not a host name or address"
        if len(ascii_label) > MAX_LABEL:
            why = f"a label of {len(ascii_label)} characters, over DNS's {MAX_LABEL}"
            return f"{host!r} is not a host name or address: {why}"
        spelled.append(ascii_label)
    if (length := len(".".join(spelled))) > MAX_NAME:
        how = "" if host.isascii() else " as IDNA spells it"
        why = f"{length} characters{how}, over DNS's {MAX_NAME}"
        return f"{host!r} is not a host name or address: {why}"
    return None
