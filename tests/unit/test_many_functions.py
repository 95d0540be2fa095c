"""Workers of many functions: left in their sleepers lists while awake (farm.server.sleepers)
and with an index of their functions that have work (farm.server.abilities), checked
against what they stand for after each of a seeded random sequence of the job model's
operations: registrations, sleeps, grabs, wakes and their deadlines, drains, pushes taken
back, cancels and workers leaving. The limits are made small here, so that workers cross
them both ways; the cost at the real ones is tests/security/test_sleep_cost.py's."""

from __future__ import annotations

import random

import pytest

from farm.server.abilities import INDEX_MIN
from farm.server.jobs import JobServer
from farm.server.queues import HIGH, LOW, NORMAL, Job, Outcome
from tests.helpers.fakes import FakeClock, FakePeer

FUNCTIONS = [b"f%d" % n for n in range(6)]
STEPS = 400


def brute_best(jobs: JobServer, worker: FakePeer) -> Job | None:
    """The job a grab must get: highest priority, then oldest, over all its functions."""
    heads = []
    for name in worker.abilities:
        fq = jobs.functions.get(name)
        for priority in (HIGH, NORMAL, LOW):
            job = fq.head(priority) if fq is not None and fq.counts[priority] else None
            if job is not None:
                heads.append((priority, job.seq, job))
    return min(heads, key=lambda h: h[:2])[2] if heads else None


def check(jobs: JobServer, workers: list[FakePeer]) -> None:
    for fq in jobs.functions.values():
        for worker in fq.sleepers:
            assert fq.name in worker.abilities
            assert worker.sleeping or worker in jobs.lingering, "a stale entry of no one"
        indexed = {w for w in workers if fq.name in w.abilities and w in jobs.with_work}
        assert set(fq.watchers) == indexed
    for worker in workers:
        missing = jobs.lingering.get(worker)
        for name in worker.abilities:
            listed = worker in jobs.functions[name].sleepers
            if worker.sleeping:
                assert listed, "asleep but not in a list of its functions"
            elif missing is not None:
                assert listed != (name in missing), "lingering, and its missing lists wrong"
            else:
                assert not listed, "awake and not lingering, but in a sleepers list"
        if missing is not None:
            assert not worker.sleeping and missing <= worker.abilities.keys()
        if worker in jobs.with_work:
            assert jobs.with_work[worker] == {n for n in worker.abilities if n in jobs.ready}
        best = brute_best(jobs, worker)
        assert jobs._best_job(worker) is best  # type: ignore[arg-type]
        assert jobs._has_work(worker) == (best is not None)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(30))
def test_many_function_workers_keep_their_lists_and_index_exact(
    monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    monkeypatch.setattr("farm.server.sleepers.RESETTLE_MAX", 2)
    monkeypatch.setattr("farm.server.abilities.INDEX_MIN", 3)
    monkeypatch.setattr("farm.server.dispatch.INDEX_MIN", 3)
    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later, job_retries=0)
    rng = random.Random(seed)
    workers = [FakePeer() for _ in range(4)]

    def a_worker() -> FakePeer:
        return rng.choice(workers)

    def grab(worker: FakePeer, *, hold: bool) -> None:
        job = jobs.grab(worker)  # type: ignore[arg-type]
        if job is None and hold and worker.abilities and not worker.draining:
            jobs.sleep(worker)  # type: ignore[arg-type]  # as a held grab does
        elif job is not None and rng.random() < 0.2:
            jobs.take_back(worker, job)  # type: ignore[arg-type]  # a push not accepted

    def finish() -> None:
        worker = a_worker()
        if worker.running:
            job = rng.choice(list(worker.running.values()))
            jobs.finish(worker, job, Outcome.COMPLETE)  # type: ignore[arg-type]

    def leave() -> None:
        worker = a_worker()
        jobs.detach_worker(worker)  # type: ignore[arg-type]
        workers[workers.index(worker)] = FakePeer()

    def cancel() -> None:
        if jobs.jobs:
            jobs.cancel(rng.choice(list(jobs.jobs)))

    def register_many() -> None:
        worker = a_worker()
        for name in rng.sample(FUNCTIONS, rng.randint(3, len(FUNCTIONS))):
            jobs.can_do(worker, name)  # type: ignore[arg-type]

    operations = [
        (lambda: jobs.can_do(a_worker(), rng.choice(FUNCTIONS)), 6),  # type: ignore[arg-type]
        (register_many, 2),
        (lambda: jobs.cant_do(a_worker(), rng.choice(FUNCTIONS)), 4),  # type: ignore[arg-type]
        (lambda: jobs.reset_abilities(a_worker()), 1),  # type: ignore[arg-type]
        (lambda: jobs.pre_sleep(a_worker()), 8),  # type: ignore[arg-type]
        (lambda: grab(a_worker(), hold=False), 8),
        (lambda: grab(a_worker(), hold=True), 6),
        (finish, 6),
        (
            lambda: jobs.submit(
                None,
                rng.choice(FUNCTIONS),
                b"",
                b"x",
                priority=rng.choice((HIGH, NORMAL, LOW)),
                background=True,
            ),
            10,
        ),
        (cancel, 2),
        (lambda: clock.advance(clock.now + rng.choice((0.1, 1.0))), 3),
        (lambda: jobs.drain(a_worker()), 1),  # type: ignore[arg-type]
        (leave, 1),
    ]
    actions, weights = zip(*operations, strict=True)
    for step in range(STEPS):
        rng.choices(actions, weights)[0]()
        try:
            check(jobs, workers)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, step {step}: {exc}") from exc


def _sleeping_pair(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[JobServer, FakeClock, FakePeer, FakePeer]:
    """``few`` (f0 alone) asleep, then ``many`` (f0 to f16: more than RESETTLE_MAX), the
    newest sleeper of f0."""
    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later)
    few, many = FakePeer(), FakePeer()
    jobs.can_do(few, b"f0")  # type: ignore[arg-type]
    for n in range(17):
        jobs.can_do(many, b"f%d" % n)  # type: ignore[arg-type]
    jobs.pre_sleep(few)  # type: ignore[arg-type]
    jobs.pre_sleep(many)  # type: ignore[arg-type]
    return jobs, clock, few, many


def test_a_worker_of_many_functions_keeps_its_place_across_its_grabs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs, _, few, many = _sleeping_pair(monkeypatch)
    assert jobs.grab(many) is None  # type: ignore[arg-type]
    jobs.pre_sleep(few)  # type: ignore[arg-type]  # said again: the newest now
    jobs.pre_sleep(many)  # type: ignore[arg-type]  # where it first went to sleep
    jobs.submit(None, b"f0", b"", b"x", background=True)
    assert few.told == [("wake",)] and not many.told


def test_a_worker_of_many_functions_late_once_is_woken_after_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs, clock, few, many = _sleeping_pair(monkeypatch)
    jobs.submit(None, b"f1", b"", b"x", background=True)  # only ``many`` serves f1
    assert many.told == [("wake",)]
    clock.advance(clock.now + 1)  # it does not come in time: late
    job = jobs.grab(many)  # type: ignore[arg-type]  # it comes after all
    assert job is not None and many.late
    jobs.finish(many, job, Outcome.COMPLETE)  # type: ignore[arg-type]
    jobs.pre_sleep(many)  # type: ignore[arg-type]  # still the newest entry of f0's list
    jobs.submit(None, b"f0", b"", b"x", background=True)
    assert few.told == [("wake",)], "the late worker was woken before one in time"
    assert list(jobs.functions[b"f0"].sleepers) == [many]  # at the cold end


def test_a_worker_left_with_few_functions_is_no_longer_told_of_their_work() -> None:
    # Any local user may register INDEX_MIN + 1 functions on each of thousands of TCP
    # connections and give all but one back: kept for the connection's life, each index
    # made every job of that one function tell thousands of them (TCP abilities counted 1).
    jobs = JobServer(hostname="t")
    for i in range(20):
        worker = FakePeer()
        worker.tcp = True
        names = [b"w%d-%d" % (i, n) for n in range(INDEX_MIN)]
        for name in [b"f", *names]:
            jobs.can_do(worker, name)  # type: ignore[arg-type]
        for name in names:
            jobs.cant_do(worker, name)  # type: ignore[arg-type]
    assert jobs.tcp_abilities == 20
    assert not jobs.functions[b"f"].watchers, "a job of f tells workers of one function"


def test_a_worker_of_few_functions_late_while_asleep_keeps_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its wake-up's deadline passes while it sleeps again (it said PRE_SLEEP, not GRAB_JOB,
    # and another took the job): as before workers of many functions were left in their
    # lists, it is moved to the cold end when it next goes to sleep, not by a wake now.
    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later)
    a, b, c = FakePeer(), FakePeer(), FakePeer()
    for worker in (a, b, c):
        jobs.can_do(worker, b"f")  # type: ignore[arg-type]
    jobs.pre_sleep(a)  # type: ignore[arg-type]
    jobs.pre_sleep(b)  # type: ignore[arg-type]
    jobs.submit(None, b"f", b"u1", b"x", background=True)
    assert b.told == [("wake",)]
    assert jobs.grab(c) is not None  # type: ignore[arg-type]  # c takes it first
    jobs.pre_sleep(b)  # type: ignore[arg-type]
    clock.advance(clock.now + 1)
    assert b.late
    b.told.clear()
    jobs.submit(None, b"f", b"u2", b"x", background=True)
    assert b.told == [("wake",)] and not a.told, "a wake moved a worker of one function"


def test_a_worker_of_few_functions_whose_push_is_taken_back_while_asleep_keeps_its_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock.installed(monkeypatch)
    jobs = JobServer(hostname="t", call_later=clock.call_later)
    a, b = FakePeer(), FakePeer()
    for worker in (a, b):
        jobs.can_do(worker, b"f")  # type: ignore[arg-type]
    jobs.sleep(a)  # type: ignore[arg-type]  # a held grab
    jobs.submit(None, b"f", b"u1", b"x", background=True)
    jobs.sleep(b)  # type: ignore[arg-type]
    job = jobs.grab(a)  # type: ignore[arg-type]  # pushed to a
    assert job is not None
    jobs.sleep(a)  # type: ignore[arg-type]  # it holds another grab: the newest sleeper
    a.told.clear()
    jobs.take_back(a, job)  # type: ignore[arg-type]  # not accepted in time
    assert a.told == [("wake",)] and not b.told, "a wake moved a worker of one function"
