"""A store's -wal damaged on disk (one flipped bit) while its server was down: SQLite's
recovery stops at the first frame that fails its checksum and drops every transaction after
it, and the server's first checkpoint empties the -wal. 100 of 200 acknowledged jobs were
lost so with no word in the log. The server now reads the -wal first: what is lost is said
as an ERROR (frame, transactions) and the -wal is copied aside, mode 600, before the open."""

from __future__ import annotations

import signal
import stat
import struct
from pathlib import Path

import pytest

from farm.client.admin import admin_query
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server

JOBS = 40


def killed_with_jobs(store: Path, log: Path) -> None:
    """A server on ``store`` acknowledges JOBS background jobs, one commit each (the next
    submit waits for the JOB_CREATED), and is killed before any checkpoint."""
    srv = start_farm_server("--store", str(store), "-l", str(log))
    try:
        peer = Peer(srv.addr)
        for n in range(JOBS):
            peer.send(T.SUBMIT_JOB_BG, "reverse", f"u{n}", b"x" * 3000)
            assert peer.recv().type == T.JOB_CREATED
        peer.close()
    finally:
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait(10)


def queued_after_start(store: Path, log: Path) -> int:
    srv = start_farm_server("--store", str(store), "-l", str(log))
    try:
        reply = admin_query(srv.addr, "status", timeout=10)
        rows = [line.split("\t") for line in reply.splitlines() if "\t" in line]
        return sum(int(row[1]) for row in rows if row[0] == "reverse")
    finally:
        srv.stop()


def flip(wal: Path, where: str) -> None:
    """One bit of the middle frame: in its page (a job's bytes), or in its salt; or of the
    -wal's header (its first salt)."""
    data = bytearray(wal.read_bytes())
    page_size = struct.unpack_from(">I", data, 8)[0]
    frames = (len(data) - 32) // (24 + page_size)
    middle = 32 + (frames // 2) * (24 + page_size)
    at = {"page": middle + 24 + 100, "salt": middle + 8, "header": 16}[where]
    data[at] ^= 1
    wal.write_bytes(data)


@pytest.mark.timeout(120)
def test_a_killed_servers_wal_replays_whole_and_says_nothing(tmp_path: Path) -> None:
    store, log = tmp_path / "q.db", tmp_path / "server.log"
    killed_with_jobs(store, log)
    assert Path(f"{store}-wal").stat().st_size > 32
    assert queued_after_start(store, log) == JOBS
    assert "damaged" not in log.read_text()
    assert not list(tmp_path.glob("*.damaged*"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["page", "salt", "header"])
def test_a_damaged_wal_is_said_and_kept_before_sqlite_drops_its_tail(
    tmp_path: Path, where: str
) -> None:
    store, log = tmp_path / "q.db", tmp_path / "server.log"
    killed_with_jobs(store, log)
    wal = Path(f"{store}-wal")
    flip(wal, where)
    damaged = wal.read_bytes()
    replayed = queued_after_start(store, log)
    said = [line for line in log.read_text().splitlines() if "is damaged" in line]
    assert len(said) == 1 and " ERROR " in said[0], said
    if where == "header":  # SQLite reads none of its frames
        assert replayed == 0
        assert "its header fails SQLite's checksum" in said[0], said
    else:  # SQLite's own rule: the frames before the damage are kept
        assert 0 < replayed < JOBS
        # One commit a job: what the line counts is what did not come back.
        assert f"{JOBS - replayed} committed transaction(s)" in said[0], said
    copy = Path(f"{wal}.damaged")
    assert f"a copy of it is kept at {copy}" in said[0], said
    assert copy.read_bytes() == damaged
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600


@pytest.mark.timeout(120)
def test_a_last_frame_whose_page_was_never_written_is_no_damage(tmp_path: Path) -> None:
    # SQLite writes a frame's header, then its page: a server killed between the two left
    # its last transaction's commit frame without its page, a transaction never committed
    # (no JOB_CREATED left for it). SQLite drops it; nothing acknowledged is lost.
    store, log = tmp_path / "q.db", tmp_path / "server.log"
    killed_with_jobs(store, log)
    wal = Path(f"{store}-wal")
    data = bytearray(wal.read_bytes())
    page_size = struct.unpack_from(">I", data, 8)[0]
    data[len(data) - page_size :] = bytes(page_size)
    wal.write_bytes(data)
    assert queued_after_start(store, log) == JOBS - 1
    assert "damaged" not in log.read_text()


@pytest.mark.timeout(120)
def test_damage_within_the_last_transaction_before_its_last_frame_is_said(
    tmp_path: Path,
) -> None:
    # Only the very last frame can be torn by a kill: a frame before it in the same
    # (committed, acknowledged) transaction that fails is damage, and was passed over.
    store, log = tmp_path / "q.db", tmp_path / "server.log"
    killed_with_jobs(store, log)
    wal = Path(f"{store}-wal")
    data = bytearray(wal.read_bytes())
    page_size = struct.unpack_from(">I", data, 8)[0]
    size = 24 + page_size
    frames = (len(data) - 32) // size
    commits = [n for n in range(frames) if struct.unpack_from(">I", data, 32 + n * size + 4)[0]]
    assert commits[-1] == frames - 1 and commits[-1] - commits[-2] >= 2, commits  # premise
    data[32 + (frames - 2) * size + 24 + 100] ^= 1  # the last transaction's frame before last
    wal.write_bytes(data)
    assert queued_after_start(store, log) == JOBS - 1
    said = [line for line in log.read_text().splitlines() if "is damaged" in line]
    assert len(said) == 1 and "1 committed transaction(s)" in said[0], said
