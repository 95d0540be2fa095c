"""A job's age across a restart of its server: admin `jobs` (`farm jobs`' WAITING, and the
``since`` that farm_job_queue_wait_seconds observes from) counts from when the job became
due, as on a live server, whether it was replayed due or still held for its epoch time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from farm.client.admin import server_metrics
from farm.protocol import PacketType as T
from farm.server.storecheck import row_checksum
from tests.helpers.peers import Peer
from tests.helpers.servers import start_with_store


def stored_then_restarted(db: Path, when: float, update: str, *, take: bool = False) -> str:
    """Submit one epoch job for ``when`` to a server on ``db``, stop it, rewrite its row with
    ``update`` (SQL), start a server on ``db`` again: its admin `jobs` line for the job, and,
    with ``take``, after a worker took it, the seconds farm_job_queue_wait_seconds observed."""
    srv = start_with_store(db)
    peer = Peer(srv.addr)
    peer.send(T.SUBMIT_JOB_EPOCH, "nobody-serves-this", "", str(int(when)), "x")
    peer.expect(T.JOB_CREATED)
    srv.stop()
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(update)
        # The rewrite stands for time gone by, not damage: each row's checksum follows it (an
        # epoch time changed without it is set aside, farm.server.storecheck).
        rows = conn.execute(
            "SELECT id, function, uniq, data, priority, reducer, run_at FROM jobs"
        ).fetchall()
        for row_id, *fields in rows:
            conn.execute(
                "UPDATE jobs SET checksum = ? WHERE id = ?", (row_checksum(*fields), row_id)
            )
    conn.close()
    again = start_with_store(db)
    try:
        lines = Peer(again.addr).admin("jobs").splitlines()
        line = next(row for row in lines if "nobody" in row)
        if take:
            worker = Peer(again.addr)
            worker.send(T.CAN_DO, "nobody-serves-this")
            worker.send(T.GRAB_JOB)
            worker.expect(T.JOB_ASSIGN)
            waited = sum(
                s.value
                for family in text_string_to_metric_families(server_metrics(again.addr))
                for s in family.samples
                if s.name == "farm_job_queue_wait_seconds_sum"
            )
            line += f"\t{waited}"
        return line
    finally:
        again.stop()


def test_a_replayed_job_that_was_scheduled_ahead_waits_since_its_due_time(tmp_path: Path) -> None:
    # Submitted an hour ago for 10 minutes ago: it has waited 10 minutes for a worker, as a
    # live server counts it (its push when due). Replay counted the hour: 3600.0.
    line = stored_then_restarted(
        tmp_path / "q.db",
        time.time() + 3600,
        "UPDATE jobs SET created = created - 3600, run_at = created - 600",
        take=True,
    )
    _, _, state, _, age, waited = line.split("\t")
    assert state == "queued", line
    assert 600 <= float(age) < 700, line
    assert 600 <= float(waited) < 700, line  # as the histogram counts it


def test_a_replayed_job_not_yet_due_has_no_age(tmp_path: Path) -> None:
    # Held for its epoch time it waits on no worker: age 0, as before the restart. Replay
    # aged its unset `since` (0.0) by the time since its submit, and it showed the server's
    # clock (`1551.2`).
    line = stored_then_restarted(
        tmp_path / "q.db", time.time() + 3600, "UPDATE jobs SET created = created - 60"
    )
    _, _, state, _, age = line.split("\t")
    assert state == "scheduled", line
    assert float(age) == 0.0, line


def test_replayed_jobs_are_listed_and_joined_in_the_order_they_were_submitted(
    tmp_path: Path,
) -> None:
    # Replay went by priority, then id: a high job submitted after a normal one came first
    # in `jobs` (oldest first), which the restart had made look newest.
    srv = start_with_store(tmp_path / "q.db")
    peer = Peer(srv.addr)
    for name, submit in (("x1", T.SUBMIT_JOB_BG), ("x2", T.SUBMIT_JOB_HIGH_BG)):
        peer.send(submit, "nobody-serves-this", name, "data")
        peer.expect(T.JOB_CREATED)
    before = Peer(srv.addr).admin("jobs").splitlines()
    srv.stop()
    again = start_with_store(tmp_path / "q.db")
    try:
        after = Peer(again.addr).admin("jobs").splitlines()
        worker = Peer(again.addr)
        worker.send(T.CAN_DO, "nobody-serves-this")
        worker.send(T.GRAB_JOB_UNIQ)
        first = worker.expect(T.JOB_ASSIGN_UNIQ)
    finally:
        again.stop()
    priorities = [line.split("\t")[3] for line in before[:2]]
    assert priorities == ["normal", "high"], before
    assert [line.split("\t")[3] for line in after[:2]] == priorities, after
    assert first.args.unique == b"x2", first  # the high one still runs first
