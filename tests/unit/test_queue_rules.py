"""The queues' rules a mutant of them broke unseen: maxqueue's TCP share, the deque's sweep,
a taken-back push's place, an epoch job's release at its time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from farm.server.jobs import JobServer, QueueFull
from tests.helpers.fakes import FakeClock, FakePeer


def test_a_server_without_a_unix_socket_lets_tcp_fill_the_whole_maxqueue() -> None:
    # The quarter kept back is the Unix socket's: with none (gearmand's way, `farm server`
    # on TCP alone) nobody else could use it, and `maxqueue f 4` would take 3.
    jobs = JobServer(hostname="t", max_queue=4)
    for i in range(4):
        jobs.submit(None, b"f", b"%d" % i, b"x", background=True, tcp=True)
    with pytest.raises(QueueFull, match="is at its maxqueue$"):
        jobs.submit(None, b"f", b"past", b"x", background=True, tcp=True)


def test_tcps_share_of_a_maxqueue_is_three_quarters_of_it() -> None:
    # 9 of 12 (with 8 of 8, a third and a quarter kept back come to the same 6).
    jobs = JobServer(hostname="t", max_queue=12)
    jobs.unix_share = True
    for i in range(9):
        jobs.submit(None, b"f", b"%d" % i, b"x", background=True, tcp=True)
    with pytest.raises(QueueFull, match="TCP peers' jobs hold their 3/4 of it"):
        jobs.submit(None, b"f", b"past", b"x", background=True, tcp=True)


def test_jobs_dropped_behind_a_live_one_do_not_pile_up_in_the_deque() -> None:
    # A live job at the head keeps the deque from being cleared: its dead entries (the jobs
    # of clients gone) are swept once they outnumber the live ones, or each client that
    # submits and leaves would hold its jobs' memory for as long as that job waits.
    jobs = JobServer(hostname="t")
    jobs.submit(None, b"f", b"", b"stays", background=True)
    client = FakePeer()
    for _ in range(1000):
        jobs.submit(client, b"f", b"", b"x")
    jobs.detach_client(client)
    fq = jobs.functions[b"f"]
    assert fq.counts == [0, 1, 0] and sum(len(q) for q in fq.queues) <= 2 + 64 + 1


def test_a_push_taken_back_goes_ahead_of_the_jobs_that_came_after_it() -> None:
    # A job pushed to a held grab that was not accepted in time never started: it keeps its
    # place at the head of its queue, not behind the jobs submitted while it was out.
    jobs = JobServer(hostname="t")
    late, other = FakePeer(), FakePeer()
    jobs.can_do(late, b"f")
    jobs.can_do(other, b"f")
    pushed = jobs.submit(None, b"f", b"", b"first", background=True)
    assert jobs.grab(late) is pushed  # as the push to its held grab
    jobs.submit(None, b"f", b"", b"second", background=True)
    assert jobs.take_back(late, pushed)
    assert jobs.grab(other) is pushed


def test_an_epoch_job_is_queued_when_its_timer_fires_at_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Due at its time, not a recheck later: the timer armed for that very time releases it.
    wall = [1_000_000.0]
    fake_time = SimpleNamespace(time=lambda: wall[0], monotonic=time.monotonic)
    for module in ("jobs", "dispatch"):
        monkeypatch.setattr(f"farm.server.{module}.time", fake_time)
    clock = FakeClock()
    jobs = JobServer(hostname="t", call_later=clock.call_later)
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    job = jobs.submit(None, b"f", b"", b"x", background=True, when=wall[0] + 0.5)
    assert not job.queued and jobs.grab(worker) is None
    jobs.pre_sleep(worker)
    (timer,) = clock.timers
    assert timer.when == 0.5  # armed for its time
    wall[0] += 0.5
    timer.callback()
    assert job.queued and worker.told == [("wake",)]
    assert jobs.grab(worker) is job
