"""The example job functions in workers/ for text and hashing, called like a worker
calls them (an object with ``data``)."""

from __future__ import annotations

import hashlib
import tracemalloc
import zlib
from types import SimpleNamespace

import pytest

from workers import hashing, text


def test_hashing_functions() -> None:
    out = hashing.pbkdf2(SimpleNamespace(data=b"1000 0a0b\npassword"))
    assert out == hashlib.pbkdf2_hmac("sha256", b"password", b"\n\x0b", 1000).hex().encode()
    with pytest.raises(ValueError):
        hashing.pbkdf2(SimpleNamespace(data=b"lots zz\npw"))
    assert zlib.decompress(hashing.compress(SimpleNamespace(data=b"a" * 1000))) == b"a" * 1000


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (b"1000 0a0b", "no newline: the payload is 'ITERATIONS SALT_HEX', a newline, the password"),
        (b"1000 \npw", "no salt: the header line is 'ITERATIONS SALT_HEX' (a salt is required)"),
        (b"1000\npw", "no salt: the header line is 'ITERATIONS SALT_HEX' (a salt is required)"),
        (b"1000 0a 0b\npw", "the header line is 'ITERATIONS SALT_HEX', not 3 fields"),
        (b"lots 0a0b\npw", "ITERATIONS 'lots' is not a whole number"),
        (b"1000 zz\npw", "SALT_HEX 'zz' is not hex"),
        (b"0 0a0b\npw", f"ITERATIONS must be 1..{hashing.MAX_ITERATIONS}, not 0"),
        (
            b"1000000000000 0a0b\npw",
            f"ITERATIONS must be 1..{hashing.MAX_ITERATIONS}, not {10**12}",
        ),
        (b"\xff\xfe\npw", "the header line is not ASCII"),
    ],
)
def test_pbkdf2_says_which_part_of_the_payload_is_wrong(payload: bytes, said: str) -> None:
    # Each of these failed with one of two messages that named neither the part nor the
    # value: a payload with no newline read "need a header line and 1..10000000
    # iterations", an empty salt (an application's f"{n} {salt.hex()}") read "payload must
    # start with a line 'ITERATIONS SALT_HEX'".
    with pytest.raises(ValueError) as refused:
        hashing.pbkdf2(SimpleNamespace(data=payload))
    assert str(refused.value) == said


def test_text_functions_keep_bytes_that_are_not_utf8_as_they_came() -> None:
    # A Latin-1 payload came back from upper and lower with each such byte turned into
    # U+FFFD (three bytes of UTF-8): the caller's text silently damaged.
    latin1 = SimpleNamespace(data="café ñ".encode("latin-1"))
    assert text.upper(latin1) == b"CAF\xe9 \xf1"
    assert text.lower(SimpleNamespace(data=b"CAF\xc9 \xff")) == b"caf\xc9 \xff"
    assert text.upper(SimpleNamespace(data="straße".encode())) == b"STRASSE"
    assert text.reverse(latin1) == b"\xf1 \xe9fac"


def test_reverse_keeps_text_with_a_stray_byte_readable() -> None:
    # An application that cuts its text at N bytes splits a character: one byte that is
    # not UTF-8 made reverse turn the whole payload byte-wise, so every other accented
    # letter came back as two bytes in the wrong order ("\xa9\xc3" for "é").
    cut = "naïve café".encode()[:-1]
    assert text.reverse(SimpleNamespace(data=cut)) == b"\xc3" + "fac evïan".encode()
    assert text.reverse(SimpleNamespace(data=b"\x00a\xffb\x00")) == b"\x00b\xffa\x00"


@pytest.mark.parametrize(
    ("shown", "reversed_"),
    [
        ("noël", "lëon"),  # composed: one code point
        ("one\r\ntwo", "owt\n\reno"),  # as PHP's strrev has it for ASCII text
        ("e\u0301x", "x\u0301e"),  # a combining mark: code point by code point
    ],
)
def test_reverse_goes_code_point_by_code_point(shown: str, reversed_: str) -> None:
    assert text.reverse(SimpleNamespace(data=shown.encode())) == reversed_.encode()


@pytest.mark.parametrize(
    "data",
    [b"", b"   ", b"one", b" two  words ", b"a\tb\nc\rd\x0be\x0cf", b"\x1c\xa0x y", b"\xe9 \xff"],
)
def test_wordcount_counts_as_split_does(data: bytes) -> None:
    assert text.wordcount(SimpleNamespace(data=data)) == str(len(data.split()))


def test_wordcount_holds_no_word_in_memory() -> None:
    # A list of every word: 21 M words of "ab " (a 63 MB payload, under the server's
    # 64 MiB packet) took the worker to 1.25 GB.
    data = b"ab " * 1_000_000
    tracemalloc.start()
    try:
        assert text.wordcount(SimpleNamespace(data=data)) == "1000000"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * len(data), f"{peak} bytes for a payload of {len(data)}"
