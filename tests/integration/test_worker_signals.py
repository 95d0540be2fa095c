"""farm.Worker's signals and ending work, against farm's server and gearmand: SIGTERM
finishes the job in hand, a forked child exits, an idle worker does not spin, stop from a
signal handler, the wakeup fd given back, and stop or close ending work() at once."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import threading
import time
import warnings

import psutil
import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.registered import _workers_of
from tests.helpers.serving import reverse
from tests.helpers.waiting import wait_for

IDLE_WINDOW = 2.0


def _farm_worker(addr: str, target: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker", target]
    return subprocess.Popen([*cmd, "--server", addr, *extra], cwd=ROOT)


def test_sigterm_finishes_the_job_in_hand_then_exits_0(any_server, tmp_path) -> None:
    # The job holds until the test says go (tests.helpers.crashy:hold): the signal lands
    # mid-job however slowly the test runs.
    proc = _farm_worker(any_server.addr, "tests.helpers.crashy:hold")
    try:
        with farm.Client(any_server.addr) as c:
            task = c.submit("hold", str(tmp_path).encode())
            wait_for("the job running", lambda: (tmp_path / f"started-{proc.pid}").exists())
            proc.send_signal(signal.SIGTERM)
            assert proc.poll() is None
            (tmp_path / "go").touch()
            assert c.wait(task, 20) == str(proc.pid).encode()
        assert proc.wait(5) == 0
    finally:
        proc.kill()


@pytest.mark.parametrize(("how", "status"), [("return", 0), ("exit 3", 3), ("raise", 1)])
def test_a_child_a_job_forked_that_comes_back_out_of_it_exits(
    farm_server, how: str, status: int
) -> None:
    # A child that returned or raised out of the job function, where it should have called
    # os._exit(), was a second worker on the same connection: it answered the job, and
    # then the two read one socket (farm.forkedchild). It exits, and the worker answers.
    proc = _farm_worker(farm_server.addr, "tests.helpers.crashy:fork_back")
    try:
        with farm.Client(farm_server.addr) as c:
            assert c.call("fork_back", how, timeout=30) == f"parent {status}".encode()
            assert c.call("fork_back", how, timeout=30) == f"parent {status}".encode()
    finally:
        proc.kill()
        proc.wait(10)


def test_idle_worker_sleeps_without_burning_cpu(any_server) -> None:
    proc = _farm_worker(any_server.addr, "workers.text:reverse")
    try:
        wait_for("the worker registered", lambda: _workers_of(any_server.addr, "reverse") == 1)
        ps = psutil.Process(proc.pid)
        cpu, switches = sum(ps.cpu_times()[:2]), sum(ps.num_ctx_switches())
        time.sleep(IDLE_WINDOW)  # watching an idle process needs idle wall time
        wakeups = sum(ps.num_ctx_switches()) - switches
        used = sum(ps.cpu_times()[:2]) - cpu
        # Blocked in select() without a timeout, the worker is never scheduled, however
        # loaded the machine: no wake-ups and no CPU. A polling loop wakes hundreds of
        # times a window; a spinning one takes most of the window in CPU.
        assert wakeups < 20, f"idle worker woke {wakeups} times in {IDLE_WINDOW}s"
        assert used < IDLE_WINDOW / 4, f"idle worker used {used:.3f}s CPU in {IDLE_WINDOW}s"
        with farm.Client(any_server.addr) as c:
            assert c.call("reverse", b"awake", timeout=5) == b"ekawa"
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(5) == 0


def test_stop_is_safe_from_a_signal_handler(any_server) -> None:
    worker = farm.Worker(any_server.addr)
    worker.register("reverse", reverse)
    handled = threading.Event()

    def on_usr1(*_: object) -> None:
        worker.stop()
        handled.set()

    def signal_once_registered() -> None:
        wait_for("the worker registered", lambda: _workers_of(any_server.addr, "reverse") == 1)
        # To the main thread itself: a process-wide kill may land in any thread (this one, or
        # a pool's left by an earlier test), and then nothing interrupts the main thread's
        # select() to run the Python handler.
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, on_usr1)
    try:
        threading.Thread(target=signal_once_registered, daemon=True).start()
        # work() blocks in select() without a timeout: returning at all means the handler's
        # stop() woke it (pytest-timeout fails a hang).
        worker.work()
        assert handled.is_set() and worker.jobs_done == 0
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_work_in_the_main_thread_holds_the_signal_wakeup_fd_then_gives_it_back(
    any_server,
) -> None:
    # A signal that lands after the loop's last check and before its select sleeps would
    # run its handler (and its stop()) only once the select returned for something else,
    # which for an idle worker is never. The wake-up fd closes that window; this test pins
    # that work() sets it (seen from a job, which runs in work()'s thread) and restores it.
    seen: list[int] = []

    def peek(job: farm.Job) -> bytes:
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
        seen.append(fd)
        return b""

    assert signal.set_wakeup_fd(-1) == -1
    worker = farm.Worker(any_server.addr)
    worker.register("peek", peek)
    answers: list[bytes] = []
    with farm.Client(any_server.addr) as client:
        caller = threading.Thread(
            target=lambda: answers.append(client.call("peek", b"")), daemon=True
        )
        caller.start()
        worker.work(stop_after=1)
        caller.join(30)  # the answer is read before the client closes
    assert answers == [b""]
    assert seen and seen[0] != -1
    assert signal.set_wakeup_fd(-1) == -1, "work() left its wake-up fd installed"


@pytest.mark.timeout(10)
def test_a_stop_before_work_makes_work_return_at_once(any_server) -> None:
    """A SIGTERM that lands while a worker process still sets up (farm.pools.workerproc
    installs its handler before work()) must not be forgotten: the supervisor, draining a
    pool with no timeout, would wait for ever on a worker that keeps taking jobs."""
    w = farm.Worker(any_server.addr)
    w.register("never", lambda job: b"")
    w.stop()
    done = threading.Event()
    threading.Thread(target=lambda: (w.work(), done.set()), daemon=True).start()
    assert done.wait(5), "work() ignored the stop() that came before it"
    assert _workers_of(any_server.addr, "never") == 0
    # Cleared when work() returned: the same worker may serve again.
    w.register("again", lambda job: b"ok")
    threading.Thread(target=w.work, daemon=True).start()
    with farm.Client(any_server.addr) as c:
        assert c.call("again", b"") == b"ok"
    w.stop()


@pytest.mark.timeout(30)
def test_a_worker_holds_no_socket_once_work_returned_and_close_ends_it(farm_server) -> None:
    # Its wake-up socket pair, opened in __init__, was never closed: two ResourceWarnings
    # for every Worker (the docs' example among them), and no close() to call.
    gc.collect()  # what earlier tests in this process left: its warnings are not this one's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with farm.Worker(farm_server.addr) as worker:
            worker.register("reverse", reverse)
            serving = threading.Thread(target=worker.work, kwargs={"stop_after": 1})
            serving.start()
            with farm.Client(farm_server.addr) as c:
                assert c.call("reverse", b"ab", timeout=10) == b"ba"
            serving.join(10)
            assert not serving.is_alive()
        with pytest.raises(RuntimeError, match="closed"):
            worker.work()
        del worker
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


@pytest.mark.timeout(30)
def test_close_from_another_thread_ends_work(farm_server) -> None:
    worker = farm.Worker(farm_server.addr)
    worker.register("idle-fn", reverse)
    serving = threading.Thread(target=worker.work)
    serving.start()
    wait_for("the worker registered", lambda: _workers_of(farm_server.addr, "idle-fn") == 1)
    worker.close()
    serving.join(10)
    assert not serving.is_alive(), "close() did not end work()"
    wait_for("the worker unregistered", lambda: _workers_of(farm_server.addr, "idle-fn") == 0)


@pytest.mark.timeout(30)
def test_a_verbose_worker_says_what_it_serves_and_where(farm_server) -> None:
    # `farm worker -v` logged nothing while it served: its INFO lines told of outages only.
    cmd = [sys.executable, "-c", "from farm.cli import main; main()", "worker"]
    proc = subprocess.Popen(
        [*cmd, "workers.text:reverse", "--server", farm_server.addr, "-v"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the pytest-timeout bounds the wait
        assert f"serving 'reverse' (workers.text:reverse) from {farm_server.addr};" in line, line
        with farm.Client(farm_server.addr) as c:
            assert c.call("reverse", b"abc", timeout=10) == b"cba"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
