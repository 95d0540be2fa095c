"""What each signal does to `farm server`, as to gearmand: SIGTERM stops it (its pid file
removed, a result being written still delivered), SIGUSR1 stops it once its jobs end, SIGHUP
reopens its log file."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, start_farm_server
from tests.helpers.waiting import wait_for


def test_sigterm_stops_and_removes_the_pid_file(tmp_path: Path) -> None:
    pid_file = tmp_path / "farm.pid"
    log_file = tmp_path / "farm.log"
    srv = start_farm_server("-P", str(pid_file), "-l", str(log_file), "-v")
    assert pid_file.read_text().strip() == str(srv.proc.pid)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    assert not pid_file.exists()
    assert "listening on 127.0.0.1:" in log_file.read_text()


def test_sigusr1_stops_accepting_and_exits_when_the_running_job_ends() -> None:
    srv = start_farm_server()
    worker = Peer(srv.addr)
    worker.send(T.CAN_DO, "slow")
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB, "slow", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    worker.expect(T.JOB_ASSIGN)
    srv.proc.send_signal(signal.SIGUSR1)
    # Wait for the listener to close (an event: connect is refused).
    wait_refused(srv.port)
    assert srv.proc.poll() is None  # still serving the job in hand
    worker.send(T.WORK_COMPLETE, handle, "done")
    assert client.expect(T.WORK_COMPLETE).args == (handle, b"done")
    assert srv.proc.wait(10) == 0


def wait_refused(port: int) -> None:
    """Until connecting to ``port`` is refused: the OS's word that the listener closed."""

    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        except OSError:
            # Reset (the listener closed while this connect sat in its backlog) or timed
            # out while it closes: the next try sees the closed port and is refused.
            return False
        return False

    wait_for("the listener to close after SIGUSR1", refused)


def test_sigusr1_exits_when_the_last_running_job_is_a_push_taken_back(tmp_path: Path) -> None:
    # A held-grab worker that never accepts its pushed job (stopped, hung): at
    # --wake-deadline the job goes back to its queue and nothing runs, so the graceful stop
    # is over. It waited for ever ("graceful stop ... waiting for running jobs", then
    # "pushed job ... not accepted within 1s", and the server still up).
    log_file = tmp_path / "farm.log"
    srv = start_farm_server("--wake-deadline", "1", "-l", str(log_file), "-v")
    worker = Peer(srv.addr)
    worker.send(T.OPTION_REQ, "held-grab")
    worker.expect(T.OPTION_RES)
    worker.send(T.CAN_DO, "f")
    worker.send(T.GRAB_JOB)  # held: no job yet
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB, "f", "", "x")
    client.expect(T.JOB_CREATED)
    worker.expect(T.NOOP)
    worker.expect(T.JOB_ASSIGN)  # pushed, and never accepted
    srv.proc.send_signal(signal.SIGUSR1)
    wait_refused(srv.port)
    assert srv.proc.wait(10) == 0
    text = log_file.read_text()
    assert text.index("graceful stop") < text.index("not accepted within"), text


def test_sigusr1_with_nothing_running_exits_at_once() -> None:
    srv = start_farm_server()
    srv.proc.send_signal(signal.SIGUSR1)
    assert srv.proc.wait(10) == 0


def test_sigterm_still_delivers_a_result_being_written() -> None:
    srv = start_farm_server()
    worker = Peer(srv.addr)
    worker.send(T.CAN_DO, "big")
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB, "big", "", "x")
    handle = client.expect(T.JOB_CREATED).args[0]
    worker.send(T.GRAB_JOB)
    worker.expect(T.JOB_ASSIGN)
    result = b"r" * (24 * 2**20)
    worker.send(T.WORK_COMPLETE, handle, result)
    # Wait until the server has started forwarding (the first bytes reach the client) ...
    client.sock.settimeout(10)
    first = client.sock.recv(65536)
    assert first
    srv.proc.send_signal(signal.SIGTERM)  # ... then stop it while most of the 24 MB is in flight.
    client.pending.extend(client.decoder.feed(first))
    pkt = client.expect(T.WORK_COMPLETE, timeout=20)
    assert pkt.args == (handle, result)
    assert srv.proc.wait(10) == 0


def test_sighup_reopens_the_log_file_as_gearmand_does(tmp_path: Path) -> None:
    # Debian's logrotate for gearman-job-server moves the log and sends SIGHUP every night;
    # it ended farm's server (Python's default action), with its clients' jobs.
    log, rotated = tmp_path / "server.log", tmp_path / "server.log.1"
    srv = start_farm_server("-l", str(log), "--verbose", "INFO")
    try:
        wait_for("the first log line", lambda: log.exists() and log.stat().st_size > 0)
        log.rename(rotated)
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(
            "the log opened again", lambda: log.exists() and b"opened again" in log.read_bytes()
        )
        assert Peer(srv.addr).admin("getpid").startswith(f"OK {srv.proc.pid}")
        assert srv.proc.poll() is None
    finally:
        srv.stop()
    quiet = start_farm_server()  # logging to standard error: nothing to reopen, runs on
    try:
        quiet.proc.send_signal(signal.SIGHUP)
        quiet.proc.send_signal(signal.SIGTERM)  # delivered after SIGHUP (lower numbers first)
        assert quiet.proc.wait(10) == 0, "SIGTERM's clean exit, not death by SIGHUP (-1)"
    finally:
        quiet.stop()


#: The server with a SIGUSR1 sent to itself at the end of its start, before its loop handles
#: the signal: where `farm up`'s stop lands when it comes between the two. Sent in the start's
#: own code, or from a callback of the loop, where the loop catches what a callback raises.
EARLY_STOP = textwrap.dedent("""
    import asyncio, os, signal, sys
    from farm.server import app

    started = app.Server.start

    async def start_then_stop(self):
        await started(self)
        if sys.argv[1] == "callback":
            asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0)
        else:
            os.kill(os.getpid(), signal.SIGUSR1)

    app.Server.start = start_then_stop
    sys.exit(app.main(sys.argv[2:]))
""")


@pytest.mark.parametrize("where", ["start", "callback"])
def test_a_graceful_stop_before_the_handlers_ends_it_and_removes_its_socket(
    tmp_path: Path, where: str
) -> None:
    sock = tmp_path / "gearman.sock"
    argv = ["--port", str(free_port()), "--store", "none", "--unix", str(sock)]
    run = subprocess.run(
        [sys.executable, "-c", EARLY_STOP, where, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    assert not sock.exists()  # as at its stop: a client finds no server, not a dead socket
    assert "Traceback" not in run.stderr
