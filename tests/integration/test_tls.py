"""TLS on the TCP listener: farm's client and worker speak it; strangers are kept out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import farm
from farm import protocol as p
from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from farm.tlsfiles import tls_context
from tests.helpers import ROOT
from tests.helpers.servers import (
    Server,
    connect,
    start_farm_server,
    start_with_store,
)
from tests.helpers.tlspki import mutual_tls_server, pki, serve_reverse, tls_server
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow
__all__ = ["mutual_tls_server", "pki", "tls_server"]  # fixtures, imported for pytest to find


def test_client_and_worker_over_tls(tls_server: Server, pki: Path) -> None:
    ctx = tls_context(ca=str(pki / "ca.pem"))
    worker, thread = serve_reverse(tls_server.addr, ctx)
    try:
        with farm.Client(tls_server.addr, tls=ctx) as client:
            assert client.call("reverse", "Hello World!", timeout=10) == b"!dlroW olleH"
            # Many in flight, so TLS records pile up in one read.
            assert list(client.map("reverse", [b"ab%d" % i for i in range(300)])) == [
                (b"ab%d" % i)[::-1] for i in range(300)
            ]
            # More than the sockets buffer: sends that TLS cannot finish at once are
            # taken up again, record by record, while replies are read.
            big = [bytes([i]) * (1 << 20) + b"." for i in range(48)]
            assert list(client.map("reverse", big, max_in_flight=48)) == [b[::-1] for b in big]
    finally:
        worker.stop()
        thread.join(10)


def test_async_client_over_tls(tls_server: Server, pki: Path) -> None:
    # AsyncClient had no tls=: a TLS-only server was out of its reach.
    ctx = tls_context(ca=str(pki / "ca.pem"))
    worker, thread = serve_reverse(tls_server.addr, ctx)

    async def calls() -> list[bytes]:
        async with farm.AsyncClient(tls_server.addr, tls=ctx) as client:
            return list(
                await asyncio.gather(*(client.call("reverse", f"ab{i}") for i in range(50)))
            )

    try:
        assert asyncio.run(calls()) == [f"ab{i}"[::-1].encode() for i in range(50)]
    finally:
        worker.stop()
        thread.join(10)


def test_a_new_call_over_tls_reconnects_though_a_job_was_pending_when_the_server_restarted(
    tls_server: Server, pki: Path
) -> None:
    # As over plain TCP (test_client_failover): the connection held a job in flight, so it
    # was used again without a look, and through TLS none was possible: the new job went
    # onto the dead connection and failed with the old one.
    ctx = tls_context(ca=str(pki / "ca.pem"))
    with farm.Client(tls_server.addr, tls=ctx, timeout=10) as client:
        pending = client.submit("nobody-serves-this", b"x")
        assert client.echo(b"sync") == b"sync"  # the submit is on the wire
        tls_server.stop()
        again = start_farm_server(*tls_server.args, port=tls_server.port)
        try:
            worker, thread = serve_reverse(again.addr, ctx)
            try:
                assert client.call("reverse", b"abc") == b"cba"
            finally:
                worker.stop()
                thread.join(10)
            with pytest.raises(farm.ServerUnavailable, match="went away"):
                client.wait(pending, timeout=5)  # the job in flight was lost with its server
        finally:
            again.stop()


def test_an_async_call_over_tls_reconnects_when_the_server_restarted_unseen(
    tls_server: Server, pki: Path
) -> None:
    # The loop not run meanwhile, the restart went unseen and the call onto the dead
    # connection. The look for it sees TLS records (a close_notify) before the end.
    ctx = tls_context(ca=str(pki / "ca.pem"))
    loop = asyncio.new_event_loop()
    client = farm.AsyncClient(tls_server.addr, tls=ctx)
    try:
        assert loop.run_until_complete(client.echo(b"sync")) == b"sync"
        tls_server.stop()
        again = start_farm_server(*tls_server.args, port=tls_server.port)
        try:
            worker, thread = serve_reverse(again.addr, ctx)
            try:
                call = client.call("reverse", b"abc", timeout=10)
                assert loop.run_until_complete(call) == b"cba"
            finally:
                worker.stop()
                thread.join(10)
        finally:
            again.stop()
    finally:
        loop.run_until_complete(client.close())
        loop.close()


def test_plaintext_clients_get_nothing_from_a_tls_listener(tls_server: Server) -> None:
    with (
        farm.Client(tls_server.addr, connect_timeout=2) as client,
        pytest.raises((farm.FarmError, OSError)),
    ):
        client.call("reverse", "x", timeout=3)
    # ... and the server is still up for proper clients.
    assert tls_server.proc.poll() is None


def test_an_untrusted_server_certificate_is_refused(tls_server: Server) -> None:
    ctx = tls_context()  # system CAs only: the test CA is unknown
    with (
        farm.Client(tls_server.addr, tls=ctx) as client,
        pytest.raises((farm.FarmError, ssl.SSLError)),
    ):
        client.call("reverse", "x", timeout=3)


def test_client_certificates_can_be_required(mutual_tls_server: Server, pki: Path) -> None:
    srv = mutual_tls_server
    with_cert = tls_context(str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key"))
    worker, thread = serve_reverse(srv.addr, with_cert)
    with farm.Client(srv.addr, tls=with_cert) as client:
        assert client.call("reverse", "abc", timeout=10) == b"cba"
    without = tls_context(str(pki / "ca.pem"))
    with (
        farm.Client(srv.addr, tls=without) as client,
        pytest.raises((farm.FarmError, OSError), match="(?i)certificate"),
    ):  # says why, not just "went away"
        client.call("reverse", "abc", timeout=3)
    worker.stop()
    thread.join(10)


def test_farm_status_and_jobs_speak_tls_from_the_environment(tls_server: Server, pki: Path) -> None:
    # They ignored $FARM_TLS_CA, which `farm submit` and `farm worker` take: the server
    # closed the plain-text admin connection, and `farm status` printed an empty table,
    # exit 0, for a server with a worker registered.
    worker, thread = serve_reverse(tls_server.addr, tls_context(ca=str(pki / "ca.pem")))
    cli = [sys.executable, "-m", "farm.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "GEARMAN_"))}
    env["PYTHONPATH"] = str(ROOT)
    try:
        for command in ("status", "jobs"):
            plain = subprocess.run(
                [*cli, command, "--server", tls_server.addr],
                capture_output=True, text=True, timeout=30, env=env,
            )  # fmt: skip
            assert plain.returncode == 1, plain.stdout
            assert "closed the connection" in plain.stderr and "FARM_TLS_CA" in plain.stderr
        env["FARM_TLS_CA"] = str(pki / "ca.pem")
        status = subprocess.run(
            [*cli, "status", "--server", tls_server.addr],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert [line.split() for line in status.stdout.splitlines()][1] == [
            "reverse",
            "0",
            "0",
            "1",
        ]
        jobs = subprocess.run(
            [*cli, "jobs", "--server", tls_server.addr],
            capture_output=True, text=True, timeout=30, env=env,
        )  # fmt: skip
        assert jobs.returncode == 0 and jobs.stdout.startswith("FUNCTION"), jobs.stderr
    finally:
        worker.stop()
        thread.join(10)


@pytest.mark.parametrize("command", [["submit", "f", "x"], ["worker", "workers.text:reverse"]])
@pytest.mark.parametrize(
    ("variables", "said"),
    [
        ({"FARM_TLS_CA": "junk.pem"}, "TLS CA file ($FARM_TLS_CA) "),
        ({"FARM_TLS_CERT": "junk.pem"}, "not a PEM certificate, or its key"),
        ({"FARM_TLS_CERT": "missing.pem"}, "($FARM_TLS_CERT, $FARM_TLS_KEY)"),
        ({"FARM_TLS_KEY": "junk.pem"}, "$FARM_TLS_KEY is set without $FARM_TLS_CERT"),
    ],
)
def test_a_tls_variable_that_cannot_be_used_is_a_usage_error(
    tmp_path: Path, command: list[str], variables: dict[str, str], said: str
) -> None:
    # `farm submit` and `farm worker` exited 1 (as for a failed job) where `farm status`
    # exited 2 for the same file; OpenSSL's "[SSL] PEM lib" named no fix; and a key alone
    # was ignored, the calls going out with no client certificate.
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "GEARMAN_"))}
    env.update(PYTHONPATH=str(ROOT), FARM_SERVERS="127.0.0.1:1")  # nothing to reach
    env.update({name: str(tmp_path / file) for name, file in variables.items()})
    out = subprocess.run(
        [sys.executable, "-m", "farm", *command],
        capture_output=True, text=True, timeout=30, env=env, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], out.stderr


def test_background_submits_with_close_notify_right_behind_them_are_all_taken(
    pki: Path, tmp_path: Path, unix_sock: str
) -> None:
    # Over TLS a peer's close_notify is read with the records before it, and the server's
    # eof_received comes in the same call as their data_received: with JOB_CREATEDs held
    # for the store's commit it closed the connection there, and the packets of that read
    # left for later slices (all but 16) were dropped. What a peer sent before it went
    # counts, as on plain TCP and as when a read was acted on whole.
    srv = start_with_store(
        tmp_path / "jobs.db",
        args=["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"),
              "--unix", unix_sock],
    )  # fmt: skip
    count = 200
    try:
        raw = connect(srv.addr)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = tls_context(ca=str(pki / "ca.pem")).wrap_bio(
            incoming, outgoing, server_hostname="127.0.0.1"
        )
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                incoming.write(raw.recv(65536))
        raw.sendall(outgoing.read())
        tls.write(
            b"".join(p.encode_req(T.SUBMIT_JOB_BG, b"f", b"u%d" % i, b"x") for i in range(count))
        )
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.unwrap()  # close_notify
        raw.sendall(outgoing.read())  # the submits and the close_notify: one write

        def queued() -> int:
            line = admin_query(f"unix:{unix_sock}", "status").splitlines()[0]
            return int(line.split("\t")[1]) if line.startswith("f\t") else 0

        wait_for(f"{count} jobs queued", lambda: queued() == count, timeout=5)
        raw.close()
    finally:
        srv.stop()


@contextlib.contextmanager
def fds_past_select_range() -> Iterator[None]:
    """Hold open files until the next socket's fd is >= 1024, past what select() takes."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1100:
        if hard != resource.RLIM_INFINITY and hard < 1100:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below 1100")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1100, hard))
    held: list[int] = []
    try:
        # Each open takes the lowest free fd, so every hole below is filled first.
        while not held or held[-1] < 1030:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_calls_still_work_when_the_socket_fd_is_past_1024(tls_server: Server, pki: Path) -> None:
    # A process with many open files gets sockets with fds select() refuses
    # ("filedescriptor out of range"); the client reads every reply without select().
    ctx = tls_context(ca=str(pki / "ca.pem"))
    worker, thread = serve_reverse(tls_server.addr, ctx)
    plain = start_farm_server()
    plain_worker = farm.Worker(plain.addr)
    plain_worker.register("reverse", lambda job: job.data[::-1])
    plain_thread = threading.Thread(target=plain_worker.work, daemon=True)
    plain_thread.start()
    try:
        with fds_past_select_range():
            with farm.Client(tls_server.addr, tls=ctx) as client:
                assert client.call("reverse", "over tls", timeout=10) == b"slt revo"
                assert [c.sock.fileno() >= 1024 for c in client._wire.conns.values()] == [True]
            with farm.Client(plain.addr) as client:
                assert client.call("reverse", "plain", timeout=10) == b"nialp"
                assert [c.sock.fileno() >= 1024 for c in client._wire.conns.values()] == [True]
    finally:
        worker.stop()
        plain_worker.stop()
        thread.join(10)
        plain_thread.join(10)
        plain.stop()
