"""Durable background jobs: on disk before JOB_CREATED, replayed after a crash, gone when done."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server.store import SQLiteStore, StoreError
from tests.helpers import ROOT
from tests.helpers.peers import Peer, grab_all
from tests.helpers.servers import free_port, start_gearmand, start_with_store
from tests.helpers.waiting import wait_for


def submit_bg(peer: Peer, n: int, ptype: int = T.SUBMIT_JOB_BG, prefix: str = "u") -> list[bytes]:
    for i in range(n):
        peer.send(ptype, "f", f"{prefix}{i}", f"data{i}")
    return [peer.expect(T.JOB_CREATED).args[0] for _ in range(n)]


def test_every_created_job_survives_kill_9_and_replays_in_priority_order(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    client = Peer(srv.addr)
    submit_bg(client, 5, T.SUBMIT_JOB_LOW_BG, "low")
    submit_bg(client, 5, T.SUBMIT_JOB_BG, "normal")
    submit_bg(client, 5, T.SUBMIT_JOB_HIGH_BG, "high")
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait()

    srv = start_with_store(db, srv.port)
    try:
        admin = Peer(srv.addr)
        assert admin.admin("status") == "f\t15\t0\t0\n.\n"
        jobs = admin.admin("show jobs").splitlines()[:-1]
        assert len(jobs) == 15 and all(line.endswith("\t1") for line in jobs)  # persisted
        got = grab_all(srv.addr)
        assert [u for u, _ in got] == [
            *(f"high{i}".encode() for i in range(5)),
            *(f"normal{i}".encode() for i in range(5)),
            *(f"low{i}".encode() for i in range(5)),
        ]
        assert got[0][1] == b"data0"
    finally:
        srv.stop()
    # Completed jobs are deleted: a third start replays nothing.
    srv = start_with_store(db, srv.port)
    try:
        assert Peer(srv.addr).admin("status") == ".\n"
    finally:
        srv.stop()


def test_epoch_time_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB_EPOCH, "f", "later", str(int(time.time()) + 3600), "x")
    client.expect(T.JOB_CREATED)
    srv.stop()
    srv = start_with_store(db, srv.port)
    try:
        assert Peer(srv.addr).admin("status") == "f\t1\t0\t0\n.\n"
        assert grab_all(srv.addr) == []  # still held for its time
    finally:
        srv.stop()


def test_sigterm_keeps_queued_background_jobs(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    submit_bg(Peer(srv.addr), 3)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(10) == 0
    srv = start_with_store(db, srv.port)
    try:
        assert len(grab_all(srv.addr)) == 3
    finally:
        srv.stop()


def test_a_job_whose_bytes_changed_on_disk_reaches_no_worker(tmp_path: Path) -> None:
    # SQLite keeps no checksum of a row: a byte flipped in the file (a failing disk, a bad
    # copy) was replayed as it was, and a worker ran garbage. The job is said and kept aside.
    db, log = tmp_path / "queue.db", tmp_path / "server.log"
    srv = start_with_store(db)
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB_BG, "f", "damaged", "payload-damaged-on-disk")
    client.send(T.SUBMIT_JOB_BG, "f", "whole", "payload-kept-whole")
    client.expect(T.JOB_CREATED)
    client.expect(T.JOB_CREATED)
    srv.proc.send_signal(signal.SIGTERM)  # the WAL copied into the file, and removed
    assert srv.proc.wait(10) == 0
    raw = bytearray(db.read_bytes())
    raw[raw.index(b"payload-damaged-on-disk") + 8] ^= 0x01  # 'd' becomes 'e'
    db.write_bytes(bytes(raw))
    srv = start_with_store(db, srv.port, ["-l", str(log)])
    try:
        assert grab_all(srv.addr) == [(b"whole", b"payload-kept-whole")]
    finally:
        srv.stop()
    said = log.read_text()
    assert said.count("fails its checksum") == 1 and "b'damaged'" in said
    with sqlite3.connect(db) as kept:
        rows = kept.execute("SELECT uniq, data FROM damaged_jobs").fetchall()
    kept.close()
    assert rows == [(b"damaged", b"payload-eamaged-on-disk")]


def test_the_documented_backup_of_the_store_holds_every_job(tmp_path: Path) -> None:
    # Found in a durability hunt: the damaged-store line says "restore it from a backup",
    # and nothing said how to make one. The server holds its store locked (sqlite3's
    # .backup waits on it for ever), and a copy of the file made while it runs missed
    # the jobs still in its WAL: a small store's copy had no jobs table at all.
    import shutil
    import sqlite3

    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("### Backing up the job store") :]
    assert "`-wal`" in section[: section.index("\n## ")]
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    submit_bg(Peer(srv.addr), 5)
    with pytest.raises(sqlite3.OperationalError, match="locked"):  # as the docs say
        sqlite3.connect(db, timeout=0).execute("SELECT COUNT(*) FROM jobs").fetchone()
    srv.proc.send_signal(signal.SIGTERM)  # what farm stop does to its server
    assert srv.proc.wait(10) == 0
    assert not Path(f"{db}-wal").exists()  # the file alone is the whole store
    copy = tmp_path / "backup" / "queue.db"
    copy.parent.mkdir()
    shutil.copy(db, copy)
    srv = start_with_store(copy)
    try:
        assert len(grab_all(srv.addr)) == 5
    finally:
        srv.stop()


def test_a_second_server_cannot_share_a_store(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    try:
        beside = sorted(p.name for p in tmp_path.iterdir())
        cmd = [sys.executable, "-m", "farm.server", "--port", str(free_port()), "--store", str(db)]
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert out.returncode == 2
        assert "in use by another server" in out.stderr
        assert "Traceback" not in out.stderr
        # The -journal it made before SQLite's open said so removed: it left one beside the
        # running server's store.
        assert sorted(p.name for p in tmp_path.iterdir()) == beside
        # That it does not wait SQLite's 5 s busy timeout first is the next test's: a
        # process start's time on a loaded machine would make a bound here flaky.
    finally:
        srv.stop()


def test_a_store_held_by_another_server_is_refused_at_once(tmp_path: Path) -> None:
    db = tmp_path / "queue.db"
    srv = start_with_store(db)
    try:
        began = time.monotonic()
        with pytest.raises(StoreError, match="in use by another server"):
            SQLiteStore(db)
        # OPEN_WAIT (0.2 s), not SQLite's 5 s busy timeout: a bound far from both.
        assert time.monotonic() - began < 4.0
    finally:
        srv.stop()
    # The server that holds it keeps SQLite's patience for its own writes.
    store = SQLiteStore(db)
    try:
        assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        store.close()


def test_an_unopenable_store_is_one_clear_line(tmp_path: Path) -> None:
    not_a_file = tmp_path / "dir.db"
    not_a_file.mkdir()
    cmd = [
        sys.executable,
        "-m",
        "farm.server",
        "--port",
        str(free_port()),
        "--store",
        str(not_a_file),
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "cannot open the job store" in out.stderr and "Traceback" not in out.stderr


def test_a_replayed_job_keeps_its_age(tmp_path: Path) -> None:
    # `farm jobs` (admin `jobs`) showed a job queued for an hour as a few seconds old after
    # a restart: the store kept no submit time.
    import sqlite3

    db = tmp_path / "q.db"
    srv = start_with_store(db)
    peer = Peer(srv.addr)
    peer.send(T.SUBMIT_JOB_BG, "nobody-serves-this", "", "x")
    peer.expect(T.JOB_CREATED)
    srv.stop()
    conn = sqlite3.connect(db)
    with conn:  # as if it had been submitted an hour ago
        conn.execute("UPDATE jobs SET created = created - 3600")
    conn.close()
    again = start_with_store(db)
    try:
        line = next(row for row in Peer(again.addr).admin("jobs").splitlines() if "nobody" in row)
        age = float(line.split("\t")[-1])
        assert 3600 <= age < 3700, line
    finally:
        again.stop()


def test_a_store_of_an_older_farm_gains_the_column_and_keeps_its_jobs(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    with conn:  # the table as farm made it before December 2026
        conn.execute(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, function BLOB NOT NULL, uniq BLOB NOT"
            " NULL, data BLOB NOT NULL, priority INTEGER NOT NULL, reducer BLOB,"
            " run_at REAL NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO jobs VALUES (1, x'6f6c64', x'', x'78', 1, NULL, 0)")
    conn.close()
    srv = start_with_store(db)
    try:
        assert "old\t1\t0\t0" in Peer(srv.addr).admin("status")
    finally:
        srv.stop()


def _die_holding(addr: str, retries: int) -> None:
    """A raw worker takes the job of "f" and drops its connection, as a crash would; back
    once the server counted that death (``retries`` in `show jobs`)."""
    worker = Peer(addr)
    worker.send(T.CAN_DO, "f")
    worker.send(T.GRAB_JOB)
    worker.expect(T.JOB_ASSIGN)
    worker.close()
    admin = Peer(addr)
    wait_for(
        f"the death to count ({retries})",
        lambda: f"\t{retries}\t0\t1\n" in admin.admin("show jobs"),
    )
    admin.close()


def test_a_poison_job_gets_no_new_tries_from_a_restart(tmp_path: Path) -> None:
    # The count of worker deaths lived in memory only: after each restart a job that kills
    # its worker had job_retries more runs (each with its side effects).
    db = tmp_path / "q.db"
    srv = start_with_store(db, args=["-j", "3"])
    client = Peer(srv.addr)
    client.send(T.SUBMIT_JOB_BG, "f", "poison", "x")
    client.expect(T.JOB_CREATED)
    try:
        _die_holding(srv.addr, 1)
        _die_holding(srv.addr, 2)
        # Commits run beside the loop: a background submit's JOB_CREATED waits for the commit
        # of its row, and so of everything staged before it (the count).
        client.send(T.SUBMIT_JOB_BG, "mark", "", "x")
        client.expect(T.JOB_CREATED)
    finally:
        srv.proc.send_signal(signal.SIGKILL)
        srv.proc.wait()
    srv = start_with_store(db, srv.port, args=["-j", "3"])
    try:
        admin = Peer(srv.addr)
        assert admin.admin("drop function mark").startswith("OK")
        assert "\t2\t0\t1\n" in admin.admin("show jobs"), "the deaths before were forgotten"
        worker = Peer(srv.addr)
        worker.send(T.CAN_DO, "f")
        worker.send(T.GRAB_JOB)
        worker.expect(T.JOB_ASSIGN)
        worker.close()  # the third death: -j 3 allows no other run
        listed = wait_for("a poison job", lambda: admin.admin("show poison jobs") != ".\n")
        assert listed and "\tf\tpoison\n" in admin.admin("show poison jobs")
        assert admin.admin("show jobs") == ".\n"
    finally:
        srv.stop()


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_a_submit_then_a_half_close_gets_its_job_created(
    tmp_path: Path, unix_sock: str, over: str
) -> None:
    """`printf ... | nc -N`: the submit, then the client's side shut down. The store's
    commit runs in a thread, so the EOF came before it was done, and asyncio's close at the
    EOF dropped the held JOB_CREATED of every such submit (20 of 20) while its job ran."""
    srv = start_with_store(tmp_path / "queue.db", args=["--unix", unix_sock])
    try:
        addr = srv.addr if over == "tcp" else f"unix:{unix_sock}"
        handles = []
        for i in range(20):
            client = Peer(addr)
            client.send(T.SUBMIT_JOB_BG, "f", f"u{i}", "x")
            client.sock.shutdown(socket.SHUT_WR)
            handles.append(client.expect(T.JOB_CREATED).args[0])
            assert client.closed_within(5)
        assert len(set(handles)) == 20
        assert Peer(srv.addr).admin("status") == "f\t20\t0\t0\n.\n"
    finally:
        srv.stop()


def test_jobs_queued_by_gearmand_in_its_libsqlite3_file_are_taken_over(tmp_path: Path) -> None:
    """farm starts on gearmand's command line (`-q libsqlite3 --libsqlite3-db FILE`), but
    kept its own table in FILE: the jobs gearmand had queued there were stranded, and the
    server said nothing. They are moved into farm's table, in gearmand's order."""
    import sqlite3

    db = tmp_path / "gearman.db"
    gearmand = start_gearmand("-q", "libsqlite3", f"--libsqlite3-db={db}")
    try:
        client = Peer(gearmand.addr)
        submit_bg(client, 2, T.SUBMIT_JOB_LOW_BG, "low")
        submit_bg(client, 2, T.SUBMIT_JOB_BG, "normal")
        submit_bg(client, 2, T.SUBMIT_JOB_HIGH_BG, "high")
        client.send(T.SUBMIT_JOB_EPOCH, "f", "later", str(int(time.time()) + 3600), "x")
        client.expect(T.JOB_CREATED)
        client.close()
    finally:
        gearmand.stop()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM gearman_queue").fetchone()[0] == 7
    conn.close()

    srv = start_with_store(db)
    try:
        admin = Peer(srv.addr)
        assert admin.admin("status") == "f\t7\t0\t0\n.\n"
        got = grab_all(srv.addr)
        assert [u for u, _ in got] == [b"high0", b"high1", b"normal0", b"normal1", b"low0", b"low1"]
        assert got[0][1] == b"data0"
        # A TCP client's submit of the same unique joins it, as it would have in gearmand.
        client = Peer(srv.addr)
        client.send(T.SUBMIT_JOB_BG, "f", "later", "x")
        client.expect(T.JOB_CREATED)
        assert admin.admin("status") == "f\t1\t0\t0\n.\n"
    finally:
        srv.stop()
    # Moved, not copied: the next start does not queue them again.
    srv = start_with_store(db)
    try:
        assert Peer(srv.addr).admin("status") == "f\t1\t0\t0\n.\n"
    finally:
        srv.stop()


def test_what_farm_cannot_take_from_a_gearmand_shaped_table_stays_and_the_server_starts(
    tmp_path: Path,
) -> None:
    """A row of no priority is taken as normal (it was refused as a damaged store, and the
    server did not start); farm.* rows, the Executor's signed calls, are never taken; a
    table of gearmand's shape farm cannot read (WITHOUT ROWID) is left with a warning."""
    import sqlite3

    db = tmp_path / "gearman.db"
    conn = sqlite3.connect(db)
    columns = "unique_key TEXT, function_name TEXT, priority INTEGER, data BLOB"
    conn.execute(f"CREATE TABLE gearman_queue ({columns}, PRIMARY KEY (unique_key, function_name))")
    conn.execute("INSERT INTO gearman_queue VALUES ('u1', 'f', NULL, x'31')")
    conn.execute("INSERT INTO gearman_queue VALUES ('u2', 'farm.python', 1, x'32')")
    conn.execute(
        f"CREATE TABLE odd ({columns}, PRIMARY KEY (unique_key, function_name)) WITHOUT ROWID"
    )
    conn.execute("INSERT INTO odd VALUES ('u3', 'g', 1, x'33')")
    conn.commit()
    conn.close()
    srv = start_with_store(db)
    try:
        assert Peer(srv.addr).admin("status") == "f\t1\t0\t0\n.\n"
        assert grab_all(srv.addr) == [(b"u1", b"1")]
    finally:
        srv.stop()
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT unique_key FROM gearman_queue").fetchall() == [("u2",)]
    assert conn.execute("SELECT unique_key FROM odd").fetchall() == [("u3",)]
    conn.close()
