"""Hostile and broken input: the server answers or closes as PROTOCOL.md says,
and stays healthy for everybody else (a queued job survives every case).

``any_server`` where gearmand 1.1.20 behaves the same; ``farm_server`` for
farm's stricter rules (docs/gearmand-probes.md lists what gearmand does).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest

from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server, start_farm_server, start_with_store
from tests.helpers.waiting import wait_for


def header(ptype: int, size: int, magic: bytes = b"\0REQ") -> bytes:
    return magic + struct.pack(">II", ptype, size)


def packet(ptype: int, body: bytes, magic: bytes = b"\0REQ") -> bytes:
    return header(ptype, len(body), magic) + body


def sync(peer: Peer) -> None:
    peer.send(T.ECHO_REQ, b"sync")
    assert peer.expect(T.ECHO_RES).args == (b"sync",)


def queue_keeper(srv: Server) -> tuple[Peer, bytes]:
    """A background job queued before the bad input arrives."""
    c = Peer(srv.addr)
    c.send(T.SUBMIT_JOB_BG, "keep", "", "kept")
    h = c.expect(T.JOB_CREATED).args[0]
    return c, h


def assert_healthy(srv: Server, handle: bytes) -> None:
    """A new, well-behaved connection works and the queued job is still there."""
    assert srv.proc.poll() is None, "the server died"
    p = Peer(srv.addr)
    try:
        p.send(T.ECHO_REQ, b"ok?")
        assert p.expect(T.ECHO_RES).args == (b"ok?",)
        status = p.admin("status")
        assert "keep\t1\t0\t0\n" in status, status
        p.send(T.GET_STATUS, handle)
        assert p.expect(T.STATUS_RES).args[1] == b"1"
    finally:
        p.close()


@pytest.fixture
def keeper_any(any_server) -> Iterator[tuple[Server, bytes]]:
    c, h = queue_keeper(any_server)
    yield any_server, h
    c.close()


@pytest.fixture
def keeper_farm(farm_server) -> Iterator[tuple[Server, bytes]]:
    c, h = queue_keeper(farm_server)
    yield farm_server, h
    c.close()


@pytest.fixture
def small_farm() -> Iterator[tuple[Server, bytes]]:
    srv = start_farm_server("--max-packet", "1024")
    c, h = queue_keeper(srv)
    yield srv, h
    c.close()
    srv.stop()


# -- magic ---------------------------------------------------------------------


def test_res_magic_is_invalid_magic_and_connection_survives(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.ECHO_REQ, b"hi", magic=b"\0RES"))
    err = p.expect(T.ERROR)
    assert err.args[0] == b"INVALID_MAGIC"
    sync(p)
    assert_healthy(srv, h)


@pytest.mark.parametrize(
    "data",
    [header(T.ECHO_REQ, 0, magic=b"\0XYZ"), b"\0" * 12, header(T.ECHO_REQ, 0, magic=b"\0req")],
    ids=["XYZ", "zeros", "lowercase"],
)
def test_bad_magic_closes(keeper_any, peer_factory, data):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(data)
    assert p.closed_within(5)
    assert_healthy(srv, h)


# -- packet types --------------------------------------------------------------


@pytest.mark.parametrize("ptype", [0, 43, 44, 100, 65536, 2**24])
def test_unknown_type_closes(keeper_any, peer_factory, ptype):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(header(ptype, 0))
    assert p.closed_within(5)
    assert_healthy(srv, h)


@pytest.mark.parametrize("ptype", [199, T.JOB_ACCEPT, T.JOB_REVOKE, 202])
@pytest.mark.parametrize("body", [b"", b"H:x:1"], ids=["empty", "handle"])
def test_farms_own_numbers_sent_by_a_peer_close_as_unknown(keeper_any, peer_factory, ptype, body):
    # JOB_REVOKE is farm's server's to send, to a worker that asked (docs/held-grab.md), and
    # JOB_ACCEPT a held-grab worker's. Sent to farm's server by anyone else, JOB_REVOKE was
    # answered INVALID_COMMAND, as a known packet sent the wrong way; gearmand, which has no
    # such numbers, closes without a word, as for 199 or 202, and so does farm now.
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(ptype, body))
    assert p.closed_within(5)
    assert p.pending == [], "no answer before the close"
    assert_healthy(srv, h)


@pytest.mark.parametrize("ptype", [5, 2**31, 2**32 - 1])
def test_unknown_type_closes_farm(keeper_farm, peer_factory, ptype):
    # farm: type 5 is unknown too (gearmand answers INVALID_COMMAND), and huge
    # type numbers just close (they crash gearmand 1.1.20).
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(header(ptype, 0))
    assert p.closed_within(5)
    assert_healthy(srv, h)


@pytest.mark.parametrize(
    "ptype,body",
    [
        (T.NOOP, b""),
        (T.JOB_CREATED, b"H:x:1"),
        (T.ALL_YOURS, b""),
        (T.SUBMIT_JOB_SCHED, b"f\0\0" + b"1\0" * 5 + b"d"),
    ],
    ids=["NOOP", "JOB_CREATED", "ALL_YOURS", "SUBMIT_JOB_SCHED"],
)
def test_type_not_accepted_is_invalid_command(keeper_any, peer_factory, ptype, body):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(ptype, body))
    err = p.expect(T.ERROR)
    assert err.args[0] == b"INVALID_COMMAND"
    sync(p)
    assert_healthy(srv, h)


@pytest.mark.parametrize(
    "ptype,body",
    [
        (T.NO_JOB, b""),
        (T.JOB_ASSIGN, b"H:x:1\0f\0d"),
        (T.ECHO_RES, b"x"),
        (T.STATUS_RES, b"H:x:1\x000\x000\x000\x000"),
        (T.OPTION_RES, b"exceptions"),
        (T.JOB_ASSIGN_UNIQ, b"H:x:1\0f\0u\0d"),
        (T.JOB_ASSIGN_ALL, b"H:x:1\0f\0u\0r\0d"),
        (T.STATUS_RES_UNIQUE, b"u\x000\x000\x000\x000\x000"),
    ],
    ids=lambda v: v.name if isinstance(v, T) else None,
)
def test_server_to_client_types_are_invalid_command_farm(keeper_farm, peer_factory, ptype, body):
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(ptype, body))
    err = p.expect(T.ERROR)
    assert err.args[0] == b"INVALID_COMMAND"
    sync(p)
    assert_healthy(srv, h)


# -- framing -------------------------------------------------------------------


def test_truncated_packet_then_close(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(header(T.SUBMIT_JOB, 100) + b"keep\0\0par")
    assert p.nothing_within(0.2), "a partial packet gets no answer"
    p.close()
    assert_healthy(srv, h)
    q = Peer(srv.addr)
    try:
        assert q.admin("status") == "keep\t1\t0\t0\n.\n", "the half submit created no job"
    finally:
        q.close()


def test_truncated_header_then_close(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(b"\0RE")
    assert p.nothing_within(0.2)
    p.close()
    assert_healthy(srv, h)


def test_oversized_body_errors_at_the_header_and_is_read_past_unbuffered(small_farm, peer_factory):
    # farm: --max-packet; the header alone brings ERROR, and the body is read past, never
    # buffered (the server's count of partial bytes would refuse a 2 GB one otherwise).
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send_raw(header(T.ECHO_REQ, 2**31))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    p.send_raw(b"x" * (4 << 20))  # 4 MB of the 2 GB body: taken and dropped
    assert_healthy(srv, h)
    p.close()


def test_a_body_over_the_limit_is_refused_and_the_connection_goes_on(small_farm, peer_factory):
    # It closed the connection, mid-send for a large body: PHP's GearmanClient saw a broken
    # pipe, and its next call on the same client waited for ever for the lost one.
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.SUBMIT_JOB, b"f\0\0" + b"x" * 1025) + packet(T.ECHO_REQ, b"after"))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args == (
        b"ARGUMENT_TOO_LARGE",
        b"packet body of 1028 bytes exceeds the limit of 1024",
    )
    assert p.expect(T.ECHO_RES).args == (b"after",)
    sync(p)
    assert_healthy(srv, h)


def test_body_at_the_limit_is_accepted(small_farm, peer_factory):
    srv, h = small_farm
    p = peer_factory(srv.addr)
    p.send(T.ECHO_REQ, b"z" * 1024)
    assert p.expect(T.ECHO_RES).args == (b"z" * 1024,)
    assert_healthy(srv, h)


# -- arguments -----------------------------------------------------------------


def test_unique_of_63_bytes_is_accepted(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB_BG, "u", b"k" * 63, "x")
    p.expect(T.JOB_CREATED)
    assert p.admin("show unique jobs").count("k" * 63) == 1


def test_unique_of_100_bytes_is_argument_too_large(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB, "u", b"y" * 100, "x")
    err = p.expect(T.ERROR)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    sync(p)
    assert "u\t" not in p.admin("status")
    assert_healthy(srv, h)


@pytest.mark.parametrize("length", [64, 65])
def test_unique_of_64_or_more_is_argument_too_large_farm(keeper_farm, peer_factory, length):
    # farm: gearmand silently cuts a 64-byte unique to 63.
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send(T.SUBMIT_JOB_BG, "u", b"y" * length, "x")
    err = p.expect(T.ERROR)
    assert err.args[0] == b"ARGUMENT_TOO_LARGE"
    sync(p)
    assert p.admin("show unique jobs") == "\n.\n", "no job was created"
    assert_healthy(srv, h)


@pytest.mark.parametrize(
    "ptype,body",
    [
        (T.SUBMIT_JOB, b"f\0u"),
        (T.SUBMIT_JOB, b"f"),
        (T.SUBMIT_JOB_BG, b""),
        (T.WORK_STATUS, b"H:x:1\0"),
        (T.SUBMIT_REDUCE_JOB, b"f\0u\0r\0d"),
        (T.SUBMIT_JOB_EPOCH, b"f\0u\0d"),
    ],
    ids=["submit-2", "submit-1", "bg-0", "work_status-2", "reduce-4", "epoch-3"],
)
def test_wrong_argument_count_is_an_error_farm(keeper_farm, peer_factory, ptype, body):
    # farm: ERROR (gearmand sends nothing and waits forever).
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(ptype, body))
    err = p.expect(T.ERROR, timeout=5)
    assert err.args[0]
    assert_healthy(srv, h)
    status = Peer(srv.addr)
    try:
        assert status.admin("status") == "keep\t1\t0\t0\n.\n", "no job was created"
    finally:
        status.close()


def test_packet_behind_a_wrong_argument_count_is_answered_farm(keeper_farm, peer_factory):
    # Pipelined in one write: what follows the bad packet is decoded in the same turn,
    # not left waiting for the peer's next bytes (which a waiting client never sends).
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.SUBMIT_JOB, b"f") + packet(T.ECHO_REQ, b"behind"))
    assert p.expect(T.ERROR, timeout=5).args[0] == b"INVALID_COMMAND"
    assert p.expect(T.ECHO_RES, timeout=5).args == (b"behind",)
    assert_healthy(srv, h)


def test_worker_answer_over_the_limit_fails_the_job_once(small_farm, peer_factory):
    # farm: a result the server refuses would be refused again on every rerun; the job
    # fails (WORK_EXCEPTION for a client that asked, WORK_FAIL for the rest) instead.
    srv, h = small_farm
    worker = peer_factory(srv.addr)
    worker.send(T.CAN_DO, "big")
    client = peer_factory(srv.addr)
    client.send(T.OPTION_REQ, "exceptions")
    client.expect(T.OPTION_RES)
    plain = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB, "big", "one", "x")
    plain.send(T.SUBMIT_JOB, "big", "one", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    assert plain.expect(T.JOB_CREATED).args[0] == handle
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    worker.send_raw(packet(T.WORK_COMPLETE, handle + b"\0" + b"r" * 2000))
    assert worker.expect(T.ERROR, timeout=5).args[0] == b"ARGUMENT_TOO_LARGE"
    exc = client.expect(T.WORK_EXCEPTION, timeout=5).args
    assert exc[0] == handle
    assert b"too large" in exc[1] and b"exceeds the limit of 1024" in exc[1], exc
    assert plain.expect(T.WORK_FAIL, timeout=5).args[0] == handle
    assert "big\t0\t0\t" in plain.admin("status"), "the job was not put back to run again"
    assert_healthy(srv, h)


def test_a_nul_inside_a_last_argument_that_is_not_data_ends_it(keeper_any, peer_factory):
    # gearmand reads such arguments as C strings. farm kept the NUL, and a STATUS_RES
    # naming the handle could not be framed: the asking client's connection was closed.
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.GET_STATUS, b"H:nope\0tail") + packet(T.ECHO_REQ, b"after"))
    assert p.expect(T.STATUS_RES, timeout=5).args[:3] == (b"H:nope", b"0", b"0")
    assert p.expect(T.ECHO_RES, timeout=5).args == (b"after",)
    assert_healthy(srv, h)


def test_a_nul_in_a_workers_status_does_not_cost_other_clients(keeper_any, peer_factory):
    srv, h = keeper_any
    worker = peer_factory(srv.addr)
    worker.send(T.CAN_DO, "nul")
    client = peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB_BG, "nul", "nul-unique", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    assert worker.expect(T.JOB_ASSIGN).args[0] == handle
    worker.send_raw(packet(T.WORK_STATUS, handle + b"\0" + b"1\0" + b"2\0x"))
    sync(worker)
    asker = peer_factory(srv.addr)
    asker.send(T.GET_STATUS_UNIQUE, "nul-unique")
    status = asker.expect(T.STATUS_RES_UNIQUE, timeout=5).args
    assert status[3:5] == (b"1", b"2"), status
    sync(asker)
    assert_healthy(srv, h)


def test_a_negative_maxqueue_is_no_limit(keeper_any, peer_factory):
    srv, h = keeper_any
    admin = peer_factory(srv.addr)
    assert admin.admin("maxqueue negq -1").startswith("OK")
    client = peer_factory(srv.addr)
    for _ in range(3):
        client.send(T.SUBMIT_JOB_BG, "negq", "", "x")
        assert client.expect(T.JOB_CREATED, timeout=5)
    assert_healthy(srv, h)


# -- garbage -------------------------------------------------------------------


def test_garbage_text_line_is_unknown_command(keeper_any, peer_factory):
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(b"\xff\xfe garbage\n")
    p.sock.settimeout(5)
    buf = b""
    while not buf.endswith(b"\r\n"):
        data = p.sock.recv(1024)
        assert data, "closed instead of answering"
        buf += data
    assert buf.startswith(b"ERR UNKNOWN_COMMAND Unknown+server+command")
    assert_healthy(srv, h)


def test_random_garbage_does_not_hurt_the_server(keeper_any, peer_factory):
    srv, h = keeper_any
    rng = random.Random(4730)
    for _ in range(5):
        p = peer_factory(srv.addr)
        blob = bytes(rng.randrange(256) for _ in range(4096))
        try:
            p.send_raw(b"\0" + blob)
        except OSError:
            pass
        p.close()
    assert_healthy(srv, h)


def test_endless_admin_line_closes_farm(keeper_farm, peer_factory):
    srv, h = keeper_farm
    p = peer_factory(srv.addr)
    try:
        p.send_raw(b"x" * 100_000)
    except OSError:
        pass
    assert p.closed_within(5)
    assert_healthy(srv, h)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_an_admin_line_past_8_kb_closes_however_it_arrives(keeper_any, peer_factory, ending):
    """A line of 8192 bytes with its ending is answered; a longer one closes the connection
    on both servers. farm closed it only when the line came in pieces (more than 8192 bytes
    buffered without a newline) and answered one that came whole in one read, so whether a
    long line was answered hung on how the kernel cut it."""
    srv, h = keeper_any
    fits = peer_factory(srv.addr)
    fits.send_raw(b"version" + b" " * (8191 - 7 - len(ending)) + ending)
    assert fits.admin("version").startswith("OK "), "a line of 8191 bytes was not answered"
    whole = b"version" + b" " * (8193 - 7 - len(ending)) + ending
    assert len(whole) == 8193
    p = peer_factory(srv.addr)
    p.send_raw(whole)  # one write: on loopback the server reads it in one piece
    p.sock.settimeout(5)
    got = b""
    try:
        while data := p.sock.recv(1024):
            got += data
    except TimeoutError:
        pytest.fail(f"a line of 8193 bytes: still open after 5 s, answered {got[:20]!r}")
    assert got == b"", "a line of 8193 bytes was answered"
    assert_healthy(srv, h)


def test_epoch_that_is_not_a_whole_number_is_refused_and_durability_survives(
    tmp_path,
) -> None:
    srv = start_with_store(tmp_path / "q.db")
    try:
        peer = Peer(srv.addr)
        for bad in ("nan", "inf", "1e9", ""):
            peer.send(T.SUBMIT_JOB_EPOCH, "f", "", bad, "x")
            assert peer.expect(T.ERROR).args[0] == b"INVALID_COMMAND", bad
        peer.send(T.SUBMIT_JOB_BG, "f", "", "x")  # the store still takes jobs
        peer.expect(T.JOB_CREATED)
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "name",
    [b"tab\tname", b"new\nline", b"bell\x07", "line\u2028sep".encode(), b"nel\xc2\x85", b"fs\x1c"],
)
def test_a_function_name_with_a_control_character_is_refused_farm(keeper_farm, peer_factory, name):
    # It broke the admin protocol's lines, so `farm status` failed until a restart (gearmand
    # takes it; its status lines break the same way).
    srv, _ = keeper_farm
    client, worker = peer_factory(srv.addr), peer_factory(srv.addr)
    client.send(T.SUBMIT_JOB_BG, name, b"", b"x")
    err = client.expect(T.ERROR)
    assert err.args == (b"INVALID_COMMAND", b"function name holds a control character")
    worker.send(T.CAN_DO, name)
    assert worker.expect(T.ERROR).args[1] == b"function name holds a control character"
    admin = peer_factory(srv.addr)
    assert name.decode() not in admin.admin("status")
    client.send(T.SUBMIT_JOB_BG, b"fine", b"", b"x")  # the connection goes on
    client.expect(T.JOB_CREATED)
    # The same rules for a client id (a word of `workers`: a newline planted lines there).
    worker.send(T.SET_CLIENT_ID, b"x :\n.\n99 " + name)
    assert worker.expect(T.ERROR).args == (
        b"INVALID_COMMAND",
        b"client id holds a control character",
    )
    assert admin.admin("workers").count("\n.\n") == 1


def test_admin_commands_make_no_function_the_binary_protocol_refuses(keeper_farm, peer_factory):
    # `create function` and `maxqueue` made names with ESC and BS, which then passed the
    # binary protocol's check ("a name the server holds was checked when it came").
    srv, _ = keeper_farm
    admin = peer_factory(srv.addr)
    for name in ("\x1b[2JALL-DEAD\x08\x08", "csi\x9b31m"):
        assert admin.admin(f"create function {name}").startswith("ERR INVALID_ARGUMENTS")
        assert admin.admin(f"maxqueue {name} 5").startswith("ERR INVALID_ARGUMENTS")
        assert name not in admin.admin("status")
    assert admin.admin("create function fine-name") == "OK\r\n"
    assert admin.admin("maxqueue fine-name 5") == "OK\r\n"


def test_refusals_a_library_does_not_show_are_in_the_servers_log(tmp_path, peer_factory):
    # PHP shows "unexpected packet:GEARMAN_ERROR", never the ERROR's text: a worker with a
    # 200-byte setId, or one registering past --max-abilities (closed), got no job, and
    # the server's log said nothing of why, even at -v -v.
    log = tmp_path / "server.log"
    srv = start_farm_server("--max-abilities", "2", "--log-file", str(log))
    try:
        p = peer_factory(srv.addr)
        p.send(T.SET_CLIENT_ID, b"i" * 200)
        assert p.expect(T.ERROR).args[0] == b"ARGUMENT_TOO_LARGE"
        w = peer_factory(srv.addr)
        for name in ("a", "b", "c"):
            w.send(T.CAN_DO, name)
        w.expect(T.ERROR)
        assert w.closed_within(5)

        def logged() -> str | None:
            text = log.read_text()
            return text if "refused, closing" in text else None

        text = wait_for("the refusal logged", logged)
        assert "refused: ARGUMENT_TOO_LARGE client id is longer than 127 bytes" in text
        assert "refused, closing: ARGUMENT_TOO_LARGE more than 2 functions" in text
    finally:
        srv.stop()
