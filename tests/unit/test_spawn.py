"""farm.pools.spawn: what a child is given before exec, read from /proc once it runs."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

from farm.pools.spawn import spawn
from tests.helpers import ROOT
from tests.helpers.waiting import wait_for

SLEEP = shutil.which("sleep") or "/bin/sleep"


def execd(proc: psutil.Process) -> bool:
    return proc.cmdline()[:1] == [SLEEP]


@contextmanager
def child(**options: object) -> Iterator[psutil.Process]:
    """``sleep 60`` started by spawn(), once it has exec'd; killed and reaped on leaving."""
    pid = spawn([SLEEP, "60"], dict(os.environ), **options)  # type: ignore[arg-type]
    proc = psutil.Process(pid)
    try:
        wait_for("the child to exec sleep", functools.partial(execd, proc), timeout=10)
        yield proc
    finally:
        proc.kill()
        os.waitpid(pid, 0)


def signals(proc: psutil.Process, field: str) -> set[int]:
    """The signals of a mask in /proc/PID/status: SigIgn (ignored), SigBlk (blocked),
    ShdPnd (sent to the process whole and not delivered yet)."""
    with open(f"/proc/{proc.pid}/status") as status:
        mask = next(int(line.split()[1], 16) for line in status if line.startswith(f"{field}:"))
    return {n for n in range(1, 65) if mask >> (n - 1) & 1}


def ignored(proc: psutil.Process) -> set[int]:
    return signals(proc, "SigIgn")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_signals_named_in_ignore_are_ignored_from_the_programs_first_instruction() -> None:
    # Python workers are spawned so (farm.pools.workerstart): a SIGHUP sent to every process
    # of the unit while one is still starting, before its main() ignores it, killed it.
    with child(ignore=(signal.SIGHUP,)) as proc:
        assert signal.SIGHUP in ignored(proc)
    with child() as proc:
        assert signal.SIGHUP not in ignored(proc)  # command workers keep the default


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_a_command_gets_back_the_signals_python_ignores() -> None:
    # Python ignores SIGPIPE and SIGXFSZ in the supervisor; a command worker inherited them
    # ignored, so `yes | head -n1` in a shell worker printed "yes: ... Broken pipe" (a shell
    # cannot trap a signal ignored on entry), as subprocess's restore_signals avoids.
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN  # the premise, in pytest too
    with child() as proc:
        assert not {signal.SIGPIPE, signal.SIGXFSZ} & ignored(proc)
    with child(ignore=(signal.SIGPIPE,)) as proc:  # asked for, it is still ignored
        assert signal.SIGPIPE in ignored(proc)


def test_exec_text_escapes_a_surrogate_no_bytes_made() -> None:
    # A boot error's text may hold one ("\ud800" from a JSON string): it raised
    # UnicodeEncodeError in the supervisor, before the fork, and farm up died.
    from farm.pools.spawn import exec_read, exec_text

    assert exec_read(exec_text("bad \ud800 data")) == "bad \\ud800 data"
    assert exec_read(exec_text("中文 \udcff")) == "中文 \udcff"  # one bytes made: kept


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_signals_named_in_block_are_blocked_across_exec() -> None:
    # The job server is spawned so (farm.pools.localserver): `farm up`'s stop (SIGUSR1) sent
    # during its imports waits until it handles it, instead of killing it.
    with child(block=(signal.SIGUSR1,)) as proc:
        assert signal.SIGUSR1 in signals(proc, "SigBlk")
    with child() as proc:
        assert signal.SIGUSR1 not in signals(proc, "SigBlk")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_a_blocked_signal_sent_as_spawn_returns_waits_in_the_program() -> None:
    # The supervisor handles SIGUSR1 (it logs and ignores it). Blocked only in the child, a
    # stop sent as spawn returned came to the child's copy of that handler before the block
    # and was lost: the job server then served on until its SIGKILL 5 s later.
    caught: list[int] = []
    before = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    try:
        for _ in range(20):
            pid = spawn([SLEEP, "60"], dict(os.environ), block=(signal.SIGUSR1,))
            os.kill(pid, signal.SIGUSR1)
            proc = psutil.Process(pid)
            try:
                wait_for("the child to exec sleep", functools.partial(execd, proc))
                assert signal.SIGUSR1 in signals(proc, "ShdPnd")
            finally:
                proc.kill()
                os.waitpid(pid, 0)
        assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        assert not caught  # the supervisor's own mask is as it was, its handler not run
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_fork_beside_the_supervisors_other_threads_is_not_warned_of() -> None:
    # Python 3.12 and later warn of a fork in a process with threads; the supervisor has its
    # metrics endpoint's, and each worker it started put the warning in its log where
    # warnings are shown. The child makes system calls alone until exec (farm.pools.spawn).
    program = """
import os, sys, threading
from farm.pools.spawn import spawn
stop = threading.Event()
other = threading.Thread(target=stop.wait)
other.start()
try:
    pid = spawn(["/bin/sh", "-c", "exit 7"], {})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 7, status
finally:
    stop.set()
"""
    ran = subprocess.run(
        # "always": one raised as an error is dropped by os.fork, which must not fail
        [sys.executable, "-W", "always::DeprecationWarning", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""  # Python 3.12 and later: "DeprecationWarning: ... multi-threaded"
