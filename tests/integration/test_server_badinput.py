"""Hostile and broken input: the server answers or closes as docs/server.md says,
and stays healthy for everybody else (a queued job survives every case). Here: bad magic,
packet types it does not take, garbage and admin lines; framing and arguments are in
test_server_badinput_framing.py.

``any_server`` where gearmand 1.1.20 behaves the same; ``farm_server`` for
farm's stricter rules (docs/gearmand-probes.md lists what gearmand does).
"""

from __future__ import annotations

import random

import pytest

from farm.protocol import PacketType as T
from tests.helpers import badinput
from tests.helpers.badinput import assert_healthy, header, packet, sync
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server, start_with_store
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
keeper_any = badinput.keeper_any
keeper_farm = badinput.keeper_farm

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
    # docs/server.md: bad magic closes, as gearmand does, without a word (farm sent an ERROR
    # first, its text a Python repr of the magic).
    closes_without_a_word(keeper_any, peer_factory, data)


def closes_without_a_word(keeper_any, peer_factory, data: bytes) -> None:
    """``data`` sent by a new peer: its connection closed, nothing answered, the server well."""
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(data)
    assert p.closed_within(5)
    assert p.pending == [], "no answer before the close"
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
    closes_without_a_word(keeper_any, peer_factory, packet(ptype, body))


@pytest.mark.parametrize(
    "data",
    [header(T.JOB_ACCEPT, 2**31), header(T.JOB_ACCEPT, 2**32 - 1), header(T.JOB_REVOKE, 2**31)],
    ids=["accept-2GiB", "accept-4GiB", "revoke-2GiB"],
)
def test_farms_own_numbers_over_the_size_limit_close_as_unknown(keeper_any, peer_factory, data):
    # docs/held-grab.md: JOB_ACCEPT from a peer that did not ask for held grab is an unknown
    # type, closed on whatever its size. Its size was checked first: a body over
    # --max-packet got ARGUMENT_TOO_LARGE, the connection was kept, and farm read on past
    # the 2 GiB it claimed; gearmand closes on it as on any number it does not know.
    closes_without_a_word(keeper_any, peer_factory, data)


def test_job_accept_with_res_magic_closes_as_unknown(keeper_any, peer_factory):
    # As unknown as with \0REQ: gearmand closes; farm answered INVALID_MAGIC and read on.
    srv, h = keeper_any
    p = peer_factory(srv.addr)
    p.send_raw(packet(T.JOB_ACCEPT, b"H:x:1", magic=b"\0RES"))
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


def one_reply(p: Peer) -> bytes:
    """The next reply line, read to its newline and no further: a test that read what was
    there took two replies for one and never saw that the second was missing."""
    p.sock.settimeout(5)
    line = b""
    while not line.endswith(b"\n"):
        data = p.sock.recv(1)
        assert data, f"closed after {line!r}"
        line += data
    return line


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_an_admin_line_past_8_kb_closes_however_it_arrives(keeper_any, peer_factory, ending):
    """A line of 8192 bytes with its ending is answered; a longer one closes the connection
    on both servers. farm closed it only when the line came in pieces (more than 8192 bytes
    buffered without a newline) and answered one that came whole in one read, so whether a
    long line was answered hung on how the kernel cut it."""
    srv, h = keeper_any
    fits = peer_factory(srv.addr)
    line = b"version" + b" " * (8192 - 7 - len(ending)) + ending
    assert len(line) == 8192
    fits.send_raw(line)
    assert one_reply(fits).startswith(b"OK "), "a line of 8192 bytes was not answered"
    fits.send_raw(b"version\n")  # the connection goes on, one reply to each line
    assert one_reply(fits).startswith(b"OK ")
    assert fits.nothing_within(0.2)
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
