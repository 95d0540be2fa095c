"""The supervisor at its descriptor limit (its control socket, its workers' starts; a farm
that would not fit refused before it starts), and control clients that say nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from farm.pools.control import ControlUnavailable, request
from farm.pools.controlserver import MAX_WAITING, SILENT_FOR
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

ONE_WORKER = '[functions.reverse]\ntarget = "workers.text:reverse"\nworkers = 1\n'


def faulty_farm(tmp_path: Path, code: str, switch: str = "") -> tuple[FarmUp, Path]:
    """`farm up` of one worker started by ``code`` (a fault patched in, then the CLI), with
    $``switch`` (if any) naming the file whose presence turns the fault on; and that path."""
    path = tmp_path / switch.lower().replace("_", "-")
    env = {switch: str(path)} if switch else {}
    up = FarmUp(tmp_path, ONE_WORKER, metrics=False, start=False, extra_env=env)
    up.code = code
    up.start()
    return up, path


def test_accept_at_the_descriptor_limit_pauses_the_control_socket_not_the_farm(
    tmp_path: Path,
) -> None:
    # accept() failing with EMFILE raised out of the supervisor's loop: "farm: cannot start:
    # [Errno 24] Too many open files", exit 1, hours into a run, its server and workers gone.
    up = FarmUp(tmp_path, ONE_WORKER, metrics=False)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"reverse": 1})
        supervisor = psutil.Process(up.proc.pid)
        soft, hard = supervisor.rlimit(psutil.RLIMIT_NOFILE)
        # Below every descriptor it holds: no open succeeds, whatever it closes meanwhile
        # (its own look at /proc included), until the limit is put back.
        supervisor.rlimit(psutil.RLIMIT_NOFILE, (3, hard))
        try:
            with pytest.raises(ControlUnavailable, match="did not answer"):
                request(up.control, {"cmd": "ps"}, timeout=2.5)  # a pause or two
            assert up.proc.poll() is None, up.read_log()
        finally:
            supervisor.rlimit(psutil.RLIMIT_NOFILE, (soft, hard))
        # Once a descriptor is free again it answers, within a pause.
        assert request(up.control, {"cmd": "ping"}, timeout=5)["ok"]
        said = [line for line in up.read_log().splitlines() if "cannot accept" in line]
        assert len(said) == 1, said  # said once, not at each try
        assert "Too many open files" in said[0] and "LimitNOFILE" in said[0], said
    finally:
        assert up.stop() == 0, up.log_path.read_text()


def test_silent_control_clients_are_capped_the_longest_waiting_closed(tmp_path: Path) -> None:
    # Each connection that never sent its request held a descriptor of the supervisor's for
    # good: enough of them and the farm met its limit (above).
    up = FarmUp(tmp_path, ONE_WORKER, metrics=False)
    held: list[socket.socket] = []
    try:
        up.expect_notify("READY=1")
        fds = len(os.listdir(f"/proc/{up.proc.pid}/fd"))
        for _ in range(MAX_WAITING + 1):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(up.control)
            held.append(sock)
        held[0].settimeout(SILENT_FOR / 2)  # the cap, not its silence, closes it
        assert held[0].recv(1) == b""  # the one that waited longest: closed
        assert request(up.control, {"cmd": "ping"}, timeout=5)["ok"]
        # Requests that come at once, more than the cap: each sent its line, none dropped.
        with ThreadPoolExecutor(2 * MAX_WAITING) as pool:
            asks = [pool.submit(request, up.control, {"cmd": "ping"}, 10) for _ in range(40)]
            assert all(ask.result()["ok"] for ask in asks)
        # No more than the cap held (a worker's pipes may come and go: a little slack).
        assert len(os.listdir(f"/proc/{up.proc.pid}/fd")) <= fds + MAX_WAITING + 2
    finally:
        for sock in held:
            sock.close()
        assert up.stop() == 0, up.log_path.read_text()


#: The supervisor run with an OSError raised out of its loop once it said READY=1: what
#: nothing in the loop should raise now, and what "cannot start" named hours into a run.
FAILS_ONCE_READY = """
import errno
from farm.supervisor import Supervisor
sweep = Supervisor.sweep_spill
def failing(self):
    if self.ready_sent:
        raise OSError(errno.EMFILE, "Too many open files")
    sweep(self)
Supervisor.sweep_spill = failing
from farm.cli import main; main()
"""


def test_an_error_out_of_a_running_farm_is_not_called_a_start(tmp_path: Path) -> None:
    up, _ = faulty_farm(tmp_path, FAILS_ONCE_READY)
    try:
        up.expect_notify("READY=1")
        assert up.proc.wait(20) == 1
    finally:
        up.stop()
    said = up.log_path.read_text()
    assert "farm: stopped on an error: [Errno 24] Too many open files" in said, said
    assert "cannot start" not in said, said


#: The supervisor run with its workers' spawn failing as at the descriptor limit while the
#: file named by $REFUSE_SPAWN is there (a limit lowered from outside also stops `farm ps`).
REFUSES_SPAWN = """
import errno, os
import farm.pools.workerstart as ws
spawn = ws.spawn
def refusing(*args, **kwargs):
    if os.path.exists(os.environ["REFUSE_SPAWN"]):
        raise OSError(errno.EMFILE, "Too many open files")
    return spawn(*args, **kwargs)
ws.spawn = refusing
from farm.cli import main; main()
"""


def test_a_worker_that_cannot_be_started_backs_off_and_reads_as_failing(tmp_path: Path) -> None:
    # A spawn failing with EMFILE was retried every 0.5 s for ever, a log line each time,
    # its slot never counted a failure ("backoff", never "failing").
    up, refuse = faulty_farm(tmp_path, REFUSES_SPAWN, "REFUSE_SPAWN")
    try:
        up.expect_notify("READY=1")
        (worker,) = up.wait_idle({"reverse": 1})
        refuse.touch()
        psutil.Process(worker["pid"]).kill()
        (slot,) = wait_for(
            "the slot to read as failing",
            lambda: [r for r in up.workers("reverse") if r["state"] == "failing"],
            timeout=20,
        )
        assert slot["last_exit"] == "could not be started: Too many open files", slot
        said = [line for line in up.read_log().splitlines() if "cannot start worker" in line]
        assert len(said) == 1, said  # failing by its second try, 1 s after its first
        refuse.unlink()
        up.wait_idle({"reverse": 1}, timeout=30)  # started again once it can be
    finally:
        assert up.stop() == 0, up.log_path.read_text()


def under_descriptor_limit(limit: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """The farm CLI run with ``limit`` as its soft and hard descriptor limit (sh's ulimit)."""
    cli = [sys.executable, "-c", "from farm.cli import main; main()", *argv]
    return subprocess.run(
        ["sh", "-c", f'ulimit -n {limit} && exec "$@"', "sh", *cli],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_farm_that_would_not_fit_its_descriptor_limit_is_refused_before_it_starts(
    tmp_path: Path,
) -> None:
    # Under ulimit -n 40 the server kept one connection, and `farm up` said ready while 3 of
    # its 4 workers looped "Broken pipe; reconnecting"; with 16 the supervisor itself ran
    # out. Now: one line, exit 2, nothing started; `farm check` says the same.
    up = FarmUp(tmp_path, ONE_WORKER.replace("workers = 1", "workers = 4"), start=False)
    up.log.close()
    up.notify.close()
    for command in ("up", "check"):
        done = under_descriptor_limit(40, command, "-c", str(up.config))
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        lines = done.stderr.splitlines()
        assert len(lines) == 1, (command, lines)
        said = lines[0]
        assert said.startswith("farm: the descriptor limit (LimitNOFILE=, ulimit -n) is 40:"), said
        assert "the job server would take 0 connection(s), fewer than its 4 worker(s)" in said
        assert "Raise it to at least" in said and "docs/operations.md" in said, said
        assert "usage" not in said, said  # no flag of farm up's would fix it
    assert not Path(up.control).exists()  # nothing started
    # Where it fits, it is checked as before.
    done = under_descriptor_limit(128, "check", "-c", str(up.config))
    assert done.returncode == 0, done.stderr


#: The supervisor with `farm ps`'s table failing as psutil's reads of /proc fail at the
#: descriptor limit, while the file named by $REFUSE_PS is there.
REFUSES_PS = """
import errno, os
from farm.supervisor import Supervisor
table = Supervisor.process_table
def failing(self):
    if os.path.exists(os.environ["REFUSE_PS"]):
        raise OSError(errno.EMFILE, "Too many open files", "/proc/1/stat")
    return table(self)
Supervisor.process_table = failing
from farm.cli import main; main()
"""


def test_a_request_that_fails_in_the_supervisor_is_answered_with_why(tmp_path: Path) -> None:
    # `farm ps` at the limit said "control socket ...: the supervisor closed early".
    up, refuse = faulty_farm(tmp_path, REFUSES_PS, "REFUSE_PS")
    try:
        up.expect_notify("READY=1")
        refuse.touch()
        reply = request(up.control, {"cmd": "ps"}, timeout=10)
        assert reply["ok"] is False, reply
        assert reply["error"] == (
            "the supervisor failed it: [Errno 24] Too many open files: '/proc/1/stat'"
        ), reply
        refuse.unlink()
        assert request(up.control, {"cmd": "ps"}, timeout=10)["ok"]  # and serves on
    finally:
        assert up.stop() == 0, up.log_path.read_text()
