"""farm.Client against a server that, once it has answered, sends packets without end (news
of jobs that are not ours): a call's look at what the connection holds before it sends
reads what had come by then, not for ever, so its timeout holds. And, through TLS, against
one that sent many small records and then closed: that look still reaches its close."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

import farm
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from tests.helpers.stalled import misbehaving
from tests.helpers.waiting import wait_for


def flooding(conn: socket.socket, stop: threading.Event) -> None:
    """Answers the client's OPTION_REQs (as gearmand: farm's own is unknown) and ECHO_REQ,
    then sends WORK_STATUS of a job nobody asked about as fast as it is taken, and answers
    nothing more."""
    conn.recv(1000)
    conn.sendall(
        encode_res(T.OPTION_RES, b"exceptions")
        + encode_res(T.ERROR, b"UNKNOWN_OPTION", b"Server does not recognize given option")
        + encode_res(T.ECHO_RES, b"hi")
    )
    news = encode_res(T.WORK_STATUS, b"H:elsewhere:1", b"1", b"2") * 1000
    while not stop.is_set():
        conn.sendall(news)


@pytest.mark.timeout(30)
def test_a_server_that_sends_without_end_does_not_hold_a_call_past_its_timeout() -> None:
    # The look before each request (catch_up: has the server closed the connection?) read
    # while anything was there: against this server, for ever, whatever the timeout.
    outcome: list[BaseException | bytes] = []
    with misbehaving(flooding) as addr:
        client = farm.Client(addr, timeout=1)
        assert client.echo(b"hi") == b"hi"

        def ask() -> None:
            try:
                outcome.append(client.echo(b"again"))
            except BaseException as exc:  # for the test to look at
                outcome.append(exc)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        thread.join(10)
        assert outcome, "the echo still reading after 10 s with a timeout of 1 s"
        client.close()
    assert isinstance(outcome[0], farm.ServerUnavailable), outcome
    assert "did not answer within 1s" in str(outcome[0])


def self_signed(d: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1, signed by itself (in ``d``)."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", "server.key", "-out", "server.pem"],
        cwd=d, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(d / "server.pem", d / "server.key")
    return context


def answer(conn: ssl.SSLSocket, want: bytes) -> None:
    """Answer OPTION_REQ and ECHO_REQ on ``conn`` until an echo of ``want`` is sent."""
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 12 and len(buf) >= 12 + int.from_bytes(buf[8:12], "big"):
            kind, end = int.from_bytes(buf[4:8], "big"), 12 + int.from_bytes(buf[8:12], "big")
            body, buf = buf[12:end], buf[end:]
            reply = {T.OPTION_REQ: T.OPTION_RES, T.ECHO_REQ: T.ECHO_RES}[T(kind)]
            conn.sendall(encode_res(reply, body))
            if reply == T.ECHO_RES and body == want:
                return


def close_wait(port: int) -> bool:
    """This process's connection to ``port`` has had its server's close (FIN)."""
    conns = psutil.Process().net_connections("tcp4")
    return any(c.raddr and c.raddr.port == port and c.status == "CLOSE_WAIT" for c in conns)


@pytest.mark.timeout(60)
def test_a_tls_close_behind_many_small_records_is_seen_before_the_next_request(
    tmp_path: Path,
) -> None:
    # The look read at most SO_RCVBUF // 16384 + 2 records (16 KiB TLS records assumed):
    # 200 small ones left the close unread, and the echo after it failed 'went away'
    # where it should have connected anew, as it does when the close is seen.
    server_tls = self_signed(tmp_path)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]

    def serve() -> None:
        with server_tls.wrap_socket(listener.accept()[0], server_side=True) as first:
            answer(first, b"first")
            for _ in range(200):  # one TLS record each: news of a job given up
                first.sendall(encode_res(T.WORK_STATUS, b"H:gone:1", b"1", b"2"))
        # Closed: the server restarted. The next connection is answered as a new one's.
        with server_tls.wrap_socket(listener.accept()[0], server_side=True) as second:
            answer(second, b"again")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
    client = farm.Client(f"127.0.0.1:{port}", tls=client_tls, timeout=5)
    try:
        assert client.echo(b"first") == b"first"
        wait_for("the server's close behind its records", lambda: close_wait(port))
        assert client.echo(b"again") == b"again"
    finally:
        client.close()
        listener.close()
    thread.join(10)
