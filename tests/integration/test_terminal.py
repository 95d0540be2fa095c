"""`farm up` run by hand in a terminal (a real pseudo-terminal): what becomes of the farm
when that terminal goes away under it, or holds its output back."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from farm.client import Client
from farm.pools.signals import HANGUP_WINDOW
from tests.helpers.farmproc import FarmUp
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)

REVERSE = """
[functions.reverse]
target = "workers.text:reverse"
workers = 1
"""

PRINTER = """
[functions.shout]
target = "printer:shout"
workers = 1

[functions.nap]
target = "printer:nap"
workers = 1
"""


@pytest.fixture
def printer(tmp_path: Path) -> Path:
    (tmp_path / "printer.py").write_text(
        "import time\n"
        "def shout(job):\n    print('shouting', job.data.decode(), flush=True)\n"
        "    return job.data\n"
        "def nap(job):\n    time.sleep(float(job.data))\n    return job.data\n"
    )
    return tmp_path


def start_with(up: FarmUp, stdin: Any, stdout: Any, stderr: Any, **popen: object) -> None:
    """Start ``up``'s `farm up` with these as its standard streams (Popen's values)."""
    up.proc = subprocess.Popen(
        [sys.executable, "-c", up.code, "up", "-c", up.config_arg, *up.up_args],
        cwd=up.tmp,
        env=up.env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        **popen,  # type: ignore[arg-type]
    )


def on_terminal(up: FarmUp, terminal: int, **popen: object) -> None:
    """Start ``up``'s `farm up` with its log (stdout, stderr) on ``terminal``."""
    start_with(up, subprocess.DEVNULL, terminal, terminal, **popen)


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, terminal = pty.openpty()
    yield master, terminal
    for fd in (master, terminal):
        try:
            os.close(fd)
        except OSError:
            pass  # the test closed it itself


def test_a_worker_printing_after_the_terminal_closed_does_not_end_the_farm(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """The terminal `farm up` logs to is closed (its window, an ssh session gone): each write
    to it fails with EIO. A Python worker's line the supervisor writes on its log was such a
    write, unguarded: the supervisor died of it mid-loop, killing every worker and the job
    server at once, their jobs cut off with no drain. A lost log line is dropped instead, as
    the logging module drops one of the supervisor's own."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    # A session of its own: the terminal is not its controlling one, so its close is the
    # failing writes alone, no SIGHUP.
    on_terminal(up, terminal, start_new_session=True)
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"shout": 1})
        os.close(master)  # the terminal's window closed: writes to it fail with EIO
        with Client(up.addr) as client:
            assert client.call("shout", b"one", timeout=20) == b"one"
            assert client.call("shout", b"two", timeout=20) == b"two"
        assert up.alive(), "farm up died of its log's terminal going away"
        assert up.proc.poll() is None
    finally:
        assert up.stop() == 0


def test_the_job_server_logs_on_a_terminal_that_holds_back_background_output(
    tmp_path: Path, pty_pair: tuple[int, int]
) -> None:
    """`stty tostop`: a terminal stops a process of a background process group that writes
    to it (SIGTTOU). The job server leads a process group of its own, so it is such a one
    even while `farm up` runs in the foreground: its first log line (here, the jobs it
    replays from its store) stopped it, and `farm up` said "job server starting" and
    nothing more. The server ignores SIGTTOU, so its lines are written as `farm up`'s are."""
    store = tmp_path / "queue.db"
    for farm in ("first", "second"):
        (tmp_path / farm).mkdir()
    first = FarmUp(tmp_path / "first", REVERSE, store=store, metrics=False)
    try:
        first.expect_notify("READY=1")
        with Client(first.addr) as client:
            client.submit("later", b"kept", background=True)  # no worker: stays stored
    finally:
        assert first.stop() == 0
    master, terminal = pty_pair
    modes = termios.tcgetattr(terminal)
    modes[3] |= termios.TOSTOP
    termios.tcsetattr(terminal, termios.TCSANOW, modes)
    up = FarmUp(tmp_path / "second", REVERSE, store=store, start=False, metrics=False)
    # Run as a shell runs a foreground job: the pty its controlling terminal, its process
    # group the terminal's foreground one (the session leader's, set by TIOCSCTTY).
    on_terminal(
        up,
        terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(1, termios.TIOCSCTTY, 0),
    )
    shown: list[bytes] = []
    reader = threading.Thread(target=drain, args=(master, shown), daemon=True)
    reader.start()
    try:
        try:
            up.expect_notify("READY=1", timeout=20)
        except AssertionError as e:
            raise AssertionError(f"{e}\non its terminal:\n{b''.join(shown).decode()}") from None
        (server,) = [row["pid"] for row in up.ps() if row["function"] == "server"]
        assert psutil.Process(server).status() != psutil.STATUS_STOPPED
    finally:
        assert up.stop() == 0
    reader.join(timeout=10)


def drain(master: int, shown: list[bytes]) -> None:
    """Read the terminal's output into ``shown`` until it is closed, as its window would."""
    try:
        while data := os.read(master, 65536):
            shown.append(data)
    except OSError:
        pass  # EIO: no process holds the terminal any more


def test_farm_up_drains_and_stops_when_its_terminal_hangs_up(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """Its terminal's window closed: `farm up`, in the foreground, gets SIGHUP. That was
    read as a reload: the farm ran on with no terminal, every log line lost, its sockets
    held, and the next `farm up` refused for it. It stops as on Ctrl-C: the job in hand
    finished, every process gone, exit 0."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    # The session leader of a session whose controlling terminal the pty is: the kernel's
    # SIGHUP comes to it as to a login shell (which passes it on to its jobs).
    on_terminal(
        up,
        terminal,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(1, termios.TIOCSCTTY, 0),
    )
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"nap": 1, "shout": 1})
        children = psutil.Process(up.proc.pid).children(recursive=True)
        with Client(up.addr) as client:
            task = client.submit("nap", b"1.5")
            wait_for("the nap in hand", lambda: up.workers("nap", "busy"))
            os.close(master)  # the window closed
            assert client.wait(task, timeout=20) == b"1.5"
        assert up.proc.wait(timeout=20) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {alive}"
    finally:
        assert up.stop() == 0


def test_a_foreground_farm_piping_its_log_stops_when_its_terminal_hangs_up(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """`farm up 2>&1 | tee farm.log`, the terminal's foreground job: its log goes to a pipe,
    and its stdin is the terminal. At the hang-up `tee` ends (its log with it) and the
    SIGHUP was read as a reload: the farm ran on unseen, holding its sockets. It stops."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    # A session leader that takes the pty as its controlling terminal through its stdin is
    # that terminal's foreground process group, as a shell's foreground job is.
    start_with(
        up,
        terminal,
        up.log,
        subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    try:
        up.expect_notify("READY=1")
        os.close(master)  # the window closed: the kernel's SIGHUP to the session leader
        assert up.proc.wait(timeout=20) == 0
        assert "the terminal hung up (SIGHUP): stopping" in up.read_log()
    finally:
        assert up.stop() == 0


def test_a_sighup_still_reloads_a_farm_logging_to_a_file_whose_stdin_terminal_closed(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """`farm up >farm.log 2>&1 & disown`: its stdin stays the terminal, which closes at the
    logout. Its log is the file, so a `kill -HUP` after that is the documented reload, not
    the terminal's hangup."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    start_with(up, terminal, up.log, subprocess.STDOUT, start_new_session=True)
    try:
        up.expect_notify("READY=1")
        os.close(master)  # the logout: its stdin's terminal hangs up
        up.signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reloaded" in up.read_log())
        assert up.alive()
    finally:
        assert up.stop() == 0


def test_a_sighup_reloads_a_farm_whose_stdout_alone_was_on_a_closed_terminal(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """`farm up 2>farm.log & disown`: farm up logs to stderr alone, so a terminal left on its
    stdout that closed is no hang-up of its log, and a later `kill -HUP` is the reload (it
    was read as the hang-up's and stopped the farm, its log saying "the terminal hung up")."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    start_with(up, subprocess.DEVNULL, terminal, up.log, start_new_session=True)
    try:
        up.expect_notify("READY=1")
        os.close(master)  # the logout
        up.signal(signal.SIGHUP)
        wait_for("the reload", lambda: "reloaded" in up.read_log())
        assert up.alive() and "hung up" not in up.read_log()
    finally:
        assert up.stop() == 0


def test_a_later_sighup_reloads_a_farm_that_outlived_its_terminal_without_one(
    printer: Path, pty_pair: tuple[int, int]
) -> None:
    """`setsid farm up` (or `& disown`) logging to a terminal that then closed: no SIGHUP
    came to it with the hang-up, and it runs on. A `kill -HUP` long after is the reload
    asked, not the hang-up's: it stopped the farm, saying why only to the dead terminal."""
    master, terminal = pty_pair
    up = FarmUp(printer, PRINTER, start=False, metrics=False)
    on_terminal(up, terminal, start_new_session=True)  # not its controlling terminal
    try:
        up.expect_notify("READY=1")
        up.wait_idle({"shout": 1})
        os.close(master)  # the window closed: no SIGHUP to this session
        up.ps()  # answered on a turn of its loop after the hang-up, which saw it
        time.sleep(HANGUP_WINDOW + 0.5)  # the time under test: the hang-up long past
        up.write_config(PRINTER + '\n[functions.later]\ntarget = "printer:nap"\nworkers = 1\n')
        up.signal(signal.SIGHUP)
        up.wait_idle({"shout": 1, "nap": 1, "later": 1}, timeout=20)  # reloaded: the pool added
    finally:
        assert up.stop() == 0
