"""Small text functions: ``reverse`` (the PHP example's string reverse), ``upper``,
``lower``, ``wordcount`` and ``echo``.

Every worker function in ``workers/`` receives the ``farm.worker.Job`` (``job.data``
is the payload as bytes, ``job.text`` as str) and returns bytes, str or None.
Text is UTF-8; bytes that are not valid UTF-8 are reversed byte-wise.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reverse", "upper", "lower", "wordcount", "echo"]


def reverse(job: Any) -> bytes:
    """The payload reversed, character by character (byte-wise if not UTF-8)."""
    data = bytes(job.data)
    try:
        return data.decode("utf-8")[::-1].encode("utf-8")
    except UnicodeDecodeError:
        return data[::-1]


def upper(job: Any) -> str:
    return job.data.decode("utf-8", "replace").upper()


def lower(job: Any) -> str:
    return job.data.decode("utf-8", "replace").lower()


def wordcount(job: Any) -> str:
    """The number of whitespace-separated words, as decimal text."""
    return str(len(job.data.split()))


def echo(job: Any) -> bytes:
    return bytes(job.data)
