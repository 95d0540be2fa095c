"""farm.Executor's calls in flight, against real processes: a worker killed or dying
mid-batch fails exactly the futures it held with WorkerLost, batched calls and chunks keep
their own outcomes, map sends a generator's calls as it reads them, and a Ctrl-C while
submit sends settles its calls rather than hanging them, the executor working on.
"""

from __future__ import annotations

import os
import select
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor import RemoteTraceback
from tests.helpers import executorfarm
from tests.helpers.calls import (
    add,
    batch_step,
    fails,
    fork_and_come_back,
    get_init_state,
    getpid,
    init_dies,
    init_state,
    init_tells_then_waits,
    nap,
    pid_then_block,
    tell,
    wait_gate,
)
from tests.helpers.executorfarm import ExecutorFarm
from tests.helpers.gate import Gate
from tests.helpers.waiting import wait_for

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared_farm = executorfarm.shared_farm
ex = executorfarm.ex


def test_killed_worker_fails_only_its_future(tmp_path: Path) -> None:
    small = ExecutorFarm(tmp_path, count=2)
    fifo = str(tmp_path / "started")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the call's open() does not block
    try:
        with small.executor() as ex:
            before = [ex.submit(add, i, 1) for i in range(20)]
            doomed = ex.submit(pid_then_block, fifo)
            ready, _, _ = select.select([reader], [], [], 30)
            assert ready, "the blocking call never started"
            pid = int(os.read(reader, 64))
            after = [ex.submit(add, i, 2) for i in range(20)]
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(farm.WorkerLost):
                doomed.result(timeout=30)
            assert [f.result(timeout=30) for f in before] == [i + 1 for i in range(20)]
            assert [f.result(timeout=30) for f in after] == [i + 2 for i in range(20)]
            assert ex.submit(add, 40, 2).result(timeout=30) == 42  # still working
    finally:
        os.close(reader)
        small.stop()


def test_a_worker_that_dies_in_the_initializer_once_fails_only_its_call(tmp_path: Path) -> None:
    # Under job_retries 1 the server fails the job (WORK_FAIL) as its worker dies. One worker
    # dead in the executor's initializer proves nothing against it (the supervisor's SIGKILL
    # after graceful_timeout, the OOM killer end workers in healthy initializers too): that
    # call fails alone, WorkerLost, as a worker that dies in the call, its initializer run.
    small = ExecutorFarm(tmp_path, count=2)
    try:
        with small.executor(initializer=init_state, initargs=("ok",)) as ex:
            with pytest.raises(farm.WorkerLost):
                ex.submit(init_dies).result(timeout=30)  # dies in the call itself
            assert ex.submit(get_init_state).result(timeout=30) == "ok"  # not broken
        once = small.executor(initializer=init_dies)
        with pytest.raises(farm.WorkerLost, match="died"):
            once.submit(add, 1).result(timeout=30)
        once.shutdown()
    finally:
        small.stop()


def test_an_initializer_that_kills_two_workers_breaks_the_executor(tmp_path: Path) -> None:
    # Under job_retries 2 the call runs twice: the second worker's start of the initializer
    # tells that the first died in it, and the job's failure that the second did too. The
    # executor breaks, as for an initializer that raises; the call cost two workers, not
    # job_retries, and the third worker serves.
    small = ExecutorFarm(tmp_path, count=3, retries=2)
    try:
        broken = small.executor(initializer=init_dies)
        with pytest.raises(farm.executor.BrokenFarmExecutor, match="initializer") as info:
            broken.submit(add, 1).result(timeout=30)
        cause = info.value.__cause__
        assert isinstance(cause, farm.WorkerLost) and "2 workers" in str(cause), cause
        # Not "the initializer failed in a worker": none raised, the workers died in it.
        assert str(info.value).startswith("workers died in the executor's initializer: ")
        assert "failed in a worker" not in str(info.value), info.value
        with pytest.raises(farm.executor.BrokenFarmExecutor):
            broken.submit(add, 2)
        broken.shutdown()
        with small.executor() as ok:
            assert ok.submit(add, 2, 3).result(timeout=30) == 5
        codes = lambda: [w.poll() for w in small.workers]  # noqa: E731
        wait_for("two workers lost", lambda: codes().count(3) >= 2)
        assert sorted(codes(), key=str) == [3, 3, None], codes()  # two, not job_retries
    finally:
        small.stop()


def started_initializer(directory: Path) -> set[int]:
    """The pids of the workers that ran ``init_tells_then_waits`` with ``directory``."""
    return {int(path.suffix[1:]) for path in directory.glob("init.*")}


def test_a_worker_killed_in_a_healthy_initializer_is_retried(tmp_path: Path) -> None:
    # Killed from outside while it runs a slow, healthy initializer (the supervisor's SIGKILL
    # after graceful_timeout, the OOM killer, kill_rss_mb), a worker is lost as any other:
    # the server runs the call again on another worker, and it gives its result. The
    # retry's start of the initializer, with no end before it, broke the executor.
    small = ExecutorFarm(tmp_path, count=2, retries=3)
    (tmp_path / "slow").touch()
    try:
        with Gate(tmp_path / "gate") as gate:
            init = (str(tmp_path), gate.path)
            with small.executor(initializer=init_tells_then_waits, initargs=init) as ex:
                future = ex.submit(add, 1, 2)
                gate.arrived(1)
                [victim] = started_initializer(tmp_path)
                os.kill(victim, signal.SIGKILL)
                gate.open()
                assert future.result(timeout=30) == 3
                assert ex.submit(add, 2, 2).result(timeout=30) == 4
    finally:
        small.stop()


def test_a_retry_that_dies_in_the_call_is_worker_lost(tmp_path: Path) -> None:
    # Worker A is killed in the initializer; the server's retry lands on worker B, which ran
    # the initializer already (and so says nothing of it), and B dies in the call. A's start
    # with no end belonged to A, not to B: the call fails with WorkerLost, as for any dead
    # worker, and the executor serves on. It broke, "died in the executor's initializer".
    small = ExecutorFarm(tmp_path, count=1, retries=2)
    try:
        with Gate(tmp_path / "init") as slow, Gate(tmp_path / "busy") as busy:
            init = (str(tmp_path), slow.path)
            with small.executor(initializer=init_tells_then_waits, initargs=init) as ex:
                b = ex.submit(getpid).result(timeout=30)  # B ran the initializer
                held = ex.submit(wait_gate, busy.path)
                busy.arrived(1)  # B is busy: the next call goes to A
                (tmp_path / "slow").touch()
                a = small.add_worker(small.key)
                doomed = ex.submit(init_dies)  # os._exit(3) in the call
                slow.arrived(1)
                assert started_initializer(tmp_path) == {a.pid, b}
                a.kill()
                a.wait(10)
                busy.open()  # B takes the retry once free
                held.result(timeout=30)
                with pytest.raises(farm.WorkerLost, match="died"):
                    doomed.result(timeout=30)
                slow.open()
                small.add_worker(small.key)
                assert ex.submit(add, 2, 2).result(timeout=30) == 4
    finally:
        small.stop()


@pytest.mark.parametrize(("how", "status"), [("return", 0), ("exit 3", 3), ("raise", 1)])
def test_a_child_a_call_forked_that_comes_back_out_of_it_exits(
    tmp_path: Path, how: str, status: int
) -> None:
    # A child that returned (or raised, sys.exit() included) out of the call, where it
    # should have called os._exit(), went on as a second worker on the worker's connection:
    # it answered the call in the parent's stead, the two then read and wrote one socket,
    # and the worker wedged for every later caller of the shared farm. It exits instead.
    small = ExecutorFarm(tmp_path, count=1)  # its own: a failure here wedges its worker
    try:
        with small.executor() as ex:
            worker = ex.submit(getpid).result(timeout=30)
            assert ex.submit(fork_and_come_back, how).result(timeout=30) == ("parent", status)
            # More calls than the window takes: most travel in batches (call._run_batch),
            # where a child that came back ran the batch's other calls again.
            tally = str(tmp_path / "tally")
            results = list(ex.map(fork_and_come_back, [how] * 8, [tally] * 8))
            assert results == [("parent", status)] * 8
            assert len(Path(tally).read_text().splitlines()) == 8, "calls ran more than once"
            assert [ex.submit(getpid).result(timeout=30) for _ in range(3)] == [worker] * 3
    finally:
        small.stop()


def test_a_worker_dying_mid_batch_fails_the_calls_it_had_not_finished(tmp_path: Path) -> None:
    # One job in flight at a time, so the calls queued behind a slow one travel as batches
    # (farm/executor/flight.py). With --job-retries 1 the batch is not run again.
    small = ExecutorFarm(tmp_path, count=2)
    fifo = str(tmp_path / "started")
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with small.executor(max_workers=1) as ex:
            first = ex.submit(nap, 0.5)  # holds the window while the batch queues up
            steps = [ex.submit(batch_step, i, fifo, 2, 3) for i in range(10)]
            ready, _, _ = select.select([reader], [], [], 30)
            assert ready, "the blocking call never started"
            # The batch is calls 0..4 (call 0 and 9 // 2 more of the 9 behind it); 0..2
            # ended a flush interval before 3 blocked, so their outcomes left in a WORK_DATA.
            assert [f.result(timeout=30) for f in steps[:3]] == [0, 1, 2]
            assert not any(f.done() for f in steps[3:5])
            os.kill(int(os.read(reader, 64)), signal.SIGKILL)
            for f in steps[3:5]:  # the one running and the one after it in the batch
                with pytest.raises(farm.WorkerLost):
                    f.result(timeout=30)
            assert first.result(timeout=30) == 0.5
            assert [f.result(timeout=30) for f in steps[5:]] == [5, 6, 7, 8, 9]
    finally:
        os.close(reader)
        small.stop()


def test_batched_calls_keep_their_own_outcomes(shared_farm: ExecutorFarm) -> None:
    with shared_farm.executor(max_in_flight=2) as ex:
        futures = [ex.submit(fails, i) for i in range(200)]  # 200 waiting: batches of up to 51
        for i, future in enumerate(futures):
            if i == 3:
                with pytest.raises(ValueError, match="bad input 3"):
                    future.result(timeout=30)
                assert isinstance(future.exception().__cause__, RemoteTraceback)
            else:
                assert future.result(timeout=30) == i * 10


@pytest.mark.parametrize("iterables", [1, 2])
def test_waiting_chunks_travel_together_and_keep_their_own_outcomes(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch, iterables: int
) -> None:
    import farm.executor.flight as flight
    from farm.executor.payload import ARG_CHUNK_BATCH, CHUNK_BATCH

    kinds: list[int] = []
    real = flight.encode_call

    def spy(*args: Any, **kwargs: Any) -> bytes:
        kinds.append(args[4])  # the kind of each job the pump sends
        return real(*args, **kwargs)

    def one(x: int, *_: int) -> int:
        return x + 1 if x != 255 else fails(3)

    monkeypatch.setattr(flight, "encode_call", spy)
    with shared_farm.executor(max_in_flight=2) as ex:
        # 40 chunks of 10 wait for 2 jobs in flight: several chunks go in one job.
        values = ex.map(one, *[range(400)] * iterables, chunksize=10)
        got = []
        with pytest.raises(ValueError, match="bad input 3"):
            for value in values:
                got.append(value)
    assert got == [x + 1 for x in range(250)], "the chunks before the failing one"
    batch_kind = ARG_CHUNK_BATCH if iterables == 1 else CHUNK_BATCH
    assert batch_kind in kinds and len(kinds) < 40, kinds


def test_map_sends_the_calls_of_a_generator_as_it_reads_them(
    ex: farm.Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """map may queue the calls of a list to send them together, never those of a generator:
    one that waits for a call it gave to run must not wait forever."""
    import socket

    import farm.executor.mapping as mapping_module

    monkeypatch.setattr(mapping_module, "NUDGE_EVERY", 3600.0)  # queued calls would stay
    path = str(tmp_path / "ran.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as inbox:
        inbox.bind(path)
        inbox.settimeout(20)
        heard: list[bytes] = []

        def calls() -> Iterator[str]:
            yield path
            heard.append(inbox.recv(16))  # the first call ran
            # ... and its job ended: nothing in flight would wake the pump for a queued call.
            wait_for("the first job to end", lambda: ex._pump._in_flight == 0)
            yield path
            heard.append(inbox.recv(16))  # the second ran: it was sent as it was read
            yield path

        assert list(ex.map(tell, calls())) == [path] * 3
    assert heard == [b"ran"] * 2


def test_a_ctrl_c_while_submit_sends_fails_its_calls_instead_of_hanging(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submit sends from the caller's thread while the pump sleeps; a KeyboardInterrupt
    there (one Python's handler did not hold: a handler of the program's own) reaches the
    caller, and the call it was sending is settled (its connection dropped, it fails if
    its reply is lost) rather than left taken off the queue but never sent, RUNNING for
    ever. The executor works on (it broke, failing every later call, before)."""
    with shared_farm.executor() as ex:
        assert ex.submit(add, 1, 1).result(timeout=30) == 2  # the pump is up, and asleep
        pump = ex._pump
        send = pump._send_pending
        caller = threading.get_ident()
        sent: list[Future[int]] = []

        def interrupted() -> None:
            mine = threading.get_ident() == caller  # the pump thread's own sends go through
            if mine:
                sent.extend(item.future for item in pump._pending)
            send()
            if mine:
                raise KeyboardInterrupt

        monkeypatch.setattr(pump, "_send_pending", interrupted)
        for _ in range(50):  # the pump may be awake (a late reply) when we submit: again
            wait_for("the pump to sleep", lambda: pump._sleeping)
            try:
                assert ex.submit(add, 2, 2).result(timeout=30) == 4
            except KeyboardInterrupt:
                break
        else:
            pytest.fail("submit never sent from the caller's thread")
        monkeypatch.setattr(pump, "_send_pending", send)
        assert sent
        for future in sent:  # settled: it ran, or it failed with its connection
            try:
                assert future.result(timeout=30) == 4
            except farm.ServerUnavailable:
                pass
        assert ex.submit(add, 3, 3).result(timeout=30) == 6
        assert not pump.finished.is_set() and pump.broken is None
