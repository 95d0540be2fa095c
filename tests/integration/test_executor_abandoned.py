"""Calls abandoned by Ctrl-C, in a caller process of their own against a real farm server:
what the caller leaves behind (its spill files) and what it still waits for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.calls import tell, wait_gate_then_tell
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.gate import Gate

AT_EXIT = """
import signal, sys, time
import farm

signal.signal(signal.SIGINT, signal.default_int_handler)
servers, key, spill_dir = sys.argv[1:4]
ex = farm.Executor(2, servers=servers, key_file=key, spill_dir=spill_dir)
# No worker serves them: the exit waits for them until a Ctrl-C abandons them.
futures = [ex.submit(len, bytes([i]) * (2 << 20)) for i in range(3)]
print("queued", flush=True)
"""


@pytest.fixture(scope="module")
def no_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorFarm]:
    f = ExecutorFarm(tmp_path_factory.mktemp("abandoned"), count=0)
    yield f
    f.stop()


def start_caller(program: str, farm: ExecutorFarm, tmp_path: Path) -> subprocess.Popen[str]:
    """``program`` run against ``farm`` with tmp_path/spill for its files, once it said
    "queued" (its calls are sent)."""
    script = tmp_path / "caller.py"
    script.write_text(program)
    proc = subprocess.Popen(
        [sys.executable, str(script), farm.addr, str(farm.key), str(tmp_path / "spill")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "queued\n"
    return proc


def interrupt_until_gone(proc: subprocess.Popen[str], within: float) -> None:
    """SIGINT every 0.2 s until the process ends: its exit's drain may not have begun at
    the first, which then ends the script's main module instead (the drain waits on)."""
    deadline = time.monotonic() + within
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the caller did not end"
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(0.2)
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.timeout(60)
def test_a_ctrl_c_at_exit_removes_the_abandoned_calls_files(
    no_workers: ExecutorFarm, tmp_path: Path
) -> None:
    # docs/executor.md: Ctrl-C at the exit abandons the calls the exit waits for, and
    # shutdown() deletes what is left. The interrupt ended the drain's wait, and the
    # executors' files were never removed: they waited an hour for the sweep.
    spill_dir = tmp_path / "spill"
    proc = start_caller(AT_EXIT, no_workers, tmp_path)
    assert len(os.listdir(spill_dir)) == 3
    interrupt_until_gone(proc, 30)
    left = [name for name in os.listdir(spill_dir) if f"-{proc.pid}-" in name]
    assert left == [], proc.stderr.read() if proc.stderr else ""


# Ctrl-C again, in the two places where a hurried user's second one hit: while the first
# unwound the drain's Event.wait(), where CPython (gh-78667) turns it into a RuntimeError
# (the stand-in raises that error for the first Ctrl-C, as a second landing there leaves
# it), and while the first one's removal of the files ran. Both say when the drain waits.
DRAINING = """
import threading
class Draining(threading.Event):
    def wait(self, timeout=None):
        try:
            print("draining", flush=True)
            return super().wait(timeout)
        except KeyboardInterrupt:
            if UNWOUND:
                raise RuntimeError("release unlocked lock")
            raise
ex._pump.finished = Draining()
"""
AGAIN = {
    "unwinding the wait": "UNWOUND = True\n",
    "in the removal": """
UNWOUND = False
removal = ex._pump.on_finished
def hurried():
    signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
    removal()
ex._pump.on_finished = hurried
""",
}


@pytest.mark.parametrize("where", AGAIN)
@pytest.mark.timeout(60)
def test_a_second_ctrl_c_at_exit_still_removes_the_abandoned_calls_files(
    no_workers: ExecutorFarm, tmp_path: Path, where: str
) -> None:
    spill_dir = tmp_path / "spill"
    proc = start_caller(AT_EXIT + AGAIN[where] + DRAINING, no_workers, tmp_path)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "draining\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert os.listdir(spill_dir) == [], err


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorFarm]:
    f = ExecutorFarm(tmp_path_factory.mktemp("interrupted_map"), count=2)
    yield f
    f.stop()


@pytest.mark.timeout(60)
def test_a_ctrl_c_while_map_reads_its_input_cancels_the_calls_read(
    two_workers: ExecutorFarm, tmp_path: Path
) -> None:
    # A Ctrl-C while map read its input (pickling, spilling a large argument each) left
    # every call read so far queued to run, and the `with`'s exit waited for them all.
    # Those not sent yet are cancelled now, as CPython's map cancels its calls not run.
    told_path = str(tmp_path / "told")

    def read() -> Iterator[str]:
        yield gate.path
        gate.arrived(1)  # the first call runs (alone: a generator's calls go as read)
        yield from [gate.path] * 4  # these wait in the executor: one call in flight at most
        raise KeyboardInterrupt

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as told, Gate(tmp_path / "g") as gate:
        told.bind(told_path)
        with two_workers.executor(max_workers=1) as ex:  # one call in flight at a time
            with pytest.raises(KeyboardInterrupt):
                ex.map(wait_gate_then_tell, read(), [told_path] * 5)
            gate.open()
        told.setblocking(False)
        ran = 0
        while True:
            try:
                told.recv(16)
            except BlockingIOError:
                break
            ran += 1
    assert ran == 1, f"{ran} calls ran after the map was interrupted"


def datagrams(sock: socket.socket) -> int:
    """How many datagrams wait at ``sock``, read without waiting."""
    sock.setblocking(False)
    count = 0
    while True:
        try:
            sock.recv(16)
        except BlockingIOError:
            return count
        count += 1


@pytest.mark.timeout(60)
def test_a_map_whose_input_raises_an_error_runs_the_calls_it_read(
    two_workers: ExecutorFarm, tmp_path: Path
) -> None:
    # An ordinary error from the input cancelled the calls read and not sent yet (1 of 8
    # ran); CPython's map cancels nothing there: ProcessPoolExecutor(1) runs all 8.
    told_path = str(tmp_path / "told")

    def read() -> Iterator[str]:
        yield from [told_path] * 8
        raise ValueError("the input broke")

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as told:
        told.bind(told_path)
        with (
            two_workers.executor(max_workers=1) as ex,  # one call in flight at a time
            pytest.raises(ValueError, match="the input broke"),
        ):
            ex.map(tell, read())
        # The `with`'s exit waited for the calls: each told before it returned.
        assert datagrams(told) == 8
