"""farm.Executor against real processes: farm's server and executor worker processes.

The same small programs run against ProcessPoolExecutor(2) and farm.Executor
and must observe the same things; a worker killed mid-call fails exactly its
future with WorkerLost; payloads without a valid signature are refused by
the worker without being unpickled, and results by the client.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

import farm
from farm.executor import RemoteTraceback, spill
from farm.executor.call import CALL_ID_SIZE, OK, SINGLE, encode_call
from farm.executor.signing import (
    KEY_ENV,
    MAGIC,
    RESULT,
    SignatureError,
    Signer,
    ensure_key,
    load_key,
)
from tests.helpers import ROOT
from tests.helpers.calls import (
    add,
    batch_step,
    box,
    exits_when_loaded,
    exits_when_pickled,
    fails,
    fork_and_come_back,
    getpid,
    large_result,
    nap,
    pid_then_block,
    tell,
    two_arg_error_at,
    unpicklable_result,
    wait_gate,
)
from tests.helpers.gate import Gate
from tests.helpers.servers import Server, start_farm_server
from tests.helpers.waiting import wait_for

WORKER = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]


class ExecutorFarm:
    """``farm server --job-retries 1`` and ``count`` workers serving farm.python with ``key``."""

    def __init__(self, tmp: Path, count: int = 2) -> None:
        self.key = ensure_key(tmp / "executor.key")
        # Workers of farm.* functions must come over the Unix socket; callers may use TCP.
        self.unix = str(tmp / "gearman.sock")
        self.server: Server = start_farm_server("--job-retries", "1", unix=self.unix)
        wait_for("the Unix socket", lambda: os.path.exists(self.unix))
        self.workers: list[subprocess.Popen] = []
        for _ in range(count):
            self.add_worker(self.key)

    @property
    def addr(self) -> str:
        return self.server.addr

    def add_worker(self, key: Path, name: str = "farm.python") -> subprocess.Popen:
        env = dict(os.environ, **{KEY_ENV: str(key)})
        where = f"unix:{self.unix}"
        cmd = [*WORKER, "farm.executor.call:run_call", "--name", name, "--server", where]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
        self.workers.append(proc)
        return proc

    def executor(self, **options: Any) -> farm.Executor:
        return farm.Executor(servers=self.addr, key_file=str(self.key), **options)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
        for proc in self.workers:
            proc.wait(10)
        self.server.stop()


@pytest.fixture(scope="module")
def shared_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutorFarm]:
    f = ExecutorFarm(tmp_path_factory.mktemp("executor"))
    yield f
    f.stop()


@pytest.fixture
def ex(shared_farm: ExecutorFarm) -> Iterator[farm.Executor]:
    with shared_farm.executor() as executor:
        yield executor


# -- the same program against both executors --


def program(ex: Executor) -> dict[str, Any]:
    """What a user program observes; must be equal for ProcessPoolExecutor and farm.Executor."""
    seen: dict[str, Any] = {}
    seen["submit"] = ex.submit(add, 2, b=3).result()
    seen["map"] = list(ex.map(add, range(5), range(10, 13)))  # stops at the shortest
    seen["map_chunks"] = list(ex.map(add, range(10), chunksize=3))
    # One iterable travels as a list of arguments: a tuple argument stays one argument.
    seen["map_tuple_args"] = list(ex.map(len, [(1, 2), (3,), (), "ab"], chunksize=3))
    seen["map_chunks_2"] = list(ex.map(add, range(7), range(10, 20), chunksize=3))
    seen["empty_map"] = list(ex.map(add, []))
    future = ex.submit(fails, 3)
    exc = future.exception(timeout=30)
    seen["exception"] = (type(exc).__name__, str(exc))
    cause = exc.__cause__
    seen["cause_has_traceback"] = (
        "Traceback (most recent call last)" in str(cause)
        and "in fails" in str(cause)
        and 'raise ValueError(f"bad input {x}")' in str(cause)
    )
    results = ex.map(fails, range(6))
    got = [next(results), next(results), next(results)]
    try:
        next(results)
    except ValueError as e:
        got.append(f"raised {e}")
    seen["map_raises_in_order"] = got
    chunked = ex.map(fails, range(6), chunksize=2)
    got = [next(chunked), next(chunked)]
    try:
        next(chunked)  # 2 and 3 share a chunk: the chunk fails as a whole
    except ValueError as e:
        got.append(f"raised {e}")
    seen["chunk_raises"] = got
    with pytest.raises(ValueError):
        ex.map(add, [1], chunksize=0)
    done = ex.submit(add, 1)
    done.result()
    seen["states"] = (done.done(), done.cancelled(), done.running(), done.cancel())
    return seen


def test_same_program_same_observations(ex: farm.Executor) -> None:
    with ProcessPoolExecutor(2) as pool:
        expected = program(pool)
    assert program(ex) == expected
    assert expected["exception"] == ("ValueError", "bad input 3")  # the program checks something
    assert expected["cause_has_traceback"] is True


def test_remote_traceback_is_the_cause(ex: farm.Executor) -> None:
    exc = ex.submit(fails, 3).exception(timeout=30)
    assert isinstance(exc, ValueError)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "in fails" in exc.__cause__.tb


def test_lambdas_closures_and_kwargs(ex: farm.Executor) -> None:
    factor = 7
    assert ex.submit(lambda x: x * factor, 6).result(timeout=30) == 42
    assert ex.submit(sorted, [3, 1, 2], reverse=True).result(timeout=30) == [3, 2, 1]
    assert list(ex.map(lambda a, b: a - b, [10, 20], [1, 2], chunksize=2)) == [9, 18]

    class Point:  # defined here: travels by value, comes back as the same class
        def __init__(self, x: int) -> None:
            self.x = x

    back = ex.submit(lambda p: Point(p.x + 1), Point(1)).result(timeout=30)
    assert type(back) is Point and back.x == 2


def test_sequential_calls_go_out_from_the_callers_thread(ex: farm.Executor) -> None:
    # An idle pump is not woken to send a call: the submitting thread sends it (its reply
    # wakes the pump). One wake-up per call would be a thread hop per call.
    assert ex.submit(abs, -1).result(timeout=30) == 1  # the pump is started and idle
    pump = ex._pump
    wakes = []
    real_wake = pump._wake
    pump._wake = lambda: (wakes.append(1), real_wake())  # type: ignore[method-assign]
    try:
        results = [ex.submit(abs, -i).result(timeout=30) for i in range(50)]
    finally:
        pump._wake = real_wake  # type: ignore[method-assign]
    assert results == list(range(50))
    assert len(wakes) <= 5, f"{len(wakes)} of 50 sequential calls needed the pump woken"


def test_threads_waiting_on_futures_of_two_executors_do_not_deadlock(
    shared_farm: ExecutorFarm,
) -> None:
    # concurrent.futures.wait() and as_completed() lock the futures they are given in the
    # order of their id(). Were the futures of each executor to share a lock of their own,
    # two threads waiting on futures of both executors, in opposite id orders, could each
    # take one lock and wait for the other's for good, as no two ProcessPoolExecutor futures do.
    with shared_farm.executor() as one, shared_farm.executor() as two:
        # Made in turns, so that their ids interleave: made one executor's after the
        # other's, they could all lie above the others (fresh memory) and no pair be found.
        made = [(one.submit(add, i), two.submit(add, i)) for i in range(20)]
        ones, twos = [a for a, _ in made], [b for _, b in made]
        wait(ones + twos, timeout=30)
        forward = [(a, b) for a in ones for b in twos if id(a) < id(b)][:10]
        backward = [(b, a) for a in ones for b in twos if id(b) < id(a)][:10]
        assert forward and backward, "the futures' ids always fall one way: pick others"

        def waits(pairs: list[tuple[Future[int], Future[int]]], done: threading.Event) -> None:
            for _ in range(500):
                for pair in pairs:
                    wait(pair)
            done.set()

        dones = [threading.Event(), threading.Event()]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads take turns between two lock takes, as they may
        try:
            for pairs, done in zip((forward, backward), dones, strict=True):
                threading.Thread(target=waits, args=(pairs, done), daemon=True).start()
            deadline = time.monotonic() + 20
            ended = [done.wait(max(0.0, deadline - time.monotonic())) for done in dones]
        finally:
            sys.setswitchinterval(interval)
        assert all(ended), "two threads' wait() deadlocked"


def test_unpicklable_argument_fails_its_future(ex: farm.Executor) -> None:
    future = ex.submit(add, threading.Lock())
    with pytest.raises(TypeError, match="pickle"):
        future.result(timeout=30)
    assert ex.submit(add, 1, 1).result(timeout=30) == 2


def test_map_timeout(ex: farm.Executor) -> None:
    # The first call's round trip must fit in the timeout on a loaded machine; the second
    # cannot (5 s of sleep).
    results = ex.map(nap, [0.0, 5.0], timeout=3)
    assert next(results) == 0.0
    with pytest.raises(TimeoutError):
        next(results)


def shutdown_program(ex: Executor) -> dict[str, Any]:
    """shutdown(cancel_futures=True): what was sent finished, the rest (a tail) is cancelled."""
    futures = [ex.submit(nap, 0.05) for _ in range(40)]
    ex.shutdown(wait=True, cancel_futures=True)
    states = ["cancelled" if f.cancelled() else "done" for f in futures]
    first_cancelled = states.index("cancelled") if "cancelled" in states else len(states)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(nap, 0)
    return {
        "all_settled": all(f.done() for f in futures),
        "some_cancelled": "cancelled" in states,
        "cancelled_are_the_tail": all(s == "cancelled" for s in states[first_cancelled:]),
        "ran_ok": all(f.result() == 0.05 for f in futures if not f.cancelled()),
    }


def test_shutdown_cancel_futures_like_process_pool(shared_farm: ExecutorFarm) -> None:
    with ProcessPoolExecutor(2) as pool:
        pool.submit(add, 0).result()  # start its processes, as the farm's already run
        expected = shutdown_program(pool)
    assert expected == dict.fromkeys(expected, True)
    assert shutdown_program(shared_farm.executor(max_workers=4)) == expected


def test_shutdown_wait_finishes_everything(shared_farm: ExecutorFarm) -> None:
    ex = shared_farm.executor(max_workers=2)
    futures = [ex.submit(nap, 0.01) for _ in range(10)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == [0.01] * 10


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


def test_a_ctrl_c_while_submit_sends_breaks_the_executor_instead_of_hanging(
    shared_farm: ExecutorFarm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """submit sends from the caller's thread while the pump sleeps; a KeyboardInterrupt
    there reaches the caller, and the executor breaks (its calls fail) rather than leaving
    calls taken off the queue but never sent RUNNING for ever."""
    with shared_farm.executor() as ex:
        assert ex.submit(add, 1, 1).result(timeout=30) == 2  # the pump is up, and asleep
        pump = ex._pump
        send = pump._send_pending
        caller = threading.get_ident()

        def interrupted() -> None:
            send()
            if threading.get_ident() == caller:  # the pump thread's own sends go through
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
        assert pump.finished.wait(30), "the pump thread ended"
        with pytest.raises(farm.executor.BrokenFarmExecutor):
            ex.submit(add, 3, 3)


# -- the concurrent.futures contract: no future left pending, no worker killed --


def blocking_call(tmp_path: Path, name: str) -> tuple[str, int]:
    """A fifo for ``pid_then_block`` and our end of it (non-blocking: the call's open() must
    not wait for us)."""
    fifo = str(tmp_path / name)
    os.mkfifo(fifo)
    return fifo, os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)


def started_pid(reader: int) -> int:
    """The pid a ``pid_then_block`` call wrote to the fifo open on ``reader``."""
    ready, _, _ = select.select([reader], [], [], 30)
    assert ready, "the blocking call never started"
    return int(os.read(reader, 64))


def test_a_dead_pump_fails_every_outstanding_future(tmp_path: Path) -> None:
    # A done-callback raising SystemExit (Future runs callbacks catching only Exception)
    # kills the pump thread while one call is in flight, the rest of a batch is in flight
    # with the call whose callback raised, and more calls wait: none may stay pending.
    small = ExecutorFarm(tmp_path, count=3)
    fifo1, reader1 = blocking_call(tmp_path, "first")
    fifo2, reader2 = blocking_call(tmp_path, "second")

    def explode(_: Future[Any]) -> None:
        raise SystemExit("a done-callback raised SystemExit")

    try:
        ex = small.executor(max_workers=2)
        blocked = ex.submit(pid_then_block, fifo1)  # in flight until the end
        started_pid(reader1)
        doomed = ex.submit(pid_then_block, fifo2)  # fills the window
        doomed_pid = started_pid(reader2)
        waiting = [ex.submit(add, i, 1) for i in range(10)]  # the window is full: they wait
        waiting[0].add_done_callback(explode)
        os.kill(doomed_pid, signal.SIGKILL)  # frees the window: waiting[0..2] leave as a batch
        with pytest.raises(farm.WorkerLost):
            doomed.result(timeout=30)
        assert waiting[0].result(timeout=30) == 1  # its outcome was set before the callback ran
        for future in [*waiting[1:], blocked]:
            exc = future.exception(timeout=30)
            assert isinstance(exc, BrokenExecutor), exc
            assert isinstance(exc, farm.executor.BrokenFarmExecutor)
            assert "SystemExit" in str(exc)
        with pytest.raises(farm.executor.BrokenFarmExecutor):
            ex.submit(add, 1, 1)
        ex.shutdown(wait=True)
    finally:
        os.close(reader1)
        os.close(reader2)
        small.stop()


def test_a_result_that_cannot_be_unpickled_fails_only_its_call(ex: farm.Executor) -> None:
    # ProcessPoolExecutor breaks when it cannot unpickle a result (it cannot tell whose it
    # is); the executor knows the call, so only that call fails, even for a BaseException.
    future = ex.submit(exits_when_loaded)
    with pytest.raises(farm.JobError, match="cannot unpickle the result") as err:
        future.result(timeout=30)
    assert isinstance(err.value.__cause__, SystemExit)
    assert ex.submit(add, 1, 1).result(timeout=30) == 2


def test_an_exception_that_cannot_be_unpickled_fails_only_its_call_in_a_batch(
    ex: farm.Executor,
) -> None:
    # Calls waiting together travel as one job; the one exception that would not load in
    # the caller must not cost the batch's other calls their results.
    futures = [ex.submit(two_arg_error_at, i, 100) for i in range(300)]
    with pytest.raises(farm.JobError, match="TwoArgError: x, which cannot be unpickled"):
        futures[100].result(timeout=60)
    assert "two_arg_error_at" in str(futures[100].exception().__cause__)  # its traceback
    assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 100] == [
        i for i in range(300) if i != 100
    ]


def test_a_function_the_workers_cannot_import_says_why(
    ex: farm.Executor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A helper module beside the caller's script: the caller imports it, the farm's
    # workers (their own sys.path) cannot. The error says what to do about it.
    (tmp_path / "farm_test_beside_script.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import farm_test_beside_script  # type: ignore[import-not-found]

    exc = ex.submit(farm_test_beside_script.double, 2).exception(timeout=30)
    assert isinstance(exc, ModuleNotFoundError), exc
    assert any("not the caller's" in note for note in exc.__notes__), exc.__notes__
    sys.modules.pop("farm_test_beside_script", None)


FORK_PROGRAM = """
import os, sys, time
import farm
from tests.helpers.calls import add, nap

ex = farm.Executor(servers=sys.argv[1], key_file=sys.argv[2])
assert ex.submit(add, 1, 1).result(timeout=30) == 2
across = ex.submit(nap, 1.5)  # in flight while the child starts
pid = os.fork()
if pid == 0:
    # A future of the parent's never finishes here (its reply is the parent's to read);
    # the child's calls go out on connections of its own, and its exit waits for them only.
    try:
        across.result(timeout=1)
        print("child took the parent's reply", flush=True)
    except TimeoutError:
        pass
    print("child", ex.submit(add, 20, 22).result(timeout=30), flush=True)
    sys.exit(0)
print("parent", across.result(timeout=30), ex.submit(add, 2, 3).result(timeout=30), flush=True)
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
ex.shutdown()
"""


def test_a_forked_child_uses_the_executor_on_its_own_and_exits(
    shared_farm: ExecutorFarm,
) -> None:
    # Without its own pump the child wrote on the parent's connections (the parent's
    # calls failed: "JOB_CREATED answers no request") and its exit waited for ever on a
    # pump thread that does not exist in a child.
    run = subprocess.run(
        [sys.executable, "-c", FORK_PROGRAM, shared_farm.addr, str(shared_farm.key)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    lines = sorted(run.stdout.splitlines())
    assert lines == ["child 42", "child exit 0", "parent 1.5 5"], (lines, run.stderr)


def test_a_script_functions_remote_traceback_names_its_file_and_line(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    # cloudpickle names code it sends by value "<dynamic-code>": the traceback said
    # neither where nor what. The workers share the host, so they read the source line.
    script = tmp_path / "script_with_a_bug.py"
    script.write_text(
        "import sys\n"
        "import farm\n"
        "def divide(x):\n"
        "    return x / 0  # the line that fails\n"
        "ex = farm.Executor(servers=sys.argv[1], key_file=sys.argv[2])\n"
        "print(ex.submit(divide, 1).exception(timeout=30).__cause__)\n"
        "ex.shutdown()\n"
    )
    run = subprocess.run(
        [sys.executable, str(script), shared_farm.addr, str(shared_farm.key)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert f'File "{script}", line 4, in divide' in run.stdout, run.stdout
    assert "return x / 0  # the line that fails" in run.stdout, run.stdout


def pickling_program(ex: Executor) -> dict[str, Any]:
    """Results the worker cannot pickle: each is its call's exception, as in the pool."""
    seen: dict[str, Any] = {}
    for fn in (exits_when_pickled, unpicklable_result):
        exc = ex.submit(fn, 3).exception(timeout=30)
        has_traceback = "Traceback (most recent call last)" in str(exc.__cause__)
        seen[fn.__name__] = (type(exc).__name__, str(exc), has_traceback)
    results = ex.map(exits_when_pickled, range(5))
    got: list[Any] = [next(results), next(results), next(results)]
    with pytest.raises(SystemExit) as err:
        next(results)
    got.append(f"raised {err.value}")
    seen["map"] = got
    chunks = ex.map(exits_when_pickled, range(6), chunksize=2)
    got = [next(chunks), next(chunks)]
    with pytest.raises(SystemExit):
        next(chunks)  # 2 and 3 share a chunk
    seen["chunks"] = got
    seen["still_works"] = ex.submit(add, 1, 1).result(timeout=30)
    return seen


def test_a_result_the_worker_cannot_pickle_is_the_calls_exception(tmp_path: Path) -> None:
    small = ExecutorFarm(tmp_path, count=1)
    try:
        with ProcessPoolExecutor(1) as pool:
            expected = pickling_program(pool)
        assert expected["exits_when_pickled"][:2] == (
            "SystemExit",
            "this result will not be pickled",
        )
        with small.executor() as ex:
            assert pickling_program(ex) == expected
        with small.executor(max_workers=1) as ex:  # calls queued behind `first` go as batches
            first = ex.submit(nap, 0.2)
            futures = [ex.submit(exits_when_pickled, i) for i in range(40)]
            with pytest.raises(SystemExit, match="will not be pickled"):
                futures[3].result(timeout=30)
            assert [f.result(timeout=30) for f in futures if f is not futures[3]] == [
                i for i in range(40) if i != 3
            ]
            assert first.result(timeout=30) == 0.2
        assert small.workers[0].poll() is None, "the worker survived every call"
    finally:
        small.stop()


def test_batched_results_over_the_spill_limit_together_each_keep_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # max_spill_mb caps one call's result. Calls queued behind a busy window travel as one
    # batch, and the outcomes a batch gathers in a flush interval are pickled together: that
    # pickle alone may be over the limit, which is no call's fault.
    monkeypatch.setenv(spill.MAX_SPILL_ENV, "4")  # the workers' limit (and the caller's)
    small = ExecutorFarm(tmp_path, count=1)
    try:
        with small.executor(max_workers=1) as ex, Gate(tmp_path / "gate") as gate:
            first = ex.submit(wait_gate, gate.path)  # holds the window while the rest queue
            futures = [ex.submit(large_result, 3 << 20) for _ in range(8)]
            gate.open()
            assert first.result(timeout=30) is None
            assert [len(f.result(timeout=30)) for f in futures] == [3 << 20] * 8
            with pytest.raises(spill.SpillTooLarge, match="limit of 4 MiB"):
                ex.submit(large_result, 5 << 20).result(timeout=30)  # one alone still fails
    finally:
        small.stop()


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_does_not_keep_the_last_result_alive(ex: farm.Executor, chunksize: int) -> None:
    # bpo-14406, as CPython's test_free_reference: map's iterator holds no reference to a
    # result it yielded (nor to its future) while the caller has moved on.
    results = ex.map(box, range(4), chunksize=chunksize)
    first = next(results)
    assert first.value == 0
    ref = weakref.ref(first)
    del first
    wait_for("the yielded result to be freed", lambda: ref() is None, timeout=5)
    assert [b.value for b in results] == [1, 2, 3]


# -- signatures --


class Marker:
    """Unpickling this creates ``path``: the proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (open, (self.path, "w"))


def signed_call(signer: Signer, fn_pickle: bytes, expires: float | None = None) -> bytes:
    """A call as the Executor would sign it (a fresh id, valid for an hour unless told)."""
    until = int(time.time() + 3600 if expires is None else expires)
    body = pickle.dumps(((), {}))
    return encode_call(signer, os.urandom(CALL_ID_SIZE), until, fn_pickle, SINGLE, body)


def test_worker_refuses_unsigned_payloads_without_unpickling(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    evil = pickle.dumps(Marker(marker))
    good_key = Signer(load_key(shared_farm.key))
    other_key = Signer(b"not the farm's key!")
    wrong_mac = MAGIC + b"\0" * 32 + signed_call(good_key, evil)[36:]
    with farm.Client(shared_farm.addr) as client:
        for payload in (evil, signed_call(other_key, evil), wrong_mac):
            with pytest.raises(farm.JobException, match="SignatureError") as err:
                client.call("farm.python", payload, timeout=30)
            assert "refused without unpickling" in str(err.value) or "not signed" in str(err.value)
            assert not marker.exists()
        # The same payload with the farm's key IS unpickled: the check above can fail.
        client.call("farm.python", signed_call(good_key, evil), timeout=30)
        assert marker.exists()


def test_worker_with_another_key_refuses_the_executor(tmp_path: Path) -> None:
    small = ExecutorFarm(tmp_path, count=0)
    try:
        small.add_worker(ensure_key(tmp_path / "other.key"), name="farm.other")
        refused = pytest.raises(farm.JobException, match="SignatureError.*this farm's key")
        with small.executor(function="farm.other") as ex, refused:
            ex.submit(add, 1, 2).result(timeout=30)
    finally:
        small.stop()


def test_client_refuses_unsigned_results_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    small = ExecutorFarm(tmp_path, count=0)
    worker = farm.Worker(f"unix:{small.unix}")  # a worker the server trusts, gone bad
    worker.register("farm.fake", lambda job: MAGIC + b"\0" * 32 + pickle.dumps(Marker(marker)))
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with small.executor(function="farm.fake") as ex:
            future: Future[Any] = ex.submit(add, 1, 2)
            with pytest.raises(SignatureError):
                future.result(timeout=30)
        assert not marker.exists()
    finally:
        worker.stop()
        thread.join(10)
        small.stop()


def test_an_executor_pool_must_have_a_reserved_name(tmp_path: Path) -> None:
    # Any other name, any local user may register a worker for over TCP and read the
    # calls (and hold them: the caller waited until its timeout).
    with pytest.raises(ValueError, match="'python' is not a farm.\\* name"):
        farm.Executor(servers="unix:/nowhere", function="python", key_file=str(tmp_path / "k"))


def test_a_result_signed_for_another_call_is_refused(tmp_path: Path) -> None:
    # Whoever answers a call -- a worker that took it, or a result captured from another
    # call -- may hold a validly signed result; it must still be this call's.
    small = ExecutorFarm(tmp_path, count=0)
    signer = Signer(load_key(small.key))
    elsewhere = signer.seal(RESULT, os.urandom(CALL_ID_SIZE) + pickle.dumps((OK, 42)))
    worker = farm.Worker(f"unix:{small.unix}")
    worker.register("farm.stolen", lambda job: elsewhere)
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with (
            small.executor(function="farm.stolen") as ex,
            pytest.raises(SignatureError, match="for another call"),
        ):
            ex.submit(add, 1, 2).result(timeout=30)
    finally:
        worker.stop()
        thread.join(10)
        small.stop()


def test_a_captured_call_runs_once_and_an_expired_one_never(
    shared_farm: ExecutorFarm, tmp_path: Path
) -> None:
    # Someone who captured a signed call (it crosses the server) submits it again.
    signer = Signer(load_key(shared_farm.key))
    call = signed_call(signer, pickle.dumps(os.getpid))
    with farm.Client(shared_farm.addr) as client:
        first = client.call("farm.python", call, timeout=30)
        assert first.startswith(MAGIC), "the genuine submission ran"
        for _ in range(2):  # whichever worker takes it: the record is the pool's
            with pytest.raises(farm.JobException, match="already ran"):
                client.call("farm.python", call, timeout=30)
        stale = signed_call(signer, pickle.dumps(os.getpid), expires=time.time() - 5)
        with pytest.raises(farm.JobException, match="expired"):
            client.call("farm.python", stale, timeout=30)


def test_a_captured_call_does_not_run_again_on_a_restarted_server(tmp_path: Path) -> None:
    # A restarted server once numbered its jobs from 1 again: the captured call's new job
    # got the old job's handle, which the replay guard took for the server's own retry.
    signer = Signer(load_key(ensure_key(tmp_path / "executor.key")))
    call = signed_call(signer, pickle.dumps(os.getpid))
    for attempt in range(2):  # the same key, the same pool's record; a fresh server each
        fresh = ExecutorFarm(tmp_path, count=1)
        try:
            with farm.Client(fresh.addr) as client:
                if attempt == 0:
                    assert client.call("farm.python", call, timeout=30).startswith(MAGIC)
                else:
                    with pytest.raises(farm.JobException, match="already ran"):
                        client.call("farm.python", call, timeout=30)
        finally:
            fresh.stop()


def test_calls_that_never_left_wait_for_a_server_that_comes_back(tmp_path: Path) -> None:
    """A supervised server is restarted at once after a crash: calls still waiting in the
    executor wait for it (up to connect_timeout) instead of failing at once with "no job
    server is reachable" (only calls the dead server held have an unknown outcome)."""
    f = ExecutorFarm(tmp_path)
    try:
        with f.executor(connect_timeout=30) as ex:
            assert ex.submit(add, 1, b=1).result(timeout=30) == 2
            port = f.server.port
            f.server.stop()
            wait_for("the executor saw its server go", lambda: not ex._pump._conns)
            futures = [ex.submit(add, i, b=0) for i in range(5)]
            assert not any(fu.done() for fu in futures)  # waiting, not failed
            f.server = start_farm_server("--job-retries", "1", port=port, unix=f.unix)
            assert [fu.result(timeout=30) for fu in futures] == list(range(5))
        with f.executor(connect_timeout=0.5) as ex:
            f.server.stop()
            late = ex.submit(add, 1, b=2)
            with pytest.raises(farm.ServerUnavailable, match=r"no job server is reachable"):
                late.result(timeout=30)  # after connect_timeout: it fails, and says so
    finally:
        f.stop()
