"""The admin text protocol's connection, byte for byte as gearmand 1.1.20 prints it: getpid,
version and verbose, unknown commands and NULs, pipelining and half-closes, admin lines
and binary packets on one connection, a Unix socket, names that are not UTF-8.

``any_server`` tests compare exact bytes (modulo fds, pids, versions and
handles, which are normalised or built from what the server told us);
``farm_server`` tests pin farm's fixes of gearmand bugs (docs/gearmand-probes.md).
"""

from __future__ import annotations

import re
import socket

import pytest

from farm.protocol import PacketType as T
from farm.protocol import encode_req
from farm.version import __version__
from tests.helpers import admintext
from tests.helpers.admintext import submit, sync, worker
from tests.helpers.servers import connect, start_farm_server

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
admin_factory = admintext.admin_factory

# -- getpid / version / verbose ------------------------------------------------


def test_getpid(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"getpid\n") == b"OK %d\n" % any_server.proc.pid


def test_version(any_server, admin_factory):
    reply = admin_factory(any_server).line(b"version\n")
    assert re.fullmatch(rb"OK [0-9][0-9A-Za-z.+~-]*\n", reply), reply
    assert admin_factory(any_server).line(b"VERSION\n") == reply


def test_verbose(any_server, admin_factory):
    reply = admin_factory(any_server).line(b"verbose\n")
    assert re.fullmatch(rb"OK (FATAL|ALERT|CRITICAL|ERROR|WARNING|NOTICE|INFO|DEBUG)\n", reply)


# -- unknown commands, pipelining, mixing with binary --------------------------


def test_unknown_command(any_server, admin_factory):
    a = admin_factory(any_server)
    assert a.line(b"bogus\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert a.line(b"bogus two words\r\n") == b"ERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n"
    assert a.line(b"\n") == b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"
    # (gearmand also rejects "  status" with leading blanks; farm's docs leave
    # that open, and farm accepts it, so it is not pinned here)
    assert a.listing(b"status\n") == b".\n", "the connection still works"


def test_an_error_names_the_command_as_it_was_typed(any_server, admin_factory):
    """gearmand's errors end with the command's word as the line gave it (commands are
    case-insensitive); farm's gave it in lower case, so `MAXQUEUE` was answered about
    `maxqueue`."""
    a = admin_factory(any_server)
    incomplete = b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+"
    for line, reply in (
        (b"MAXQUEUE\n", incomplete + b"MAXQUEUE\r\n"),
        (b"Create Function\r\n", incomplete + b"Create\r\n"),
        (b"DROP\n", incomplete + b"DROP\r\n"),
        (b"Cancel Job\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandCancel\r\n"),
        (b"SHOW\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandSHOW\r\n"),
        (b"BoGuS\n", b"ERR UNKNOWN_COMMAND Unknown+server+commandBoGuS\r\n"),
    ):
        assert a.line(line) == reply, line


def test_a_line_ends_at_a_nul(any_server, admin_factory):
    """gearmand reads an admin line as a C string: what follows a NUL is not there
    (`version\\0junk` is `version`). farm read the NUL and the rest as part of the word,
    answered UNKNOWN_COMMAND, and wrote the NUL back inside its error line."""
    a = admin_factory(any_server)
    assert a.line(b"version\0junk\n").startswith(b"OK ")
    unknown = b"ERR UNKNOWN_COMMAND Unknown+server+command"
    assert a.line(b"x\0\r\n") == unknown + b"x\r\n"
    assert a.line(b"\xff\xfe\0\0garbage\n") == unknown + b"\xff\xfe\r\n"
    assert a.listing(b"status\0 extra\n") == b".\n"


def test_commands_before_a_half_close_are_answered_farm(farm_server):
    """`printf 'status\\nversion\\n' | nc -N`: the commands, then the peer's side shut down.
    farm answers them, then closes; gearmand 1.1.20 closes answering nothing (its bug:
    docs/gearmand-probes.md). A line left unfinished at the close is not a command."""
    sock = connect(farm_server.addr)
    sock.sendall(b"status\nversion\r\nstat")
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(10)
    got = b""
    while data := sock.recv(65536):
        got += data
    sock.close()
    assert got == b".\nOK %s\n" % __version__.encode()


def test_pipelined_commands(any_server, admin_factory):
    a = admin_factory(any_server)
    a.sock.sendall(b"status\nversion\ngetpid\nbogus\n")
    expected_tail = b"OK %d\nERR UNKNOWN_COMMAND Unknown+server+commandbogus\r\n" % (
        any_server.proc.pid
    )
    a._read_until(lambda b: b.endswith(expected_tail))
    assert a.buf.startswith(b".\nOK ")
    assert a.buf.count(b"\n") == 4


def test_binary_and_text_alternate(any_server):
    s = connect(any_server.addr)
    try:
        s.sendall(encode_req(T.ECHO_REQ, b"hi") + b"status\n" + encode_req(T.ECHO_REQ, b"yo"))
        expected = b"\0RES\0\0\0\x11\0\0\0\x02hi" + b".\n" + b"\0RES\0\0\0\x11\0\0\0\x02yo"
        buf = b""
        s.settimeout(5)
        while len(buf) < len(expected):
            data = s.recv(65536)
            if not data:
                break
            buf += data
        assert buf == expected
    finally:
        s.close()


def test_admin_connection_survives_binary_errors(any_server, admin_factory):
    a = admin_factory(any_server)
    a.sock.sendall(encode_req(T.NOOP))
    a._read_until(lambda b: len(b) >= 12)
    assert a.buf.startswith(b"\0RES\0\0\0\x13")
    a.buf = a.buf[12 + int.from_bytes(a.buf[8:12], "big") :]
    assert a.listing(b"status\n") == b".\n"


def test_admin_on_unix_socket(tmp_path):
    path = str(tmp_path / "farm.sock")
    srv = start_farm_server(unix=path)
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"version\n")
        buf = b""
        while not buf.endswith(b"\n"):
            buf += s.recv(1024)
        assert buf.startswith(b"OK ")
        s.close()
    finally:
        srv.stop()


def test_a_function_name_that_is_not_utf8_is_shown_and_named_as_its_bytes(
    any_server, admin_factory, peer_factory
):
    """gearmand prints names as the bytes they are; farm printed U+FFFD for each byte that
    was not UTF-8, and `maxqueue` could not name such a function."""
    w = worker(peer_factory, any_server, "x")
    w.send(T.CAN_DO, b"\xff\xfe")
    sync(w)
    a = admin_factory(any_server)
    assert b"\xff\xfe\t0\t0\t1\n" in a.listing(b"status\n")
    assert a.line(b"maxqueue \xff\xfe 1\n") == b"OK\r\n"
    c = peer_factory(any_server.addr)
    submit(c, b"\xff\xfe")  # type: ignore[arg-type]  # the wire takes bytes
    c.send(T.SUBMIT_JOB, b"\xff\xfe", b"", b"second")
    assert c.expect(T.ERROR).args[0] == b"QUEUE_ERROR"


@pytest.mark.parametrize(
    "word",
    [
        "wor\u212aers".encode(),  # a Kelvin sign: str.lower() made it `workers`
        b"MAXQUEUE\x0bfoo",  # \x0b and \x1c-\x1f split words for str.split(), not gearmand
        b"status\x1c",
        b"status\x1fx",
        b"status\x85",
        b"\tstatus",
    ],
)
def test_a_command_word_is_folded_and_split_as_gearmand_does(any_server, admin_factory, word):
    """gearmand splits a line at spaces only and folds a command's case in ASCII only
    (strcasecmp): farm's str.split() and str.lower() ran `MAXQUEUE\\x0bfoo` as maxqueue
    and a `\\u212aILLING` with a Kelvin sign as farm's `killing`."""
    a = admin_factory(any_server)
    reply = a.line(word + b"\n")
    assert reply == b"ERR UNKNOWN_COMMAND Unknown+server+command" + word + b"\r\n"
    assert a.listing(b"status\n") == b".\n", "the connection still works"
