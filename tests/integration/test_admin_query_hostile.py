"""``admin_query`` (``farm status``, ``farm jobs``, the supervisor's asks) against a port
whose server never finishes a reply: one that trickles a listing without its end, one
that streams what is no reply at all (a chargen-like service). Its timeout bounds the
whole reply, not each read, so neither holds the caller for ever; ``max_reply`` bounds
what it holds meanwhile."""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import farm.client.admin
from farm import Client
from farm.client.admin import MAX_REPLY, admin_query, function_workers
from tests.helpers.clirun import cli, one_line_error
from tests.helpers.servers import Server
from tests.helpers.stalled import Behaviour, misbehaving

#: What admin_query asks of a read (farm.client.admin._reply): one read past the cap at most.
ONE_READ = 65536


def trickling(conn: socket.socket, stop: threading.Event) -> None:
    """A line of a listing every 50 ms, and never its end: each read gets something."""
    conn.recv(100)
    while not stop.wait(0.05):
        conn.sendall(b"reverse\t0\t0\t1\n")


def streaming(conn: socket.socket, stop: threading.Event) -> None:
    """Bytes without a pause, none of them a reply, at 10 MB/s: well under MAX_REPLY in the
    timeout (as fast as they were taken, loopback passed it in under a second, and the cap,
    not the timeout, ended the read: test_a_stream_past_max_reply_is_cut_off_there)."""
    while not stop.wait(0.001):
        conn.sendall(b"0123456789" * 1000)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("behave", [trickling, streaming], ids=["trickling", "streaming"])
def test_a_reply_that_never_ends_is_given_up_at_the_timeout(behave: Behaviour) -> None:
    # Each read had the timeout, and each got something: the query read for ever (and,
    # against a stream, held all it read).
    outcome: list[BaseException | str] = []

    def ask(addr: str) -> None:
        try:
            outcome.append(admin_query(addr, "status", timeout=1))
        except BaseException as exc:  # for the test to look at
            outcome.append(exc)

    with misbehaving(behave) as addr:
        thread = threading.Thread(target=ask, args=(addr,), daemon=True)
        thread.start()
        thread.join(10)
        assert outcome, "admin_query still reading after 10 s with a timeout of 1 s"
    assert isinstance(outcome[0], TimeoutError), outcome
    assert "status" in str(outcome[0]) and "1" in str(outcome[0])


class Flood:
    """A port that answers any command with bytes that are no reply, as fast as they are
    taken, up to ``limit`` (then it sends nothing more and waits, so that a reader with no
    cap is held till its timeout, not fed without end), and notes when the reader closes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent = 0
        self.closed = threading.Event()  # the reader closed its end

    def __call__(self, conn: socket.socket, stop: threading.Event) -> None:
        conn.recv(100)  # the command
        chunk = b"0123456789abcdef" * 65536  # 1 MiB, no newline: never a reply's end
        try:
            while self.sent < self.limit and not stop.is_set():
                conn.sendall(chunk)
                self.sent += len(chunk)
        except OSError:  # the reader closed with our bytes unread: a reset
            self.closed.set()
            return
        conn.settimeout(0.1)  # to notice the test's end
        while not stop.is_set():
            try:
                if not conn.recv(100):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        self.closed.set()


@contextmanager
def counted_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The bytes admin_query's reads returned, in total (the list's one item)."""
    total = [0]
    real = farm.client.admin.recv

    def recv(sock: socket.socket, size: int = ONE_READ) -> bytes:
        data = real(sock, size)
        total[0] += len(data)
        return data

    monkeypatch.setattr(farm.client.admin, "recv", recv)
    yield total


@pytest.mark.timeout(60)
def test_a_stream_past_max_reply_is_cut_off_there(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was read, and held, until the timeout: on loopback, gigabytes. The stream stops at
    # 64 MiB here, so that a reader with no cap is held till its timeout (20 s), not fed.
    cap = 1 << 20
    flood = Flood(64 << 20)
    with misbehaving(flood) as addr, counted_reads(monkeypatch) as read:
        with pytest.raises(ConnectionError) as caught:
            admin_query(addr, "status", timeout=20, max_reply=cap)
        assert flood.closed.wait(10), "the connection was left open"
    said = str(caught.value)
    assert "'status'" in said and "1 MiB" in said and "max_reply" in said, said
    assert "closed the connection" in said, said
    assert cap < read[0] <= cap + ONE_READ, read[0]


def test_max_reply_takes_a_whole_reply_of_its_size_and_no_more(farm_server: Server) -> None:
    addr = farm_server.addr
    assert admin_query(addr, "create function reverse") == "OK\r\n"
    reply = admin_query(addr, "status")
    assert reply == "reverse\t0\t0\t0\n.\n", reply
    size = len(reply.encode())
    assert admin_query(addr, "status", max_reply=size) == reply
    with pytest.raises(ConnectionError, match=f"ran past {size - 1} bytes"):
        admin_query(addr, "status", max_reply=size - 1)
    assert admin_query(addr, "status") == reply  # the server took the cut-off in its stride
    with pytest.raises(ValueError, match="max_reply"):
        admin_query(addr, "status", max_reply=0)


@pytest.mark.timeout(90)
def test_farm_status_says_so_in_one_line_at_the_default_cap() -> None:
    # Past MAX_REPLY, then quiet: with no cap, `farm status` held all of it for its 5 s and
    # said the answer was not whole in time.
    flood = Flood(MAX_REPLY + (32 << 20))
    with misbehaving(flood) as addr:
        out = cli("status", "--server", addr, timeout=60)
    assert out.returncode == 1, (out.stdout, out.stderr)
    line = one_line_error(out.stderr)
    assert f"cannot read status from {addr}" in line, line
    assert "ran past 256 MiB, the most `farm status` reads" in line, line
    assert "max_reply" not in line, line  # a Python keyword: no flag of the command's


@pytest.mark.timeout(60)
def test_the_executor_s_status_ask_is_capped_too(monkeypatch: pytest.MonkeyPatch) -> None:
    # function_workers (Executor's max_workers, joblib's) reads `status` through the same
    # loop: it held a stream till its timeout, here all 288 MiB; now it stops at the cap
    # and counts the server as not answering.
    flood = Flood(MAX_REPLY + (32 << 20))
    with misbehaving(flood) as addr, counted_reads(monkeypatch) as read:
        assert function_workers([addr], "reverse", timeout=20) is None
        assert flood.closed.wait(10), "the connection was left open"
    assert MAX_REPLY < read[0] <= MAX_REPLY + ONE_READ, read[0]


def test_farm_jobs_past_its_cap_names_the_flag_that_raises_it(farm_server: Server) -> None:
    # A server with --max-queued-bytes 0 (no limit) or past ~1.7 GiB lists more than 1 GiB:
    # `farm jobs` failed with "... the most read of one reply (max_reply)", a Python keyword
    # no CLI user can set, and no way out. A small --max-reply stands in for the large list.
    addr = farm_server.addr
    with Client(addr) as client:
        for n in range(3):
            client.submit("reverse", f"job{n}".encode(), background=True)
    listing = admin_query(addr, "jobs")
    cap = len(listing.encode()) - 1
    out = cli("jobs", "--server", addr, "--max-reply", str(cap))
    assert out.returncode == 1, (out.stdout, out.stderr)
    line = one_line_error(out.stderr)
    assert f"cannot read the jobs from {addr}: the listing ran past {cap} bytes," in line, line
    assert "--max-reply BYTES" in line and f"--max-reply {cap * 4}" in line, line
    assert "max_reply" not in line, line
    # The server whose listing can run past it, of the --max-reply given: "over about 1.7
    # GiB" was the default's, said of any --max-reply (of 1 byte, too).
    held = math.ceil(cap / 0.6)  # a job's line is under 0.6 of what it holds
    assert f"a server with a --max-queued-bytes over about {held} bytes, or 0" in line, line
    out = cli("jobs", "--server", addr, "--max-reply", str(cap + 1))
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 4, out.stdout  # the header and the three jobs


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Takes the request and answers nothing: a hung server, or one stopped (SIGSTOP)."""
    conn.recv(100)
    stop.wait()


@pytest.mark.timeout(30)
def test_a_server_that_answers_nothing_is_said_so_not_a_reply_cut_short() -> None:
    # A stopped job server (`kill -STOP`) read as "the job server's answer to 'status' was
    # not whole in 5.0s" in `farm status` at 3 a.m.: no byte of an answer had come, and the
    # words sent the on-call engineer after a broken reply, not a hung server.
    with misbehaving(silent) as addr:
        out = cli("status", "--server", addr, timeout=20)
    assert out.returncode == 1, (out.stdout, out.stderr)
    line = one_line_error(out.stderr)
    assert f"cannot read status from {addr}" in line, line
    assert "did not answer 'status' within" in line, line
    assert "hung or stopped" in line, line
    assert "not whole" not in line, line


@pytest.mark.timeout(30)
def test_a_tls_server_that_answers_nothing_is_said_so_too() -> None:
    # Over TLS a hung server's first silence is the handshake, inside connect(): ssl's
    # "_ssl.c:989: The handshake operation timed out" named neither it nor what to suspect.
    import ssl

    with misbehaving(silent) as addr, pytest.raises(TimeoutError) as raised:
        admin_query(addr, "status", timeout=1.0, tls=ssl.create_default_context())
    said = str(raised.value)
    assert f"{addr} did not answer the TLS handshake within 1.0s" in said, said
    assert "hung or stopped" in said, said


@pytest.mark.timeout(30)
def test_a_client_s_tls_handshake_to_a_silent_server_is_said_so_too() -> None:
    # farm.Client and the Executor dial with a handshake of their own (farm.client.dialer):
    # they still said ssl's "_ssl.c:989: The handshake operation timed out".
    import ssl

    with (
        misbehaving(silent) as addr,
        Client(addr, tls=ssl.create_default_context(), connect_timeout=1) as c,
        pytest.raises(farm.ServerUnavailable) as raised,
    ):
        c.call("f", b"x", timeout=10)
    assert f"{addr} did not answer the TLS handshake within 1" in str(raised.value), raised.value


def test_the_handshake_silence_writes_an_ipv6_address_in_brackets() -> None:
    from farm.net import handshake_silence, parse_address

    said = str(handshake_silence(parse_address("[::1]:4730"), 0.5))
    assert said.startswith("[::1]:4730 did not answer the TLS handshake within 0.5s"), said
