"""The restart policy, mostly without processes: how long to wait before a restart, and
which exits are crashes (a crash is not an ordered stop, a boot failure is not a crash);
whether the local server goes away, and its end found by a worker's (a child that exited)."""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from farm import config
from farm.config import ServerConfig
from farm.pools.exits import (
    EXIT_BOOT_ERROR,
    EXIT_RECYCLE,
    EXIT_RSS_KILLED,
    exit_cause,
    may_answer_server_loss,
)
from farm.pools.localserver import LOST_WINDOW, LocalServer
from farm.pools.restartpolicy import FREE_JOB_CRASHES, boot_delay, crash_delay
from farm.pools.slots import JOB_SEEN_STALE, Slot, WorkerProcess
from farm.supervisor import Supervisor
from tests.helpers.servers import free_ports


def status(code: int = 0, sig: int = 0) -> int:
    """A wait status as os.waitpid returns it."""
    return sig if sig else code << 8


def proc(started: float = 100.0) -> WorkerProcess:
    return WorkerProcess(1, "f", 0, 0, -1, (), started=started)


def test_crash_backoff_starts_immediate_and_is_capped() -> None:
    assert [crash_delay(n) for n in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert crash_delay(50) == 30.0


def test_a_target_that_never_boots_is_tried_a_handful_of_times_a_minute() -> None:
    waited, tries = 0.0, 0
    while waited < 60:
        tries += 1
        waited += boot_delay(tries)
    assert tries <= 6  # never a hot loop


def test_exits_are_told_apart() -> None:
    slot = Slot("f", 0, 0)
    how, delay = slot.note_exit(proc(), status(sig=signal.SIGKILL), now=101)
    assert (how, delay, slot.failures, slot.failing) == (
        "crashed: was killed by SIGKILL",
        0,
        1,
        False,
    )
    how, delay = slot.note_exit(proc(), status(EXIT_BOOT_ERROR), now=102)
    assert "failed to boot" in how and delay >= 2 and slot.failing
    ordered = proc()
    ordered.kill_reason = "job H:1 ran past its 5s timeout"
    how, delay = slot.note_exit(ordered, status(sig=signal.SIGKILL), now=103)
    assert delay == 0 and slot.failures == 2 and "timeout" in how
    how, delay = slot.note_exit(proc(), status(EXIT_RECYCLE), now=104)
    assert delay == 0 and slot.failures == 2 and "recycled" in how
    hog = proc()
    hog.handle = "H:1"
    how, delay = slot.note_exit(hog, status(EXIT_RSS_KILLED), now=104)
    assert (how, delay, slot.failures) == ("killed: RSS over kill_rss_mb; job H:1 failed", 0, 2)
    slot.note_exit(proc(), status(1), now=105)
    assert slot.failing and slot.failures == 3  # FAILING_AFTER consecutive crashes
    slot.note_exit(proc(started=0.0), status(1), now=100)  # lived 100 s: history starts over
    assert slot.failures == 1 and not slot.failing


def test_a_death_in_a_job_restarts_at_once_without_counting_as_a_failure() -> None:
    """A call that kills its worker (os._exit) is retried by the server up to job_retries
    times: each death is the job's, and a slot backing off for it took the pool offline."""
    slot = Slot("f", 0, 0)
    for n in range(FREE_JOB_CRASHES):
        busy = proc()
        busy.handle, busy.busy_since = f"H:{n}", 100.0
        how, delay = slot.note_exit(busy, status(1), now=101)
        assert delay == 0 and how == f"crashed in job H:{n}: exited with code 1", how
    assert slot.failures == 0 and not slot.failing
    for n in range(2):  # past them: a crash loop backs off
        busy = proc()
        busy.handle, busy.busy_since, busy.runs = f"H:x{n}", 100.0, "f (workers:f)"
        how, delay = slot.note_exit(busy, status(7), now=101)
        # It said "crashed: exited with code 7": no job, no function nor target, in the
        # crash loop, where they matter most.
        assert how == (
            f"crashed in job H:x{n} of f (workers:f): exited with code 7"
            f" (past {FREE_JOB_CRASHES} deaths in jobs: counted as a crash)"
        ), how
        assert slot.failures == n + 1 and delay == crash_delay(n + 1)
    slot.note_exit(proc(started=0.0), status(1), now=100)  # a healthy run: free ones again
    assert slot.job_crashes == 0


def test_a_job_that_exits_with_the_workers_own_codes_is_still_a_death_in_a_job() -> None:
    """A call's os._exit(3) (or 4) ended a worker in a job: the exit code is the job's. Read as
    the worker's boot failure it marked the slot failing and backed it off 2, 4, 8 ... s
    per such call (both slots of a pool offline after a couple of them)."""
    slot = Slot("f", 0, 0)
    for code in (EXIT_BOOT_ERROR, EXIT_RECYCLE):
        busy = proc()
        busy.handle, busy.busy_since = "H:1", 100.0
        how, delay = slot.note_exit(busy, status(code), now=101)
        assert (how, delay) == (f"crashed in job H:1: exited with code {code}", 0), how
        assert exit_cause("", status(code), in_job=True) == "crash"
    assert slot.failures == 0 and not slot.failing
    assert exit_cause("", status(EXIT_RSS_KILLED), in_job=True) == "rss"  # its own, mid-job
    assert exit_cause("", status(EXIT_BOOT_ERROR)) == "boot_failure"  # between jobs: its own


def test_a_command_workers_job_seen_long_ago_is_forgotten_before_its_end_is_judged() -> None:
    """A command worker's job in hand is what the server's peers last said: one said long
    before its end is not the job it died in (the integration test: test_command_crash_job)."""
    for seen, kept in ((110.0 - JOB_SEEN_STALE - 0.1, False), (110.0 - JOB_SEEN_STALE / 2, True)):
        command = proc()
        command.command, command.job_seen = True, seen
        command.handle, command.busy_since = "H:old", 105.0
        command.forget_stale_job(110.0)
        assert (command.handle, command.busy_since) == (("H:old", 105.0) if kept else ("", None))
    python = proc()  # a Python worker's comes from its own record, fresh at its end
    python.handle, python.busy_since = "H:1", 1.0
    python.forget_stale_job(1000.0)
    assert python.handle == "H:1"


def test_a_command_workers_job_listed_before_its_server_went_away_is_forgotten() -> None:
    """A listing a second old is fresh, but not once its server was found going away (a
    SIGUSR1's drain lets the job end, then closes the connection) or gone: only one that
    the server serving now gave counts (the integration test: test_command_server_lost)."""
    config = ServerConfig(listen=("unix:/nowhere/farm.sock",), store="none", job_retries=3)
    server = LocalServer(config, {})
    server.pid, server.started = 10, 5.0
    server.answered(6.0)
    for ready, seen, kept in ((True, 9.0, True), (False, 9.0, False), (True, 5.5, False)):
        server.ready = ready  # ending() found its listeners shut; or a listing of the last one
        command = proc()
        command.command, command.job_seen = True, seen
        command.handle, command.busy_since = "H:1", 8.0
        command.forget_stale_job(10.0, server.serving_since())
        assert (command.handle, command.busy_since) == (("H:1", 8.0) if kept else ("", None))


def test_a_command_workers_exit_0_after_jobs_is_a_recycle_before_any_a_crash() -> None:
    """PHP's `if (++$n >= 100) exit(0);`: a command worker that served and stopped itself
    is recycled; one that exits 0 having served nothing cannot work, and backs off. A
    Python worker's exit 0 unasked stays a crash (it exits 0 only when asked to drain)."""
    slot = Slot("f", 0, 0)
    for _ in range(5):
        served = proc()
        served.command, served.jobs_done = True, 100
        how, delay = slot.note_exit(served, status(0), now=101)
        assert (how, delay) == ("was recycled (exited with code 0 after 100 jobs)", 0)
        assert exit_cause("", status(0), served=served.served_jobs) == "recycle"
    assert slot.failures == 0 and not slot.failing
    idle = proc()
    idle.command = True
    how, delay = slot.note_exit(idle, status(0), now=102)
    assert how == "stopped unasked (exited with code 0)" and slot.failures == 1
    assert exit_cause("", status(0), served=idle.served_jobs) == "crash"
    python = proc()
    python.jobs_done = 100
    assert not python.served_jobs
    assert slot.note_exit(python, status(0), now=103)[0] == "stopped unasked (exited with code 0)"
    four = proc()
    four.command = True
    assert slot.note_exit(four, status(EXIT_RECYCLE), now=104)[0] == (
        "was recycled (exited with code 4)"
    )


def test_a_command_worker_that_lost_its_server_is_restarted_at_once_uncounted() -> None:
    """PHP's `while ($w->work());` ends when the job server died (work() cannot
    reconnect): with any exit code, or SIGPIPE, its slot is neither backed off nor
    failing; a death in a job stays one, and a segfault stays a crash."""
    slot = Slot("f", 0, 0)
    for code in (0, 1, 255, 0, 0):
        lost = proc()
        lost.command = True
        how, delay = slot.note_exit(lost, status(code), now=101, server_lost=True)
        assert (how, delay) == (f"lost its job server (exited with code {code})", 0)
        assert exit_cause("", status(code), server_lost=True) == "server_lost"
    assert slot.failures == 0 and not slot.failing
    assert may_answer_server_loss(status(0)) and may_answer_server_loss(status(3))
    assert may_answer_server_loss(status(sig=signal.SIGPIPE))
    assert not may_answer_server_loss(status(sig=signal.SIGSEGV))
    holding = proc()
    holding.command, holding.busy_since = True, 100.5
    how, _ = slot.note_exit(holding, status(0), now=102, server_lost=True)
    assert how == "crashed in job: exited with code 0"
    assert exit_cause("", status(0), in_job=True, server_lost=True) == "crash"


def test_a_worker_lost_its_server_only_if_it_ran_through_the_servers_death() -> None:
    config = ServerConfig(listen=("unix:/nowhere/farm.sock",), store="none", job_retries=3)
    server = LocalServer(config, {})
    assert not server.lost_by(started=1.0, now=2.0)  # never ready: workers never ran
    server.pid, server.started = 10, 5.0
    server.answered(6.0)
    assert not server.lost_by(started=7.0, now=8.0)  # it serves, and did all along
    server.pid, server.ready = 0, False  # died (exited): the backoff, or a start
    assert server.lost_by(started=7.0, now=9.0)
    server.pid, server.started = 11, 10.0
    assert server.lost_by(started=7.0, now=10.5)  # the new one does not answer yet
    server.answered(11.0)
    assert server.lost_by(started=7.0, now=11.0 + LOST_WINDOW)  # it gave up as it came back
    assert not server.lost_by(started=7.0, now=11.1 + LOST_WINDOW)
    assert not server.lost_by(started=10.5, now=12.0)  # started after the death: its own end
    server.stopping = True  # the farm stops it: its workers drain, ordered
    assert not server.lost_by(started=7.0, now=12.0)


def test_a_server_refuses_only_when_every_address_it_listens_on_refuses(tmp_path: Path) -> None:
    # Its stop closes every listener before its connections: all refusing is its going
    # away (LocalServer.ending). A Unix socket's path removed by another hand is not.
    path = tmp_path / "farm.sock"
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        both = (f"unix:{path}", f"127.0.0.1:{port}")
        server = LocalServer(ServerConfig(listen=both, store="none", job_retries=3), {})
        assert server.refuses()  # nothing listens at either yet
        tcp.listen()
        assert not server.refuses()  # the Unix path gone, the TCP listener serves on
        with socket.socket(socket.AF_UNIX) as unix:
            unix.bind(str(path))
            unix.listen()
            assert not server.refuses()
    assert server.refuses()  # both closed (the Unix path left behind): going away


def test_a_server_whose_listen_backlog_is_full_does_not_refuse() -> None:
    # A server behind on its accepts (a burst of connections) lets the probe's connect time
    # out: its SYN waits for room in the backlog. That is a live server, no refusal: counted
    # as going away, its workers would wait for a next server that never comes.
    with socket.socket() as tcp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(0)
        port = tcp.getsockname()[1]
        held: list[socket.socket] = []
        try:
            for _ in range(4):  # never accepted: the first fills the backlog, the rest wait
                pending = socket.socket()
                held.append(pending)
                pending.setblocking(False)
                pending.connect_ex(("127.0.0.1", port))
            assert select.select([], held[:1], [], 5)[1]  # the backlog is full once it is in
            config = ServerConfig(listen=(f"127.0.0.1:{port}",), store="none", job_retries=3)
            assert not LocalServer(config, {}).refuses()
        finally:
            for pending in held:
                pending.close()


def test_a_servers_end_found_by_its_workers_end_restarts_it_once_and_the_worker_lost_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A command worker's end reaped while its server's waits (it exited between the two):
    # LocalServer.ending reaps the server there, and hands its end to the supervisor as
    # the reap would. Its status dropped, the server was reaped and never restarted: its
    # pid stayed "starting" for ever, and the workers waited on it.
    (tmp_path / "farm.toml").write_text(
        textwrap.dedent(f"""
        [server]
        listen = ["127.0.0.1:{free_ports(1)[0]}", "unix:{tmp_path / "farm.sock"}"]
        store = "none"

        [supervisor]
        control = "{tmp_path / "control.sock"}"
        metrics = "off"

        [functions.rev]
        command = ["/bin/true"]
        workers = 1
        """)
    )
    supervisor = Supervisor(config.load(tmp_path / "farm.toml"))
    server = supervisor.server
    # The server: a child that exited with code 3, left unreaped (WNOWAIT) as a zombie.
    server.pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], dict(os.environ))
    os.waitid(os.P_PID, server.pid, os.WEXITED | os.WNOWAIT)
    server.started = time.monotonic() - 10
    server.answered(server.started + 1)
    # Its worker, seen serving it, in a group of its own (its end kills what is left there).
    worker = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        proc = WorkerProcess(worker.pid, "rev", 0, 0, -1, (), command=True, started=server.ready_at)
        proc.local_seen = True
        supervisor.slots["rev"] = [Slot("rev", 0, 0, proc=proc)]
        supervisor.by_pid[proc.pid] = proc
        with caplog.at_level(logging.INFO, logger="farm.supervisor"):
            supervisor.worker_exited(supervisor.by_pid.pop(proc.pid), 0)  # exit 0: PHP's
        assert supervisor.exits["rev", "server_lost"] == 1
        assert supervisor.exits["rev", "crash"] == 0
        assert server.restarts == 1 and server.pid == 0  # reaped: no later reap counts it
        said = [r.getMessage() for r in caplog.records if "job server (pid" in r.getMessage()]
        assert len(said) == 1 and "exited with code 3; restarting" in said[0], said
    finally:
        worker.kill()
        worker.wait()
        supervisor.selector.close()
