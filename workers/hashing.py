"""CPU-bound hashing functions: ``pbkdf2`` (password hashing) and ``compress`` (zlib).

``pbkdf2`` input: one ASCII header line, then the password bytes::

    ITERATIONS SALT_HEX\\n<password>

ITERATIONS is 1..MAX_ITERATIONS; the salt may not be empty (the password may).
Output: the 32-byte PBKDF2-HMAC-SHA256 key as lowercase hex (ASCII bytes).
``compress`` input: any bytes; output: zlib level 9. Bad input raises ``ValueError``,
naming the part that is wrong.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

__all__ = ["pbkdf2", "compress", "MAX_ITERATIONS"]

#: Upper bound on iterations, so one job cannot hold a core for minutes.
MAX_ITERATIONS = 10_000_000


def pbkdf2(job: Any) -> bytes:
    """PBKDF2-HMAC-SHA256 of the password with the given salt and iteration count."""
    head, sep, password = bytes(job.data).partition(b"\n")
    iterations, salt = _header(head, sep)
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations).hex().encode()


def _header(head: bytes, sep: bytes) -> tuple[int, bytes]:
    """The iteration count and salt of the header line, or ValueError naming what is wrong."""
    want = "'ITERATIONS SALT_HEX'"
    if not sep:
        raise ValueError(f"no newline: the payload is {want}, a newline, the password")
    try:
        fields = head.decode("ascii").split()
    except UnicodeDecodeError:
        raise ValueError("the header line is not ASCII") from None
    if len(fields) < 2:  # an empty salt: PBKDF2 without one is a rainbow table's target
        raise ValueError(f"no salt: the header line is {want} (a salt is required)")
    if len(fields) > 2:
        raise ValueError(f"the header line is {want}, not {len(fields)} fields")
    iterations_text, salt_hex = fields
    shown = iterations_text[:24]  # a line of any length is echoed in part
    try:
        iterations = int(iterations_text)
    except ValueError:
        raise ValueError(f"ITERATIONS {shown!r} is not a whole number") from None
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"ITERATIONS must be 1..{MAX_ITERATIONS}, not {shown}")
    try:
        return iterations, bytes.fromhex(salt_hex)
    except ValueError:
        raise ValueError(f"SALT_HEX {salt_hex[:24]!r} is not hex") from None


def compress(job: Any) -> bytes:
    """zlib-compress the payload at level 9 (``zlib.decompress`` undoes it)."""
    return zlib.compress(bytes(job.data), 9)
