"""Every submit the server refuses with QUEUE_ERROR is counted in farm_jobs_refused_total,
and every CAN_DO it refuses in farm_worker_registrations_refused_total; the answers are
the same as before they were counted.

Found in a monitoring review: a background submit the failing store could not save, and a
submit or CAN_DO past --max-functions (or --max-tcp-abilities), were refused with
QUEUE_ERROR and counted nowhere, so an SRE alerting on refusals never heard of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm.protocol import PacketType as T
from tests.helpers.disks import small_tmpfs
from tests.helpers.peers import Peer
from tests.helpers.scraping import fresh_metrics
from tests.helpers.servers import free_port, start_farm_server, start_with_store

pytestmark = pytest.mark.timeout(60)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def refused(text: str, reason: str) -> dict[tuple[str, str], float]:
    """farm_jobs_refused_total of one reason by (function, priority)."""
    out = {}
    for (name, labels), count in samples(text).items():
        where = dict(labels)
        if name == "farm_jobs_refused_total" and where["reason"] == reason:
            out[(where["function"], where["priority"])] = count
    return out


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs the test fills, so the store's next write fails for want of room."""
    with small_tmpfs(tmp_path / "tiny", "1m") as disk:
        yield disk


def fill(disk: Path) -> None:
    """Take the disk's last free byte: the store's next commit of a large job fails."""
    room = os.statvfs(disk)
    (disk / "filler").write_bytes(b"\0" * (room.f_bavail * room.f_frsize))


def test_background_submits_the_failing_store_refused_are_counted(
    tiny_disk: Path, peer_factory: Callable[[str], Peer]
) -> None:
    srv = start_with_store(tiny_disk / "q.db", free_port())
    try:
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "f")  # labelled by its name in the metrics
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_BG, "f", "stored", "small")
        client.expect(T.JOB_CREATED)  # the store works until the disk is full
        before = refused(fresh_metrics(srv.addr), "store")
        assert before and not any(before.values()), "shown at 0 until one counts"
        fill(tiny_disk)
        # Refused at the commit (the job was made, and is forgotten) ...
        client.send(T.SUBMIT_JOB_BG, "f", "", b"x" * 200_000)
        at_commit = client.expect(T.ERROR).args
        assert at_commit[0] == b"QUEUE_ERROR" and at_commit[1].startswith(b"the job store ")
        # ... at the submit while the store is failing (or at its commit again, past a
        # second: refused the same) ...
        client.send(T.SUBMIT_JOB_HIGH_BG, "f", "", b"y" * 200_000)
        assert client.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
        # ... and joining a live foreground job: that job runs on.
        waiter = peer_factory(srv.addr)
        waiter.send(T.SUBMIT_JOB, "f", "k", "fg")
        waiter.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_BG, "f", "k", b"z" * 200_000)
        assert client.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
        text = fresh_metrics(srv.addr)
        assert {k: n for k, n in refused(text, "store").items() if n} == {
            ("f", "normal"): 2,
            ("f", "high"): 1,
        }
        # The job refused at its commit was counted submitted (docs/monitoring.md's balance);
        # those refused at the submit, or joining a job, were not.
        assert value(text, "farm_jobs_submitted_total", function="f", priority="normal") == 3
        assert value(text, "farm_jobs_submitted_total", function="f", priority="high") == 0
    finally:
        srv.stop()


def test_a_store_refusal_counts_under_the_refused_submits_priority(
    tiny_disk: Path, peer_factory: Callable[[str], Peer]
) -> None:
    """A background submit joining a job of another priority is counted under its own, as
    the submit refused: at the commit that fails, as at a submit while the store fails.
    (Found in review: the commit's refusal was counted under the job's priority.)"""
    srv = start_with_store(tiny_disk / "q.db", free_port())
    try:
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "f")  # labelled by its name; it never grabs, so jobs wait
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_BG, "f", "stored", "small")
        client.expect(T.JOB_CREATED)  # the store is made, and works until the disk is full
        fill(tiny_disk)
        waiter = peer_factory(srv.addr)
        # A foreground job is not stored: the low background submit joining it stages it,
        # and the commit finds no room for its data ...
        waiter.send(T.SUBMIT_JOB_HIGH, "f", "k1", b"x" * 200_000)
        waiter.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_LOW_BG, "f", "k1", "")
        at_commit = client.expect(T.ERROR).args
        assert at_commit[0] == b"QUEUE_ERROR" and at_commit[1].startswith(b"the job store ")
        # ... and the store, failing now, refuses the next one at its submit.
        waiter.send(T.SUBMIT_JOB_HIGH, "f", "k2", b"y" * 200_000)
        waiter.expect(T.JOB_CREATED)
        client.send(T.SUBMIT_JOB_LOW_BG, "f", "k2", "")
        assert client.expect(T.ERROR).args[0] == b"QUEUE_ERROR"
        text = fresh_metrics(srv.addr)
        assert {k: n for k, n in refused(text, "store").items() if n} == {("f", "low"): 2}
        assert value(text, "farm_jobs_submitted_total", function="f", priority="high") == 2
    finally:
        srv.stop()


def test_submits_and_can_dos_past_the_servers_limits_are_counted(
    peer_factory: Callable[[str], Peer],
) -> None:
    srv = start_farm_server("--max-functions", "3", "--max-tcp-abilities", "2")
    try:
        text = fresh_metrics(srv.addr)
        for reason in ("max_functions", "max_tcp_abilities"):
            assert ("farm_worker_registrations_refused_total", (("reason", reason),)) in samples(
                text
            )
        worker = peer_factory(srv.addr)
        worker.send(T.CAN_DO, "a")
        worker.send(T.CAN_DO, "b")
        worker.send(T.CAN_DO, "c")  # TCP workers' registrations are full
        assert worker.expect(T.ERROR).args == (
            b"QUEUE_ERROR",
            b"the server holds --max-tcp-abilities TCP workers' functions",
        )
        client = peer_factory(srv.addr)
        client.send(T.SUBMIT_JOB_BG, "c", "", "x")  # the third function
        client.expect(T.JOB_CREATED)
        too_many = (b"QUEUE_ERROR", b"the server holds --max-functions functions")
        client.send(T.SUBMIT_JOB_LOW, "d", "", "x")
        assert client.expect(T.ERROR).args == too_many
        # A new reducer's name gets no entry (it travels with the job): not refused.
        client.send(T.SUBMIT_REDUCE_JOB_BACKGROUND, "c", "", "e", "", "x")
        client.expect(T.JOB_CREATED)
        worker.send(T.CAN_DO, "e")
        assert worker.expect(T.ERROR).args == too_many
        text = fresh_metrics(srv.addr)
        # Under other only, at every priority: the function has no entry to be labelled by.
        assert refused(text, "max_functions") == {
            ("other", "high"): 0,
            ("other", "normal"): 0,
            ("other", "low"): 1,
        }
        for reason in ("max_functions", "max_tcp_abilities"):
            got = value(text, "farm_worker_registrations_refused_total", reason=reason)
            assert got == 1, reason
    finally:
        srv.stop()
