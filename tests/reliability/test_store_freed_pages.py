"""A store whose jobs all finished on a full disk takes the jobs its freed pages fit.

Found in a review, on a 3 MB tmpfs: background jobs filled the disk and then all
finished, and the store file kept its ~3 MB as free pages with the disk at 100%. Small
submits were taken, but every 100 kB one was refused (SQLITE_FULL) for as long as the
server ran: in WAL mode a row's pages go to the -wal first, which the full disk could not
grow, however many pages the file held free, and the store gave them back to the disk
only while its reserve was spent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server.store import SQLiteStore
from tests.helpers import ROOT
from tests.helpers.disks import small_tmpfs
from tests.helpers.peers import Peer, grab_all
from tests.helpers.servers import free_port, start_with_store

pytestmark = pytest.mark.timeout(120)

BIG = b"x" * 100_000
#: The jobs that fill the disk: each within half the reserve (1% of this disk, 31 kB), as
#: the store's checkpoints are, so the deletes of the last ones find their room.
SMALL = b"x" * 10_000


def _fill_disk(disk: Path, leave: int) -> None:
    info = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (info.f_bavail * info.f_frsize - leave))


def test_a_drained_store_on_a_full_disk_takes_a_job_its_freed_pages_fit(tmp_path: Path) -> None:
    # 48 kB left: room for the few pages an empty store rewrites, not for a 100 kB job's
    # -wal. (A disk full to its last byte keeps refusing: the reserve's room is the
    # deletes', never lent to the VACUUM.)
    leave = 48 << 10
    with small_tmpfs(tmp_path / "small", "3m") as disk:
        db, port = disk / "q.db", free_port()
        # Room kept back while the jobs fill the disk, given back before the restart, so
        # that the restart takes the reserve whole (four times its size free).
        (disk / "filler").write_bytes(b"\0" * (256 << 10))
        srv = start_with_store(db, port)
        try:
            client, filled = Peer(srv.addr), 0
            while True:  # background jobs until the disk is full
                client.send(T.SUBMIT_JOB_BG, "f", f"u{filled}", SMALL)
                if client.recv().type != T.JOB_CREATED:
                    break
                filled += 1
            assert filled > 100
            assert len(grab_all(srv.addr)) == filled  # and every one of them finishes
        finally:
            srv.stop()
        (disk / "filler").unlink()
        srv = start_with_store(db, port)
        try:
            assert (disk / "q.db-reserve").stat().st_size > 0, "the reserve is held"
            assert db.stat().st_size > 2 << 20, "the file keeps the freed pages"
            _fill_disk(disk, leave)
            client = Peer(srv.addr)
            client.send(T.SUBMIT_JOB_BG, "f", "big", BIG)
            reply = client.recv()
            assert reply.type == T.JOB_CREATED, f"refused with the pages free: {reply.args}"
            client.send(T.SUBMIT_JOB_BG, "f", "big-2", BIG)
            assert client.recv().type == T.JOB_CREATED
            assert (disk / "q.db-reserve").stat().st_size > 0, "the reserve is held again"
        finally:
            srv.stop()
        (disk / "filler").unlink()
        again = SQLiteStore(db)
        try:
            uniques = sorted(job.unique for job in again.load())
        finally:
            again.close()
        assert uniques == [b"big", b"big-2"], "no acknowledged job lost, no finished one back"


# Run in a child: a store whose finished jobs freed its pages gives them back (a VACUUM,
# committed into the -wal) and is killed before the checkpoint that would cut the -wal and
# the file: the file all dead pages at the next start.
_KILLED_MID_SHRINK = """
import os, signal, sys
from farm.server.reserve import shrink
from farm.server.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
vacuumed = []
def trace(sql):
    vacuumed.append(sql == "VACUUM" or bool(vacuumed and vacuumed[-1]))
    if vacuumed[-1] and sql.startswith("PRAGMA wal_checkpoint"):
        os.kill(os.getpid(), signal.SIGKILL)
store.db.set_trace_callback(trace)
shrink(store.db, store.reserve)
sys.exit("shrink ran no VACUUM")
"""


def test_a_shrink_killed_before_its_checkpoint_is_ended_by_the_next_full_disk(
    tmp_path: Path,
) -> None:
    # Its -wal then held the store's whole state and nothing cut it: no page was free, so
    # the next shrink returned before its checkpoint, and every background submit on the
    # full disk was refused for as long as the server ran (a clean stop healed it).
    with small_tmpfs(tmp_path / "small", "3m") as disk:
        db = disk / "q.db"
        store = SQLiteStore(db)
        try:
            ids = [
                store.add(b"H:%d" % n, b"f", b"u%d" % n, SMALL, 1, None, 0.0, False)
                for n in range(150)
            ]
            assert store.commit() == []
            for row in ids:
                store.remove(row)
            assert store.commit() == []
        finally:
            store.close()
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_MID_SHRINK, str(db)], cwd=ROOT, capture_output=True
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert db.stat().st_size > 1 << 20, "the file keeps the dead pages"
        _fill_disk(disk, 0)
        srv = start_with_store(db, free_port())
        try:
            client = Peer(srv.addr)
            client.send(T.SUBMIT_JOB_BG, "f", "after", b"x" * 20_000)
            reply = client.recv()
            assert reply.type == T.JOB_CREATED, (
                f"refused with the file all dead pages: {reply.args}"
            )
        finally:
            srv.stop()
