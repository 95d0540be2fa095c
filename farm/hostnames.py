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

__all__ = ["MAX_LABEL", "host_problem"]

#: DNS's limit on a label (RFC 1035 2.3.4), which the ``idna`` codec enforces on every name
#: a connect sends: a label of 1 to 63 characters. A whole name's 253 is not checked: the
#: codec lets a longer one through, and glibc resolves it from /etc/hosts (only a DNS
#: query of it fails, as any name it does not find: the resolver's error, at the connect).
MAX_LABEL: Final = 63
# The dots IDNA splits a name at (encodings.idna): the ideographic and full-width ones too.
_DOTS: Final = re.compile("[.\u3002\uff0e\uff61]")


def host_problem(host: str) -> str | None:
    """Why ``host`` (no port, no brackets; "" for every interface) can name no address,
    as the end of an AddressError's reason; None when a connect may try it.

    Refused: a control or space character, a bracket or a slash, which no host name holds
    (a URL, a typo); an empty label (a dot at the start, two together; one trailing dot is
    a fully qualified name), a label over ``MAX_LABEL`` characters once encoded, or one
    IDNA cannot encode: the ``idna`` codec, which a connect's host goes through before
    getaddrinfo, refuses those, so no connect could send them. Not refused: a name's total
    length. The codec does not check it, and glibc resolves a name past DNS's 253
    characters from /etc/hosts."""
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
    return None
