"""The sans-I/O codec, driven without sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.protocol import admin as pa


def test_table_covers_every_type_from_1_to_42_but_5_and_farms_own() -> None:
    assert sorted(p.PACKETS) == [t for t in range(1, 43) if t != 5] + [T.JOB_ACCEPT, T.JOB_REVOKE]
    for number, spec in p.PACKETS.items():
        assert T(number).name == spec.name


def test_submit_job_frames_arguments_with_nul_and_data_runs_to_the_end() -> None:
    raw = p.encode_req(T.SUBMIT_JOB, b"reverse", b"u1", b"a\0b")
    assert raw == b"\0REQ" + (7).to_bytes(4, "big") + (14).to_bytes(4, "big") + b"reverse\0u1\0a\0b"
    (pkt,) = p.Decoder().feed(raw)
    assert pkt == p.Packet(p.REQ, T.SUBMIT_JOB, (b"reverse", b"u1", b"a\0b"))


def test_packets_without_data_have_no_trailing_nul() -> None:
    assert p.encode_res(T.JOB_CREATED, b"H:x:1").endswith(b"H:x:1")
    assert p.encode_res(T.ERROR, b"CODE", b"text")[12:] == b"CODE\0text"
    assert p.encode_req(T.PRE_SLEEP) == b"\0REQ\0\0\0\x04\0\0\0\0"


def test_decoder_reassembles_packets_split_at_every_byte() -> None:
    raw = p.encode_req(T.SUBMIT_JOB_BG, b"f", b"", b"payload") + p.encode_req(T.ECHO_REQ, b"hi")
    decoder = p.Decoder()
    events = []
    for i in range(len(raw)):
        events += decoder.feed(raw[i : i + 1])
    assert [e.type for e in events] == [T.SUBMIT_JOB_BG, T.ECHO_REQ]
    assert decoder.buffered == 0


def test_admin_lines_and_binary_alternate_on_one_stream() -> None:
    decoder = p.Decoder()
    events = decoder.feed(b"status\r\n" + p.encode_req(T.ECHO_REQ, b"x") + b"workers\n")
    assert events == [
        p.AdminLine("status"),
        p.Packet(p.REQ, T.ECHO_REQ, (b"x",)),
        p.AdminLine("workers"),
    ]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\0XYZ" + bytes(8), "INVALID_MAGIC"),
        (b"\0REQ" + (0).to_bytes(4, "big") + bytes(4), "INVALID_COMMAND"),
        (b"\0REQ" + (5).to_bytes(4, "big") + bytes(4), "INVALID_COMMAND"),
        (b"\0REQ" + (43).to_bytes(4, "big") + bytes(4), "INVALID_COMMAND"),
    ],
)
def test_bad_headers_are_fatal_protocol_errors(raw: bytes, code: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.Decoder().feed(raw)
    assert info.value.code == code
    assert info.value.fatal


def test_oversized_body_is_refused_from_the_header_alone() -> None:
    decoder = p.Decoder(max_packet=1024)
    header = b"\0REQ" + (7).to_bytes(4, "big") + (10**9).to_bytes(4, "big")
    with pytest.raises(p.ProtocolError) as info:
        decoder.feed(header)
    assert info.value.code == "ARGUMENT_TOO_LARGE"


def test_oversized_work_packet_names_its_job_once_the_handle_is_here() -> None:
    decoder = p.Decoder(max_packet=1024)
    header = b"\0REQ" + int(T.WORK_COMPLETE).to_bytes(4, "big") + (5000).to_bytes(4, "big")
    assert decoder.feed(header + b"H:ho") == []  # no error before the handle can be read
    with pytest.raises(p.ProtocolError) as info:
        decoder.feed(b"st:7\0" + b"r" * 100)
    assert info.value.code == "ARGUMENT_TOO_LARGE"
    assert (info.value.ptype, info.value.handle) == (T.WORK_COMPLETE, b"H:host:7")


def test_oversized_work_packet_without_a_handle_in_reach_names_none() -> None:
    decoder = p.Decoder(max_packet=1024)
    header = b"\0REQ" + int(T.WORK_DATA).to_bytes(4, "big") + (5000).to_bytes(4, "big")
    with pytest.raises(p.ProtocolError) as info:
        decoder.feed(header + b"x" * 200)
    assert info.value.handle is None


def test_the_servers_decoder_reads_an_oversized_body_past_in_pieces() -> None:
    # The server's: every packet over the limit is an event, its body dropped unbuffered,
    # and what follows it decodes (a client keeps its connection after the ERROR).
    decoder = p.Decoder(max_packet=1024, read_past_too_large=True)
    header = b"\0REQ" + int(T.SUBMIT_JOB).to_bytes(4, "big") + (5000).to_bytes(4, "big")
    (event,) = decoder.feed(header + b"f\0\0" + b"x" * 997)
    assert isinstance(event, p.Oversized) and event.handle is None
    error = event.error()
    assert (error.code, error.fatal, error.handle) == ("ARGUMENT_TOO_LARGE", False, None)
    assert decoder.feed(b"x" * 3000) == [] and decoder.buffered == 0
    echo = p.encode_req(T.ECHO_REQ, b"next")
    assert decoder.feed(b"x" * 1000 + echo) == [p.Packet(p.REQ, T.ECHO_REQ, (b"next",))]
    work = b"\0REQ" + int(T.WORK_COMPLETE).to_bytes(4, "big") + (5000).to_bytes(4, "big")
    (event,) = decoder.feed(work + b"H:host:7\0" + b"r" * 100)
    assert event.error().handle == b"H:host:7"


def test_wrong_argument_count_is_not_fatal_and_is_consumed() -> None:
    decoder = p.Decoder()
    bad = b"\0REQ" + (7).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"abc"
    with pytest.raises(p.ProtocolError) as info:
        decoder.feed(bad)
    assert not info.value.fatal
    assert decoder.feed(p.encode_req(T.ECHO_REQ, b"ok"))[0].args == (b"ok",)


@pytest.mark.parametrize("ptype", [T.WORK_COMPLETE, T.WORK_DATA, T.WORK_WARNING, T.WORK_EXCEPTION])
@pytest.mark.parametrize("buffered", [False, True])
def test_a_workers_news_that_is_the_bare_handle_has_no_data(ptype: int, buffered: bool) -> None:
    """Perl's Gearman::Worker sends these so when its data is false in Perl ("" or "0")."""
    decoder = p.Decoder()
    bare = b"\0REQ" + int(ptype).to_bytes(4, "big") + (8).to_bytes(4, "big") + b"H:host:7"
    if buffered:  # the body arrives in two reads: decoded from the buffer
        assert decoder.feed(bare[:14]) == []
        bare = bare[14:]
    (pkt,) = decoder.feed(bare)
    assert pkt.args == (b"H:host:7", b"")
    assert type(pkt.args[0]) is bytes and type(pkt.args[1]) is bytes
    bad = b"\0REQ" + int(T.WORK_STATUS).to_bytes(4, "big") + (8).to_bytes(4, "big") + b"H:host:7"
    with pytest.raises(p.ProtocolError):  # a packet of no data still needs every argument
        decoder.feed(bad)


def test_good_packets_before_a_bad_one_are_not_lost() -> None:
    decoder = p.Decoder()
    events = decoder.feed(p.encode_req(T.ECHO_REQ, b"1") + b"\0BAD" + bytes(8))
    assert [e.args for e in events] == [(b"1",)]
    with pytest.raises(p.ProtocolError):
        decoder.check()


@pytest.mark.parametrize("chunk", [1, 1000, 5000, 1 << 20])
def test_an_admin_lines_limit_is_the_same_however_its_bytes_come(chunk: int) -> None:
    """A line of MAX_ADMIN_LINE bytes with its newline decodes, one byte longer is refused,
    whether the line comes whole or in pieces (whole, a longer one was decoded)."""
    for size, fits in ((p.MAX_ADMIN_LINE, True), (p.MAX_ADMIN_LINE + 1, False)):
        data = b"status" + b" " * (size - 7) + b"\n" + b"version\n"
        decoder = p.Decoder()
        events: list[object] = []
        try:
            for at in range(0, len(data), chunk):
                events += decoder.feed(data[at : at + chunk])
            decoder.check()
        except p.ProtocolError:
            assert not fits, (size, chunk)
            assert events == []
        else:
            assert fits, (size, chunk)
            assert events == [p.AdminLine("status" + " " * (size - 7)), p.AdminLine("version")]


def test_client_side_decoder_refuses_text() -> None:
    with pytest.raises(p.ProtocolError):
        p.Decoder(allow_admin=False).feed(b"hello\n")


def test_encoder_refuses_what_the_wire_cannot_say() -> None:
    with pytest.raises(p.LocalProtocolError):
        p.encode_req(T.SUBMIT_JOB, b"f\0g", b"", b"")
    with pytest.raises(p.LocalProtocolError):
        p.encode_req(T.SUBMIT_JOB, b"f")
    with pytest.raises(p.LocalProtocolError):
        p.encode_req(99)


class _Sized:
    """Stands for ``size`` bytes without holding them (4 GiB is not allocated here): the
    encoder weighs a body by its arguments' lengths before it joins a byte of them."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size


def test_encoder_refuses_a_body_past_what_its_four_byte_length_can_say() -> None:
    # It raised struct.error ("'I' format requires 0 <= number <= 4294967295"), once the
    # whole body was copied; a client's caller could not tell that from a bug.
    huge: bytes = _Sized(2**32 - 3)  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"SUBMIT_JOB: a body of 4294967296 bytes.*4 GiB - 1"):
        p.encode_req(T.SUBMIT_JOB, b"f", b"", huge)
    assert isinstance(p.LocalProtocolError(), ValueError)
    at_limit: bytes = _Sized(2**32 - 4)  # type: ignore[assignment]
    with pytest.raises(TypeError):  # past the weighing: joining a stand-in fails
        p.encode_req(T.SUBMIT_JOB, b"f", b"", at_limit)


def test_admin_replies_parse() -> None:
    assert pa.parse_status("rev\t3\t1\t2\nx\t0\t0\t0\n.\n") == [
        pa.StatusRow("rev", 3, 1, 2),
        pa.StatusRow("x", 0, 0, 0),
    ]
    # gearmand takes a tab in a function name: read from the right (farm status broke on it)
    assert pa.parse_status("a\tb\t1\t0\t0\n.\n") == [pa.StatusRow("a\tb", 1, 0, 0)]
    # Lines end at "\n" alone: str.splitlines() also split at U+2028 and \x1c, which
    # gearmand's names may hold (farm status failed on one).
    assert pa.parse_status("a\u2028b\x1cc\t1\t0\t0\r\n.\n") == [
        pa.StatusRow("a\u2028b\x1cc", 1, 0, 0)
    ]
    with pytest.raises(p.ProtocolError, match="bad status line"):
        pa.parse_status("rev\tthree\t1\t2\n.\n")
    # A name gearmand lists over lines may hold a "." line or start with a newline: the first
    # ended the listing there (every later row dropped, no error), the second lost its "\n".
    listed = "a\t1\t0\t0\n.\nafter\t2\t0\t0\n\nleading\t3\t0\t0\nz\t4\t0\t0\n.\n"
    assert pa.parse_status(listed) == [
        pa.StatusRow("a", 1, 0, 0),
        pa.StatusRow(".\nafter", 2, 0, 0),
        pa.StatusRow("\nleading", 3, 0, 0),
        pa.StatusRow("z", 4, 0, 0),
    ]
    assert pa.parse_status(".\n") == []
    with pytest.raises(p.ProtocolError, match="bad status line 'left'"):
        pa.parse_status("a\t1\t0\t0\n\nleft\n.\n")


def test_an_admin_listing_is_whole_only_at_its_dot_line() -> None:
    # A line of it may end in "." (`workers` of a function named "v1."): read as the end
    # when a read stops there, the listing would be cut short.
    assert not pa.reply_complete(b"30 127.0.0.1 - : v1.\n")
    assert pa.reply_complete(b"30 127.0.0.1 - : v1.\n.\n") and pa.reply_complete(b".\n")
    assert pa.reply_complete(b"OK\r\n") and not pa.reply_complete(b"ERR x")


_arg = st.binary(max_size=40).filter(lambda b: b"\0" not in b)


@st.composite
def packets(draw: st.DrawFn) -> p.Packet:
    ptype = draw(st.sampled_from(sorted(p.PACKETS)))
    spec = p.PACKETS[ptype]
    args = [draw(_arg) for _ in range(spec.nargs)]
    if spec.nargs and spec.has_data:
        args[-1] = draw(st.binary(max_size=200))
    if spec.nargs == 1 and not args[0]:
        args[0] = b"x"  # an empty sole argument is an empty body, indistinguishable from none
    magic = draw(st.sampled_from([p.REQ, p.RES]))
    return p.Packet(magic, ptype, tuple(args))


@given(st.lists(packets(), max_size=8), st.integers(min_value=1, max_value=64))
def test_round_trip_through_any_chunking(pkts: list[p.Packet], chunk: int) -> None:
    raw = b"".join(p.encode(pkt.magic, pkt.type, *pkt.args) for pkt in pkts)
    decoder = p.Decoder()
    out: list = []
    for i in range(0, len(raw), chunk):
        out += decoder.feed(raw[i : i + chunk])
    assert out == pkts


@given(st.binary(max_size=300))
def test_decoder_raises_only_its_own_error_on_garbage(data: bytes) -> None:
    decoder = p.Decoder(max_packet=4096)
    try:
        decoder.feed(data)
        decoder.check()
    except p.ProtocolError:
        pass


def test_the_supervisors_reading_of_peers_splits_lines_at_newlines_only() -> None:
    # A name with U+2028 split a `peers` line in two (str.splitlines), so the supervisor saw
    # no listing and signalled every draining command worker at once.
    from farm.pools.peerlist import PeerRow, parse_peers

    reply = "pid:7\t5\t3\t0\tH:x:1\tf\u2028g\t0.500\tid\t1\nfd:9\t6\t0\t1\t-\t-\t-\t-\t0\n.\n"
    assert parse_peers(reply) == [
        PeerRow("pid:7", "5", 3, False, "H:x:1", "f\u2028g", 0.5, "id", True),
        PeerRow("fd:9", "6", 0, True, "", "", None, "-", False),
    ]


def test_what_a_command_worker_registered_is_read_from_the_peers_listing() -> None:
    # `peers` names a connection as psutil sees it (pid, TCP port) and what it registered,
    # in one reply: joined by fd with `workers`, a reused fd credited another's functions.
    from farm.pools.peerlist import parse_peers, registrations

    peers = parse_peers(
        "tcp:127.0.0.1:4000\t7\t0\t0\t-\t-\t-\tfarm:rev#0:1\t1\twrong\tx\n"
        "pid:9\t8\t0\t0\t-\t-\t-\t-\t1\ta\npid:9\t11\t0\t0\t-\t-\t-\t-\t0\tb c\n"
        "pid:10\t12\t0\t0\t-\t-\t-\t-\t0\n.\n"
    )
    assert registrations(peers) == {
        "tcp:127.0.0.1:4000": frozenset({"wrong", "x"}),
        "pid:9": frozenset({"a", "b c"}),
        "pid:10": frozenset(),
    }


def test_a_registration_is_final_once_each_connection_that_made_one_asks_for_jobs() -> None:
    # A worker's CAN_DOs are packets of their own, a slow init may come between them: what
    # one registered before it asked for a job (GRAB_JOB, PRE_SLEEP) may be all it has so far.
    from farm.pools.peerlist import REGISTRATION_SETTLE, Registered, parse_peers

    seen = Registered(
        parse_peers(
            "tcp:127.0.0.1:4000\t7\t0\t0\t-\t-\t-\t-\t1\twrong\n"
            "pid:9\t8\t0\t0\t-\t-\t-\t-\t1\ta\npid:9\t11\t0\t0\t-\t-\t-\t-\t0\tb\n"
            "pid:10\t12\t0\t0\t-\t-\t-\t-\t0\n.\n"
        )
    )
    wrong, ab = frozenset({"wrong"}), frozenset({"a", "b"})
    held = (wrong, 102.0 - REGISTRATION_SETTLE)  # seen so since a look that long before
    assert seen.of(frozenset({"tcp:127.0.0.1:4000", "pid:3"}), held, 102.0) == (held, True)
    assert seen.of(frozenset({"pid:9"}), (ab, 0.0), 102.0) == ((ab, 0.0), False)  # b's not asked
    # A connection that registered nothing (yet) holds nothing back.
    assert seen.of(frozenset({"pid:10", "tcp:127.0.0.1:4000"}), held, 102.0) == (held, True)


def test_a_registration_asked_for_is_final_once_no_new_name_came_for_the_settle_time() -> None:
    # GearmaNode's Worker.addFunction sends PRE_SLEEP after each CAN_DO: a look between two
    # of its names saw the first asked for, and took it for all the worker would serve.
    from farm.pools.peerlist import REGISTRATION_SETTLE, Registered, parse_peers

    seen = Registered(parse_peers("pid:9\t8\t0\t0\t-\t-\t-\t-\t1\thelper\n.\n"))
    helper = frozenset({"helper"})
    first, final = seen.of({"pid:9"}, (frozenset(), 0.0), 50.0)  # a new name: from now
    assert (first, final) == ((helper, 50.0), False)
    assert seen.of({"pid:9"}, first, 50.0 + REGISTRATION_SETTLE - 0.1) == (first, False)
    assert seen.of({"pid:9"}, first, 50.0 + REGISTRATION_SETTLE) == (first, True)
    # Another name since (rightname dropped again, say): the wait starts over.
    assert seen.of({"pid:9"}, (frozenset({"a"}), 0.0), 60.0) == ((helper, 60.0), False)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"reverse", None),
        ("naïve".encode(), None),
        (b"x" * p.MAX_FUNCTION, None),
        (b"", ("INVALID_COMMAND", "is empty")),
        (b"x" * (p.MAX_FUNCTION + 1), ("ARGUMENT_TOO_LARGE", "is longer than 512 bytes")),
        (b"a\tb", ("INVALID_COMMAND", "holds a control character")),
        ("a\u2028b".encode(), ("INVALID_COMMAND", "holds a control character")),
    ],
)
def test_one_rule_says_which_function_names_a_farm_server_takes(
    name: bytes, problem: tuple[str, str] | None
) -> None:
    # The server's binary and admin protocols and the CLI all ask this one function.
    assert p.name_problem(name) == problem


def test_an_epoch_out_of_range_is_named_with_the_range_and_milliseconds_hinted() -> None:
    # time.time() * 1000 was "not epoch seconds from 1970 on", but it is after 1970.
    import datetime
    import time

    from farm.protocol.checks import as_epoch

    with pytest.raises(ValueError, match=r"past 2\*\*40 .*milliseconds"):
        as_epoch(time.time() * 1000)
    for before in (-5, datetime.datetime(1969, 7, 20, tzinfo=datetime.UTC)):
        with pytest.raises(ValueError, match=r"before 1970.* from 0 to 2\*\*40") as raised:
            as_epoch(before)
        assert "milliseconds" not in str(raised.value)
    assert as_epoch(0) == 0 and as_epoch(2**40) == 2**40


@pytest.mark.parametrize("timeout", [0, -1, 0.5, 1e9, float("nan"), "5"])
def test_a_worker_timeout_out_of_range_is_named_with_the_whole_range(timeout: object) -> None:
    # Anything under MIN_TIMEOUT is refused, yet the message said "> 0 and at most N".
    from farm.protocol.checks import check_timeout

    with pytest.raises(
        ValueError, match=r"^f: timeout must be a number of seconds from 1 to 31622400, not "
    ):
        check_timeout("f", timeout)
    assert check_timeout("f", 1) == 1 and check_timeout("f", p.MAX_TIMEOUT) == p.MAX_TIMEOUT
