"""The store's file made unwritable under a running server.

Found in a durability review: a store made immutable was said to be on a full disk and its
reserve given back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import free_port, wait_connectable
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A real server with a real store in tmp_path: its address, store and log file."""
    db, log = tmp_path / "q.db", tmp_path / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "farm.server", "-p", str(port), "--store", str(db)]
    proc = subprocess.Popen([*cmd, "-v", "-l", str(log)], cwd=ROOT)
    try:
        wait_connectable(f"127.0.0.1:{port}", proc)
        yield f"127.0.0.1:{port}", db, log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_store_that_cannot_be_written_keeps_its_reserve(
    server: tuple[str, Path, Path],
) -> None:
    # Immutable (chattr +i): the writes fail for want of permission, not of room; the log
    # said the disk was full, at 24% used, and the reserve was given back to it.
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make the store immutable (CI runs as root)")
    addr, db, log = server
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "f", "stored", "x")
    assert client.recv().type == T.JOB_CREATED
    reserve = Path(f"{db}-reserve")
    held = reserve.stat().st_size
    if not held:
        pytest.skip("no disk reserve here (too little free disk beside the store)")
    files = [str(db), f"{db}-wal"]
    made = subprocess.run(["chattr", "+i", *files], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"chattr +i fails here: {made.stderr.decode().strip()}")
    try:
        worker = Peer(addr)
        worker.send(T.CAN_DO, "f")
        worker.send(T.GRAB_JOB)
        job = worker.recv()
        assert job.type == T.JOB_ASSIGN
        worker.send(T.WORK_COMPLETE, job.args[0], b"")  # its delete fails too
        client.send(T.SUBMIT_JOB_BG, "f", "refused", "x")
        answer = client.recv()
        assert answer.type == T.ERROR and answer.args[0] == b"QUEUE_ERROR", answer
        wait_for("the failure in the log", lambda: "cannot be written" in log.read_text())
        worker.send(T.ECHO_REQ, "sync")  # the WORK_COMPLETE was read and its delete tried
        assert worker.recv().type == T.ECHO_RES
    finally:
        subprocess.run(["chattr", "-i", *files], check=False)
    text = log.read_text()
    assert "is full" not in text, text
    assert reserve.stat().st_size == held, "the reserve was given back for no full disk"
