"""Edge cases of the job model, driven without sockets (each one a bug found in review)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from farm.server.jobs import JOB_OVERHEAD, JobServer, Outcome, QueueFull
from farm.server.store import SQLiteStore
from farm.server.storefile import StoreError
from tests.helpers.fakes import FakeClock, FakePeer


def test_replay_ignores_queue_limits_so_a_restart_cannot_fail(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")  # stored before the limit was lowered to 2
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    for i in range(3):  # one grabbed (running), two queued
        jobs.submit(None, b"f", b"u%d" % i, b"x", background=True)
        if i == 0:
            jobs.commit_store()  # a worker gets it once its row is written
            assert jobs.grab(worker) is not None
    jobs.commit_store()
    store.close()
    again = JobServer(store=SQLiteStore(tmp_path / "q.db"), hostname="t", max_queue=2)
    assert again.replay() == 3


@pytest.mark.parametrize("host", ["t", "h" * 100, "é" * 40])
def test_handles_fit_the_64_bytes_clients_keep_and_differ_between_servers(host: str) -> None:
    # libgearman keeps a handle in 64 bytes with its NUL; numbers start at random, so that a
    # restarted server never repeats an earlier one's handles (the Executor's replay guard)
    first, second = JobServer(hostname=host), JobServer(hostname=host)
    handles = [
        jobs.submit(None, b"f", b"", b"x", background=True).handle for jobs in (first, second)
    ]
    assert handles[0] != handles[1]
    assert all(len(h) <= 63 and h.startswith(b"H:") for h in handles), handles
    assert len(first.prefix) + 20 <= 63  # as far as the counter can go
    first.prefix.decode()  # not cut inside a character


def test_discarded_jobs_do_not_pile_up_in_the_deque() -> None:
    jobs = JobServer(hostname="t")
    client = FakePeer()
    for _ in range(1000):
        jobs.submit(client, b"f", b"", b"x" * 1024)
    jobs.detach_client(client)
    fq = jobs.functions[b"f"]
    assert fq.counts == [0, 0, 0] and not jobs.jobs and jobs.queued.held == 0
    assert sum(len(q) for q in fq.queues) == 0


def test_cancelled_epoch_job_leaves_the_heap() -> None:
    import time

    jobs = JobServer(hostname="t")
    job = jobs.submit(None, b"f", b"", b"x", background=True, when=time.time() + 3600)
    assert jobs.functions[b"f"].queued == 1
    assert jobs.cancel(job.handle)
    assert jobs.epoch_heap == [] and jobs.functions[b"f"].queued == 0


def test_failed_commit_keeps_a_job_foreground_clients_wait_on(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t")
    client = FakePeer()
    job = jobs.submit(client, b"f", b"k", b"x")
    jobs.submit(None, b"f", b"k", b"x", background=True)  # joins, stages a row
    store.db.close()
    assert jobs.commit_store() == [job.handle]
    jobs.unstore(job.handle)
    assert job.handle in jobs.jobs and not job.background and job.clients == {client: 1}


def test_a_dying_worker_wakes_a_live_sleeper_not_itself() -> None:
    jobs = JobServer(hostname="t")
    dying, sleeper = FakePeer(), FakePeer()
    jobs.can_do(dying, b"f")
    jobs.can_do(sleeper, b"f")
    jobs.submit(None, b"f", b"", b"x", background=True)
    assert jobs.grab(dying) is not None
    jobs.pre_sleep(dying)
    jobs.pre_sleep(sleeper)
    jobs.detach_worker(dying)
    assert sleeper.told == [("wake",)]


def test_a_lost_workers_job_goes_back_behind_a_newer_job_of_another_function() -> None:
    # Requeued with a new sequence number (last of its priority, as gearmand does): with its
    # old one, a job that kills each worker that runs it came first again across functions.
    jobs = JobServer(hostname="t")
    dying, worker = FakePeer(), FakePeer()
    jobs.can_do(dying, b"f")
    for name in (b"f", b"g"):
        jobs.can_do(worker, name)
    jobs.submit(None, b"f", b"", b"crash", background=True)
    crashing = jobs.grab(dying)
    assert crashing is not None and crashing.data == b"crash"
    jobs.submit(None, b"g", b"", b"newer", background=True)
    jobs.detach_worker(dying)  # the crashing job is queued again
    newer = jobs.grab(worker)
    assert newer is not None and newer.data == b"newer"


def test_graceful_stop_fires_when_the_last_running_job_is_requeued() -> None:
    jobs = JobServer(hostname="t")
    fired: list[bool] = []
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    jobs.submit(None, b"f", b"", b"x", background=True)
    jobs.grab(worker)
    jobs.on_idle = lambda: fired.append(True)
    jobs.detach_worker(worker)
    assert fired


def test_graceful_stop_fires_when_the_last_running_job_is_a_push_taken_back() -> None:
    # Pushed to a held grab and not accepted within --wake-deadline: it goes back to its
    # queue, and nothing runs. SIGUSR1 waited for it for ever ("graceful stop ... waiting
    # for running jobs", the server still up with no job running).
    jobs = JobServer(hostname="t")
    fired: list[bool] = []
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    jobs.submit(None, b"f", b"", b"x", background=True)
    job = jobs.grab(worker)
    assert job is not None
    jobs.on_idle = lambda: fired.append(True)
    assert jobs.take_back(worker, job)  # type: ignore[arg-type]  # a push not accepted
    assert fired


def test_a_connection_running_its_own_job_is_not_a_worker_death() -> None:
    jobs = JobServer(hostname="t", job_retries=1)
    both = FakePeer()
    jobs.can_do(both, b"f")
    jobs.submit(both, b"f", b"", b"x")
    jobs.grab(both)
    jobs.detach_client(both)  # the order Connection.detach uses
    jobs.detach_worker(both)
    assert not jobs.poison and not jobs.jobs


def test_stopping_server_does_not_count_retries() -> None:
    jobs = JobServer(hostname="t", job_retries=1)
    worker = FakePeer()
    jobs.can_do(worker, b"f")
    job = jobs.submit(None, b"f", b"", b"x", background=True)
    jobs.grab(worker)
    jobs.stopping = True
    jobs.detach_worker(worker)
    assert not jobs.poison and job.retries == 0


def test_status_unique_survives_a_twin_in_another_function() -> None:
    jobs = JobServer(hostname="t")
    first = jobs.submit(None, b"f", b"same", b"x", background=True)
    twin = jobs.submit(None, b"g", b"same", b"x", background=True)
    jobs.cancel(twin.handle)
    assert list(jobs.by_unique[b"same"]) == [first]


def test_queued_bytes_count_every_argument_not_only_the_payload() -> None:
    jobs = JobServer(hostname="t", max_queued_bytes=1000 + 2 * JOB_OVERHEAD)
    long_name = b"f" * 450
    first = jobs.submit(None, long_name, b"u" * 40, b"x" * 10, background=True)
    assert jobs.queued.held == 500 + JOB_OVERHEAD
    with pytest.raises(QueueFull):
        jobs.submit(None, long_name + b"2", b"", b"y" * 60, background=True)  # 511 more
    jobs.cancel(first.handle)
    assert jobs.queued.held == 0


def test_empty_jobs_meet_the_bytes_limit_too() -> None:
    # A flood of empty background jobs held the server's memory (about 460 bytes each)
    # while counting as nothing against --max-queued-bytes.
    jobs = JobServer(hostname="t", max_queued_bytes=100 * JOB_OVERHEAD)
    with pytest.raises(QueueFull):
        for _ in range(101):
            jobs.submit(None, b"z", b"", b"", background=True)
    assert len(jobs.jobs) == 99


def test_can_do_timeouts_share_a_timer_per_length_and_fail_only_the_overdue_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from farm.server.dispatch import MAX_TIMEOUT_LENGTHS

    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later)
    client, slow, quick = FakePeer(), FakePeer(), FakePeer()
    for worker in (slow, quick):
        jobs.can_do(worker, b"f", timeout=2.0)
    first = jobs.submit(client, b"f", b"", b"1")
    second = jobs.submit(client, b"f", b"", b"2")
    assert jobs.grab(slow) is first and jobs.grab(quick) is second
    assert len(clock.timers) == 1, "two jobs, one timer"
    clock.advance(1.0)
    jobs.finish(quick, second, Outcome.COMPLETE, b"done")  # in time: never fails
    clock.advance(5.0)
    assert [t[1:3] for t in client.told] == [
        (second.handle, Outcome.COMPLETE),
        (first.handle, Outcome.FAIL),
    ]
    # Any number of different timeouts keeps few idle ones around.
    for n in range(3 * MAX_TIMEOUT_LENGTHS):
        jobs.can_do(slow, b"g", timeout=10.0 + n)
        job = jobs.submit(client, b"g", b"", b"x")
        assert jobs.grab(slow) is job
        jobs.finish(slow, job, Outcome.COMPLETE, b"")
    assert len(jobs.timeouts) <= MAX_TIMEOUT_LENGTHS + 1
    live = [t for t in clock.timers if not t.cancelled]
    assert len(live) <= MAX_TIMEOUT_LENGTHS + 1, "a dropped length's timer is cancelled"


def test_jobs_over_tcp_may_hold_three_quarters_of_the_queued_bytes() -> None:
    # The rest is the Unix socket's: the farm's own callers are not shut out by a local
    # user filling the queue. Replayed jobs (their origin is not stored) count as TCP's.
    size = JOB_OVERHEAD + 1  # an empty job of "f"
    jobs = JobServer(hostname="t", max_queued_bytes=8 * size)
    for _ in range(6):
        jobs.submit(None, b"f", b"", b"", background=True, tcp=True)
    with pytest.raises(QueueFull, match="TCP peers' jobs would pass their share"):
        jobs.submit(None, b"f", b"", b"", background=True, tcp=True)
    jobs.submit(None, b"f", b"", b"", background=True)
    jobs.submit(None, b"f", b"", b"", background=True)
    with pytest.raises(QueueFull, match="would pass --max-queued-bytes"):
        jobs.submit(None, b"f", b"", b"", background=True)
    assert jobs.queued.held == 8 * size and jobs.queued.tcp_held == 6 * size
    for job in list(jobs.jobs.values()):
        jobs._forget(job)
    assert (jobs.queued.held, jobs.queued.tcp_held) == (0, 0)
    jobs.submit(None, b"f", b"", b"", background=True, store_id=7)  # replayed
    assert jobs.queued.tcp_held == size


def asleep(jobs: JobServer, *workers: FakePeer) -> None:
    """Each worker registers ``f`` and goes to sleep, in this order (the last is newest)."""
    for worker in workers:
        jobs.can_do(worker, b"f")
        jobs.pre_sleep(worker)


def test_a_job_wakes_the_sleeper_that_went_to_sleep_last() -> None:
    # The warmest process: with the longest-idle one woken instead, every call of a
    # sequential caller went to a cold worker (on 16 cores, single calls took 1.5x as long).
    jobs = JobServer(hostname="t")
    workers = [FakePeer() for _ in range(3)]
    asleep(jobs, *workers)
    last = workers[-1]
    for _ in range(3):  # it comes back, runs the job, sleeps again: woken every time
        jobs.submit(None, b"f", b"", b"x", background=True)
        assert [w.told for w in workers] == [[], [], [("wake",)]]
        job = jobs.grab(last)
        assert job is not None
        jobs.finish(last, job, Outcome.COMPLETE)
        jobs.pre_sleep(last)
        last.told.clear()


def test_a_sleeper_late_for_its_wake_up_is_woken_last_until_it_comes_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The newest sleeper is woken first. One that answered a wake-up only past the deadline
    # and slept again was the newest, so every job woke it first and waited the deadline out.
    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later, wake_deadline=0.5)
    healthy, slow = FakePeer(), FakePeer()
    asleep(jobs, healthy, slow)
    jobs.submit(None, b"f", b"", b"1", background=True)
    assert slow.told == [("wake",)] and healthy.told == []
    clock.advance(0.6)  # it does not come: the other one is woken
    assert healthy.told == [("wake",)]
    job = jobs.grab(healthy)
    assert job is not None
    jobs.finish(healthy, job, Outcome.COMPLETE)
    jobs.pre_sleep(healthy)
    assert jobs.grab(slow) is None  # it comes at last, finds nothing, sleeps again
    jobs.pre_sleep(slow)
    slow.told.clear()
    healthy.told.clear()
    jobs.submit(None, b"f", b"", b"2", background=True)
    assert (healthy.told, slow.told) == ([("wake",)], []), "the late one is woken last"
    # Woken while the other runs that job, it comes in time: the newest is first again.
    jobs.submit(None, b"f", b"", b"3", background=True)
    assert slow.told == [("wake",)]
    for worker in (healthy, slow):
        job = jobs.grab(worker)
        assert job is not None
        jobs.finish(worker, job, Outcome.COMPLETE)
    jobs.pre_sleep(healthy)
    jobs.pre_sleep(slow)
    slow.told.clear()
    healthy.told.clear()
    jobs.submit(None, b"f", b"", b"4", background=True)
    assert (healthy.told, slow.told) == ([], [("wake",)])


@pytest.mark.parametrize(
    "leave",
    [
        lambda jobs, worker: jobs.detach_worker(worker),  # its connection is gone
        # CANT_DO (or RESET_ABILITIES) before it grabs: the job waited out the wake deadline
        lambda jobs, worker: jobs.cant_do(worker, b"f"),
        # `drain` (farm's admin command) of a worker woken and not come yet
        lambda jobs, worker: jobs.drain(worker),
    ],
    ids=["disconnects", "gives-up-the-function", "is-drained"],
)
def test_a_woken_worker_that_will_not_come_passes_its_wake_up_on(
    leave: Callable[[JobServer, FakePeer], None],
) -> None:
    jobs = JobServer(hostname="t")  # no timers: nothing but ``leave`` may wake the other
    old, new = FakePeer(), FakePeer()
    asleep(jobs, old, new)
    jobs.submit(None, b"f", b"", b"x", background=True)
    assert new.told == [("wake",)] and old.told == []
    leave(jobs, new)
    assert old.told == [("wake",)]


def test_a_repeated_pre_sleep_makes_the_worker_the_newest_sleeper() -> None:
    jobs = JobServer(hostname="t")
    first, second = FakePeer(), FakePeer()
    asleep(jobs, first, second)
    jobs.pre_sleep(first)  # it went to sleep last
    jobs.submit(None, b"f", b"", b"x", background=True)
    assert (first.told, second.told) == ([("wake",)], [])


def test_a_functions_tcp_jobs_are_counted_until_each_ends_however_it_ends() -> None:
    # TCP's share of max_queue reads this count: a job that left it uncounted would lower
    # TCP's room for good, one counted twice would leave it the Unix socket's share.
    jobs = JobServer(hostname="t", max_queue=8)
    jobs.unix_share = True
    client, worker = FakePeer(), FakePeer()
    jobs.can_do(worker, b"f")
    ran = jobs.submit(client, b"f", b"a", b"x", tcp=True)
    jobs.submit(None, b"f", b"b", b"x", background=True, tcp=True)
    jobs.submit(client, b"f", b"c", b"x", tcp=True)
    jobs.submit(None, b"f", b"", b"x", background=True)  # the Unix socket's: not counted
    fq = jobs.functions[b"f"]
    assert fq.tcp_jobs == 3
    assert jobs.grab(worker) is ran
    jobs.finish(worker, ran, Outcome.COMPLETE)
    jobs.detach_client(client)  # its queued "c" is dropped
    assert fq.tcp_jobs == 1
    for i in range(5):  # 6 of 8 in all: TCP's three quarters
        jobs.submit(None, b"f", b"%d" % i, b"x", background=True, tcp=True)
    with pytest.raises(QueueFull, match="TCP peers' jobs hold their 3/4 of it"):  # the log's
        jobs.submit(None, b"f", b"past", b"x", background=True, tcp=True)
    jobs.submit(None, b"f", b"", b"y", background=True)  # the Unix socket's share
    cancelled = next(j for j in jobs.jobs.values() if not j.local)
    assert jobs.cancel(cancelled.handle) and fq.tcp_jobs == 5
    jobs.submit(None, b"f", b"again", b"x", background=True, tcp=True)


def test_a_tcp_submit_the_failing_store_refuses_is_not_counted(tmp_path: Path) -> None:
    # The count was raised before the store staged the job: a refused background submit
    # (StoreError: a full disk, a failed commit within its retry window) never reached
    # _forget, and each left TCP's share one lower until the server restarted; foreground
    # submits, which never touch the store, were refused with them.
    store = SQLiteStore(tmp_path / "q.db")
    jobs = JobServer(store=store, hostname="t", max_queue=8)
    jobs.unix_share = True
    store.broken, store._retry_at = "disk full", time.monotonic() + 3600  # as a failed commit
    for i in range(6):
        with pytest.raises(StoreError):
            jobs.submit(None, b"f", b"%d" % i, b"x", background=True, tcp=True)
    fq = jobs.functions[b"f"]
    assert fq.tcp_jobs == 0 and not jobs.jobs
    jobs.submit(FakePeer(), b"f", b"", b"x", tcp=True)  # the store's outage is not TCP's
    assert fq.tcp_jobs == 1
