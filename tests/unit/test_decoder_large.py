"""A large packet that arrives in pieces is split where it lies in the decoder's buffer:
sliced out and then split, a 60 MB job took 240 MB of the server's memory at its peak (the
buffer, the slice, its bytes, the arguments). Each argument is now copied once."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farm import protocol as p
from farm.protocol import PacketType as T

LARGE = 1 << 17


def fed(decoder: p.Decoder, raw: bytes, chunk: int) -> list[object]:
    out: list[object] = []
    for i in range(0, len(raw), chunk):
        out += decoder.feed(raw[i : i + chunk])
    return out


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([T.SUBMIT_JOB, T.WORK_DATA, T.WORK_COMPLETE, T.SUBMIT_JOB_EPOCH]),
    st.binary(max_size=40),
    st.integers(min_value=1000, max_value=70_000),
)
def test_a_large_packet_in_pieces_decodes_as_it_does_whole(
    ptype: T, tail: bytes, chunk: int
) -> None:
    spec = p.PACKETS[ptype]
    args = [b"arg%d" % i for i in range(spec.nargs)]
    args[-1] = b"\0x" * (LARGE // 2) + tail  # NULs in the data stay in it
    raw = p.encode_req(ptype, *args)
    assert (
        fed(p.Decoder(), raw, chunk)
        == p.Decoder().feed(raw)
        == [p.Packet(p.REQ, ptype, tuple(args))]
    )


def test_a_large_fail_with_its_reason_stays_whole_and_a_missing_nul_is_an_empty_field() -> None:
    reason = b"H:x:1\0" + b"r" * LARGE
    raw = p.encode_res(T.WORK_FAIL, reason)
    (whole,) = fed(p.Decoder(fail_reason=True), raw, 4096)
    assert whole.args == (reason,)  # type: ignore[attr-defined]
    header = b"\0RES" + int(T.WORK_DATA).to_bytes(4, "big") + LARGE.to_bytes(4, "big")
    handle_only = header + b"H" * LARGE  # no NUL: as gearmand's own reading, [handle, b""]
    (data,) = fed(p.Decoder(), handle_only, 4096)
    assert data.args == (b"H" * LARGE, b"")  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_a_large_job_in_pieces_is_held_about_twice_at_its_peak() -> None:
    size = 8 << 20
    raw = p.encode_req(T.SUBMIT_JOB_BG, b"f", b"u", bytes(size))
    decoder = p.Decoder()
    tracemalloc.start()
    try:
        (job,) = fed(decoder, raw, 1 << 18)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(job.args[2]) == size  # type: ignore[attr-defined]
    assert decoder.buffered == 0
    # The buffer and the job's data: about 2x (4x before, with the slice and its copy).
    assert peak < 2.5 * size, f"{peak / size:.1f}x the job's size at the peak"
