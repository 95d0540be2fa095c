"""CPU-bound hashing functions: ``pbkdf2`` (password hashing) and ``compress`` (zlib).

``pbkdf2`` input: one ASCII header line, then the password bytes::

    ITERATIONS SALT_HEX\\n<password>

Output: the 32-byte PBKDF2-HMAC-SHA256 key as lowercase hex (ASCII bytes).
``compress`` input: any bytes; output: zlib level 9. Bad input raises ``ValueError``.
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
    try:
        iterations_text, salt_hex = head.decode("ascii").split()
        iterations = int(iterations_text)
        salt = bytes.fromhex(salt_hex)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("payload must start with a line 'ITERATIONS SALT_HEX'") from None
    if not sep or not 1 <= iterations <= MAX_ITERATIONS:
        raise ValueError(f"need a header line and 1..{MAX_ITERATIONS} iterations")
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations).hex().encode()


def compress(job: Any) -> bytes:
    """zlib-compress the payload at level 9 (``zlib.decompress`` undoes it)."""
    return zlib.compress(bytes(job.data), 9)
