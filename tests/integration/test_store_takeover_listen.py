"""A server started on gearmand's libsqlite3 file while its port is taken (gearmand still
running there, as a host is switched over) leaves that file as it was: it moved gearmand's
queued jobs into farm's table first, then failed on the port, and a gearmand started again
on its file found none of its jobs (farm.server.listenfirst)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import start_gearmand, start_with_store


def queued_by_gearmand(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM gearman_queue").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_a_port_in_use_is_said_before_gearmands_queue_is_taken_over(tmp_path: Path) -> None:
    db = tmp_path / "gearman.db"
    gearmand = start_gearmand("-q", "libsqlite3", f"--libsqlite3-db={db}")
    try:
        client = Peer(gearmand.addr)
        client.send(T.SUBMIT_JOB_BG, "f", "u1", "x")
        client.expect(T.JOB_CREATED)
        client.close()
        assert queued_by_gearmand(db) == 1
        before = db.stat()
        cmd = [sys.executable, "-m", "farm.server", "-p", str(gearmand.port), "--store", str(db)]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    finally:
        gearmand.stop()
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{gearmand.port}: address already in use" in done.stderr
    assert "took over" not in done.stderr, done.stderr
    assert queued_by_gearmand(db) == 1
    assert db.stat().st_mode == before.st_mode  # not made farm's (mode 600) either
    assert not db.with_name(db.name + "-wal").exists()
    # With the port free, the same start takes them over, as before.
    srv = start_with_store(db)
    try:
        assert Peer(srv.addr).admin("status") == "f\t1\t0\t0\n.\n"
    finally:
        srv.stop()
    assert queued_by_gearmand(db) == 0
