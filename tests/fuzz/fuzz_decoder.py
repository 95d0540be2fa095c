"""Coverage-guided fuzzing of the sans-I/O decoder with atheris.

    python tests/fuzz/fuzz_decoder.py -runs=50000

The first byte picks a chunk size; the rest is fed to a Decoder in chunks of
that size. Only ProtocolError may escape, and when none does, chunked decoding
must give exactly what one-shot decoding gives.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from farm import protocol as p


def one_shot(data: bytes) -> list[object] | None:
    decoder = p.Decoder(max_packet=4096)
    try:
        events = decoder.feed(data)
        decoder.check()
    except p.ProtocolError:
        return None
    return events


def test_one_input(raw: bytes) -> None:
    if not raw:
        return
    chunk = raw[0] % 32 + 1
    data = raw[1:]
    decoder = p.Decoder(max_packet=4096)
    events: list[object] = []
    try:
        for i in range(0, len(data), chunk):
            events += decoder.feed(data[i : i + chunk])
        decoder.check()
    except p.ProtocolError:
        return
    whole = one_shot(data)
    if whole is not None and whole != events:
        raise AssertionError(f"chunked decoding differs: {events!r} != {whole!r}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
