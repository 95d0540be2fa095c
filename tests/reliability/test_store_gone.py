"""The store's file taken away, made unwritable or full under a running server.

Found in a durability review: a store deleted or replaced while the server ran was written
on unseen (SQLite holds the old file open), so every job acknowledged since was lost at the
next stop, with no word in the log; a store made immutable was said to be on a full disk
and its reserve given back; and a failing store held the deletes of finished jobs for a
second, so a kill in that window ran them all again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from farm.protocol import PacketType as T
from farm.server import hub as hub_module
from farm.server.hub import Hub
from farm.server.jobs import JobServer, Outcome
from farm.server.options import parse_args
from farm.server.store import Batch, SQLiteStore
from tests.helpers import ROOT
from tests.helpers.disks import small_tmpfs
from tests.helpers.fakes import FakePeer
from tests.helpers.peers import Peer
from tests.helpers.rawjobs import status
from tests.helpers.servers import free_port, start_with_store, wait_connectable
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.timeout(60)


def fill(store: SQLiteStore, jobs: JobServer) -> None:
    """Submit big background jobs until a commit fails (the store's max_page_count)."""
    for _ in range(1000):
        jobs.submit(None, b"f", b"", b"x" * 20_000, background=True)
        if jobs.commit_store():
            return
    raise AssertionError("the store never filled up")


#: Five background jobs, as (unique, data), for ``submitted``.
FIVE = [(f"u{i}", f"job{i}") for i in range(5)]


def submitted(client: Peer, function: str, jobs: Iterable[tuple[str, str]]) -> None:
    """Submit background jobs of ``function``, (unique, data) each, each acknowledged
    (JOB_CREATED) before the next is sent."""
    for unique, data in jobs:
        client.send(T.SUBMIT_JOB_BG, function, unique, data)
        assert client.recv().type == T.JOB_CREATED


def says(log: Path, text: str) -> Callable[[], bool]:
    """Whether the log file holds ``text`` yet, for wait_for."""
    return lambda: text in log.read_text()


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


def test_a_store_replaced_under_the_server_refuses_and_says_so(
    server: tuple[str, Path, Path],
) -> None:
    addr, db, log = server
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "f", "before", "x")
    assert client.recv().type == T.JOB_CREATED
    # Moved aside, an empty file in its place (a restore gone wrong): not the server's to
    # write over, and a start would read that file.
    db.rename(db.with_name("q.db.old"))
    db.touch(0o600)
    # Before: JOB_CREATED, written into a file no later start reads.
    client.send(T.SUBMIT_JOB_BG, "f", "after", "x")
    answer = client.recv()
    assert answer.type == T.ERROR and answer.args[0] == b"QUEUE_ERROR", answer
    assert b"was replaced" in answer.args[1], answer
    wait_for("the log to say so", lambda: f"ERROR the job store {db}" in log.read_text())
    assert "was replaced while the server runs" in log.read_text()


def test_a_store_replaced_under_an_idle_server_is_said_without_a_submit(
    server: tuple[str, Path, Path],
) -> None:
    addr, db, log = server
    client = Peer(addr)
    client.send(T.SUBMIT_JOB_BG, "nobody", "held", "x")
    assert client.recv().type == T.JOB_CREATED
    db.rename(db.with_name("q.db.old"))
    db.touch(0o600)
    # Nothing sent since: the look while the store holds a job says it, as a commit's would.
    wait_for("the log to say so", lambda: "was replaced while the server runs" in log.read_text())
    assert f"ERROR the job store {db} cannot be written" in log.read_text()


@pytest.mark.parametrize(
    ("files", "then"),
    [(("",), "submit"), (("", "-wal", "-reserve"), "submit"), (("", "-wal"), "stop")],
)
def test_a_store_deleted_under_the_server_is_made_again_with_its_jobs(
    tmp_path: Path, files: tuple[str, ...], then: str
) -> None:
    # "stop": nothing written after the rm, the server stopped (SIGTERM) idle.
    db, log = tmp_path / "q.db", tmp_path / "server.log"
    srv = start_with_store(db, args=["-v", "-l", str(log)])
    try:
        client = Peer(srv.addr)
        submitted(client, "f", [(f"before{i}", f"before{i}") for i in range(5)])
        for side in files:  # rm q.db (and its WAL, its reserve): a cleanup gone wrong
            Path(f"{db}{side}").unlink()
        if then == "submit":
            client.send(T.SUBMIT_JOB_BG, "f", "after", "after")
            # Before: JOB_CREATED too, but written into the deleted file: lost at the restart.
            assert client.recv().type == T.JOB_CREATED
            wait_for("the log to say so", lambda: "was deleted" in log.read_text())
            assert db.exists()
    finally:
        srv.stop()
    assert f"ERROR the job store {db} was deleted" in log.read_text()
    again = SQLiteStore(db)
    try:
        kept = sorted(job.data for job in again.load())
    finally:
        again.close()
    after = [b"after"] if then == "submit" else []
    assert kept == [*after, *(b"before%d" % i for i in range(5))], "acknowledged jobs lost"


def test_a_store_deleted_under_an_idle_server_is_made_again_before_a_kill(
    tmp_path: Path,
) -> None:
    # No commit after the rm (jobs for a function no worker serves, no submit since), then a
    # SIGKILL (the OOM killer, a power cut): no look at the path came, and the next start
    # read an empty store: every acknowledged job lost. Twice: the jobs submitted, then the
    # same jobs replayed by the next start (no commit of theirs there).
    db = tmp_path / "q.db"
    for held in ("submitted", "replayed"):
        log = tmp_path / f"{held}.log"
        srv = start_with_store(db, args=["-v", "-l", str(log)])
        try:
            if held == "submitted":
                client = Peer(srv.addr)
                submitted(client, "nobody", FIVE)
            else:
                wait_for("the replay", says(log, "replayed 5 background jobs"))
            for side in ("", "-wal"):  # rm q.db*, the reserve left
                Path(f"{db}{side}").unlink()
            # Nothing sent since: the server looks at the path on its own while it holds jobs.
            wait_for("the log to say so", says(log, "was deleted while"), 5)
            assert db.exists()
            srv.proc.kill()  # SIGKILL: no stop to make it again
            srv.proc.wait()
        finally:
            srv.stop()
        again = start_with_store(db)
        try:
            assert status(Peer, again)["nobody"] == (5, 0, 0), f"{held} jobs lost"
        finally:
            again.stop()


def test_the_store_is_looked_at_only_while_it_holds_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The look is a timer of the loop: it must not wake a server holding no job, nor
    # outlive the store's last job.
    monkeypatch.setattr(hub_module, "STORE_LOOK_EVERY", 0.01)

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        hub = Hub(parse_args(["--store", str(tmp_path / "q.db")]))
        hub.loop = loop
        store, looks = hub.store, asyncio.Queue[bool]()
        assert store is not None
        write = store.write

        def seen(batch: Batch) -> None:  # the writer thread's: told to the loop
            write(batch)
            if batch.look:
                loop.call_soon_threadsafe(looks.put_nowait, batch.holds)

        monkeypatch.setattr(store, "write", seen)
        assert hub._store_look is None, "an empty store looked at"
        worker = FakePeer()
        hub.jobs.can_do(worker, b"f")
        hub.jobs.submit(None, b"f", b"", b"x", background=True)
        hub.flush()
        holds = [await asyncio.wait_for(looks.get(), 5)]  # looked at: the job is stored
        job = hub.jobs.grab(worker)
        assert job is not None and job.store_id
        hub.jobs.finish(worker, job, Outcome.COMPLETE, b"")
        hub.flush()  # its delete committed; the next look finds the store empty
        while holds[-1]:
            holds.append(await asyncio.wait_for(looks.get(), 5))
        looking = hub._store_look
        hub.close_store()
        assert looking is None, "looked at again with no job to keep"
        return holds

    holds = asyncio.run(main())
    assert holds[0] and not holds[-1], holds


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


def test_a_failing_store_deletes_finished_jobs_without_waiting_for_its_retry(
    tmp_path: Path,
) -> None:
    # A full store refuses adds for retry_after; the deletes of the jobs that finish
    # meanwhile were held as long, and a kill -9 then ran 3018 of 3019 finished jobs again.
    store = SQLiteStore(tmp_path / "q.db", retry_after=3600.0)
    jobs = JobServer(store=store, hostname="t")
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages + 40}")
    fill(store, jobs)
    assert store.broken
    stored = store.count()
    job = jobs.grab(worker)
    assert job is not None and job.store_id
    jobs.finish(worker, job, Outcome.COMPLETE, b"done")
    assert store.due, "the delete waits for the adds' retry, an hour away"
    jobs.commit_store()
    assert store.count() == stored - 1, "the delete was held, not written"
    assert store.broken, "the adds are still refused until their retry"
    store.close()


def test_a_store_that_filled_a_small_disk_takes_jobs_again_once_they_finished(
    tmp_path: Path,
) -> None:
    # A review's run on a 2 MB disk: the store filled it, every job then finished, and the
    # store still refused background jobs: SQLite keeps a database's freed pages, so the
    # file stayed as large and "four times the reserve free" never held again.
    with small_tmpfs(tmp_path / "small", "2m") as disk:
        store = SQLiteStore(disk / "q.db", retry_after=0.0)
        jobs = JobServer(store=store, hostname="t")
        worker = FakePeer()
        jobs.can_do(worker, b"f")
        fill(store, jobs)
        while (job := jobs.grab(worker)) is not None:
            jobs.finish(worker, job, Outcome.COMPLETE, b"")
            jobs.commit_store()
        assert store.count() == 0
        job = jobs.submit(None, b"f", b"", b"small", background=True)
        assert jobs.commit_store() == [], store.broken
        assert store.broken is None
        store.close()


def test_a_store_made_again_keeps_its_damaged_jobs_aside(tmp_path: Path) -> None:
    # The rows that failed their checksum are kept in damaged_jobs for the operator, never
    # run nor deleted; the store made again after an rm held its jobs alone, and those rows
    # were gone without a word (nor the start's warning that they are there).
    db, log = tmp_path / "q.db", tmp_path / "server.log"
    store = SQLiteStore(db)
    store.add(b"H:t:1", b"f", b"damaged-one", b"payload-to-be-damaged", 1, None, 0.0, True)
    store.commit()
    store.close()
    raw = bytearray(db.read_bytes())
    raw[raw.index(b"payload-to-be-damaged") + 3] ^= 0x20  # a failing disk's flipped bit
    db.write_bytes(bytes(raw))
    srv = start_with_store(db, args=["-v", "-l", str(log)])
    try:
        wait_for("the row set aside", says(log, "kept in its table damaged_jobs"))
        client = Peer(srv.addr)
        for side in ("", "-wal"):
            Path(f"{db}{side}").unlink()
        client.send(T.SUBMIT_JOB_BG, "nobody", "after", "after")
        assert client.recv().type == T.JOB_CREATED
        wait_for("the store made again", says(log, "was deleted while"))
    finally:
        srv.stop()
    with sqlite3.connect(db) as kept:
        aside = kept.execute("SELECT function, uniq FROM damaged_jobs").fetchall()
    kept.close()
    assert aside == [(b"f", b"damaged-one")], "the damaged job was dropped"
    again = start_with_store(db, args=["-l", str(tmp_path / "again.log")])
    try:
        assert status(Peer, again)["nobody"] == (1, 0, 0)
    finally:
        again.stop()
    assert "keeps 1 job aside that failed its checksum" in (tmp_path / "again.log").read_text()
