"""farm.Worker against farm's server and gearmand: reconnect after a restart, stop and
drain hooks, signals, and an idle worker that does not spin."""

from __future__ import annotations

import gc
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from typing import Any

import psutil
import pytest

import farm
from farm.protocol.worker import WorkerSession, WorkerState
from tests.helpers import ROOT
from tests.helpers.peers import Peer
from tests.helpers.servers import start_like
from tests.helpers.serving import grab_answered_late, reverse, serving
from tests.helpers.stalled import unanswered_listener
from tests.helpers.waiting import wait_for

IDLE_WINDOW = 2.0
SLEEPING = WorkerState.SLEEPING


def _workers_of(addr: str, function: str) -> int:
    peer = Peer(addr)
    try:
        rows = [line.split("\t") for line in peer.admin("status").splitlines()]
    finally:
        peer.close()
    return sum(int(r[3]) for r in rows if len(r) == 4 and r[0] == function)


def test_worker_reconnects_and_reregisters_after_a_server_restart(any_server) -> None:
    with serving(any_server.addr, {"reverse": reverse}) as w:
        with farm.Client(any_server.addr) as c:
            assert c.call("reverse", b"one") == b"eno"
        any_server.stop()
        restarted = start_like(any_server, port=any_server.port)
        try:
            with farm.Client(any_server.addr) as c:
                assert c.call("reverse", b"two", timeout=10) == b"owt"
            assert w.jobs_done == 2
        finally:
            restarted.stop()


def test_stop_from_another_thread_returns_promptly_and_unregisters(any_server) -> None:
    # The worker blocks in select() with no timeout: only stop()'s wake-up can end work(),
    # so serving()'s bounded join on exit is the promptness check.
    with serving(any_server.addr, {"idle-fn": reverse}) as w:
        wait_for("the worker registered", lambda: _workers_of(any_server.addr, "idle-fn") == 1)
    assert w.jobs_done == 0
    wait_for("the worker unregistered", lambda: _workers_of(any_server.addr, "idle-fn") == 0)


def test_stop_after_and_after_job_hook(any_server) -> None:
    seen: list[str] = []
    worker = farm.Worker(any_server.addr, client_id="hooked")

    @worker.function()
    def upper(job: Any) -> str:
        return job.text.upper()

    worker.after_job = lambda job: seen.append(job.function)
    with farm.Client(any_server.addr) as c:
        tasks = [c.submit("upper", b"abc%d" % i) for i in range(3)]
        worker.work(stop_after=2)
        assert worker.jobs_done == 2 and seen == ["upper", "upper"]
        assert [c.wait(t, 5) for t in tasks[:2]] == [b"ABC0", b"ABC1"]
        worker.work(stop_after=1)
        assert c.wait(tasks[2], 5) == b"ABC2" and worker.jobs_done == 3


def test_after_job_is_called_once_the_answer_has_left(any_server) -> None:
    # Worker's docstring: after_job is called "after its answer is sent". The answer left
    # only after after_job returned, with the next grab: a slow hook held the caller's
    # result for as long as it ran, and one that ended the process (os._exit) lost it.
    answered = threading.Event()
    waited: list[bool] = []
    worker = farm.Worker(any_server.addr, after_job=lambda job: waited.append(answered.wait(10)))
    worker.register("reverse", reverse)
    thread = threading.Thread(target=worker.work, kwargs={"stop_after": 1}, daemon=True)
    thread.start()
    try:
        with farm.Client(any_server.addr) as c:
            assert c.call("reverse", b"ab", timeout=5) == b"ba"
            answered.set()
    finally:
        answered.set()
        worker.stop()
        thread.join(10)
    assert waited == [True]


@pytest.mark.parametrize("answer_first", [True, False])
def test_an_after_job_that_raises_ends_work_with_the_answer_sent(
    any_server, answer_first: bool
) -> None:
    # The hook's error comes out of work(), as any error of the caller's code does. With
    # answer_before_hook False the answer was still queued for the next grab, which never
    # came: the caller waited, and the job ran again on the next worker.
    class HookFailed(Exception):
        pass

    def hook(job: Any) -> None:
        raise HookFailed(job.handle)

    worker = farm.Worker(any_server.addr, after_job=hook)
    worker.answer_before_hook = answer_first
    worker.register("reverse", reverse)
    with farm.Client(any_server.addr) as c:
        task = c.submit("reverse", b"ab")
        with pytest.raises(HookFailed):
            worker.work()
        assert c.wait(task, 5) == b"ba"  # while the worker's connection is still open
    worker.close()


def test_stop_after_zero_runs_no_job_and_a_negative_one_is_refused(farm_server) -> None:
    # The goal was checked only after a job ran: stop_after=0 (and -1) ran one.
    with farm.Client(farm_server.addr) as c:
        c.submit("record", b"queued", background=True)
    ran: list[bytes] = []
    worker = farm.Worker(farm_server.addr)
    worker.register("record", lambda job: ran.append(job.data))
    worker.work(stop_after=0)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="stop_after must be"):
            worker.work(stop_after=bad)  # type: ignore[arg-type]
    assert ran == []
    worker.work(stop_after=1)
    assert ran == [b"queued"]


def test_after_job_may_stop_the_worker(any_server) -> None:
    worker = farm.Worker(any_server.addr)
    worker.register("reverse", reverse)
    worker.after_job = lambda job: worker.stop()
    with farm.Client(any_server.addr) as c:
        first, second = c.submit("reverse", b"ab"), c.submit("reverse", b"cd")
        worker.work()
        assert worker.jobs_done == 1 and c.wait(first, 5) == b"ba"
        assert not c.status(second).running


def test_unregister_all_stops_taking_jobs_but_keeps_the_loop(any_server) -> None:
    with serving(any_server.addr, {"drain-fn": reverse}) as w:
        wait_for("the worker registered", lambda: _workers_of(any_server.addr, "drain-fn") == 1)
        w.unregister_all()
        wait_for("the abilities reset", lambda: _workers_of(any_server.addr, "drain-fn") == 0)
        with farm.Client(any_server.addr) as c, pytest.raises(farm.Timeout):
            c.call("drain-fn", b"x", timeout=0.3)
    assert w.jobs_done == 0


def test_a_function_registered_after_unregister_all_is_served(any_server) -> None:
    # It was advertised (CAN_DO) while the worker, drained, never grabbed again: its jobs
    # queued for ever behind a worker the server listed as able.
    with serving(any_server.addr, {"old-fn": reverse}) as w:
        wait_for("the worker registered", lambda: _workers_of(any_server.addr, "old-fn") == 1)
        w.unregister_all()
        wait_for("the abilities reset", lambda: _workers_of(any_server.addr, "old-fn") == 0)
        w.register("new-fn", reverse)
        with farm.Client(any_server.addr) as c:
            assert c.call("new-fn", b"abc", timeout=30) == b"cba"
        assert _workers_of(any_server.addr, "old-fn") == 0, "only the new one is served"
        w.unregister_all()
        w.register("newer-fn", reverse)  # before the loop acted on unregister_all: after it
        with farm.Client(any_server.addr) as c:
            assert c.call("newer-fn", b"xy", timeout=30) == b"yx"
        assert _workers_of(any_server.addr, "new-fn") == 0


def test_registration_errors_are_clear() -> None:
    w = farm.Worker("127.0.0.1:1")
    with pytest.raises(ValueError, match="function name"):
        w.register("", reverse)
    with pytest.raises(TypeError, match="callable"):
        w.register("x", "not a function")  # type: ignore[arg-type]
    for bad in (-1, float("nan"), float("inf"), 1e12, True):  # 1e12: past CAN_DO_TIMEOUT's
        with pytest.raises(ValueError, match="timeout"):
            w.register("x", reverse, timeout=bad)
    with pytest.raises(ValueError, match="no functions"):
        w.work()
    # The server refuses these (a line in its log), and the worker went unnamed.
    for bad_id in ("é" * 100, "a\nb", 5):
        with pytest.raises(ValueError, match="client_id must be"):
            farm.Worker("127.0.0.1:1", client_id=bad_id)  # type: ignore[arg-type]
    farm.Worker("127.0.0.1:1", client_id="é" * 63)  # 126 bytes
    # As the clients' are: checked here, not found out by work()'s thread dying (a str, -1)
    # or retrying a connect that can never finish (0).
    for bad_timeout in ("2", None):
        with pytest.raises(TypeError, match="connect_timeout must be"):
            farm.Worker("127.0.0.1:1", connect_timeout=bad_timeout)  # type: ignore[arg-type]
    for bad_timeout in (-1, 0, float("nan")):
        with pytest.raises(ValueError, match="connect_timeout must be"):
            farm.Worker("127.0.0.1:1", connect_timeout=bad_timeout)


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


def test_refusals_are_logged_in_one_line_a_while_not_a_traceback_each(
    farm_server, caplog: pytest.LogCaptureFixture
) -> None:
    # Anyone who reaches the server may send a farm.python worker unsigned calls by the
    # thousand: each refusal logged with its traceback flooded the journal.
    from farm.executor.signing import SignatureError

    def refuse(job: Any) -> bytes:
        raise SignatureError("a payload without a valid signature: refused")

    caplog.set_level("WARNING", logger="farm.worker")
    with serving(farm_server.addr, {"refuses": refuse}), farm.Client(farm_server.addr) as c:
        for _ in range(20):
            with pytest.raises(farm.JobException, match="SignatureError"):
                c.call("refuses", b"junk", timeout=10)
    lines = [r for r in caplog.records if r.name == "farm.worker"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "refused" in lines[0].getMessage() and lines[0].exc_info is None


@pytest.mark.timeout(120)
def test_a_job_too_large_for_the_worker_fails_once_not_forever(
    gearmand, caplog: pytest.LogCaptureFixture
) -> None:
    # gearmand takes a job over farm's 64 MiB packet limit; the worker refused its
    # JOB_ASSIGN, reconnected and was handed the same job again, some 13 times a second.
    caplog.set_level("WARNING", logger="farm.worker")
    with (
        serving(gearmand.addr, {"size": lambda j: str(len(j.data))}),
        farm.Client(gearmand.addr) as c,
    ):
        with pytest.raises(farm.JobFailed):
            c.call("size", b"a" * (65 << 20), timeout=60)
        assert c.call("size", b"ok", timeout=10) == b"2", "the worker serves on"
    refused = [r for r in caplog.records if "too large for this worker" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in caplog.records]
    assert refused[0].getMessage().startswith("job H:"), "named as every log line names a job"


def test_a_function_registered_while_the_worker_waits_is_served(any_server) -> None:
    # register() from another thread queued the CAN_DO for the loop's next event, which
    # an idle worker never had: the call timed out.
    with serving(any_server.addr, {"reverse": reverse}) as w, farm.Client(any_server.addr) as c:
        assert c.call("reverse", b"ab", timeout=10) == b"ba"
        w.register("late", lambda j: b"late " + j.data)
        assert c.call("late", b"one", timeout=10) == b"late one"


def test_a_job_that_came_after_unregister_all_does_not_stop_later_grabs(gearmand, caplog) -> None:
    # A grab answered with a job after unregister_all() had sent RESET_ABILITIES (which
    # puts the job back on the server) was skipped, but its connection stayed "working"
    # on it: a function registered later was advertised and never grabbed again. (gearmand
    # answers the grab before it reads the RESET here; farm's server, handed both at once,
    # reads the RESET first, but over a network the same race is open there too.)
    caplog.set_level(logging.DEBUG, logger="farm.worker")

    def withdraw(w: farm.Worker, session: WorkerSession) -> None:
        w.unregister_all()
        wait_for("RESET_ABILITIES sent", lambda: w._drained and not w._drain_asked)

    with grab_answered_late(gearmand, withdraw) as w:
        wait_for(
            "the job skipped", lambda: any("not run here" in r.message for r in caplog.records)
        )
        w.register("late-fn", reverse)
        with farm.Client(gearmand.addr) as c:
            assert c.call("late-fn", b"xyz", timeout=10) == b"zyx"


def test_the_function_decorator_without_parentheses_registers_too(any_server) -> None:
    # @worker.function took the function for its name: nothing was registered, and the
    # name was bound to the inner decorator (the call timed out, unserved).
    worker = farm.Worker(any_server.addr)

    @worker.function
    def shout(job: farm.worker.Job) -> bytes:
        return job.data.upper()

    @worker.function("quiet", timeout=30)
    def whisper(job: farm.worker.Job) -> bytes:
        return job.data.lower()

    assert shout.__name__ == "shout" and whisper.__name__ == "whisper"
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    try:
        with farm.Client(any_server.addr) as c:
            assert c.call("shout", b"hi", timeout=10) == b"HI"
            assert c.call("quiet", b"HI", timeout=10) == b"hi"
    finally:
        worker.stop()
        thread.join(10)


def test_a_server_that_hangs_up_at_once_is_retried_with_backoff_not_in_a_spin() -> None:
    # docs/client.md: 50 ms doubling to 5 s. Without it a worker whose server closes each
    # connection (full, or dying as it starts) reconnects in a tight loop, a core's worth.
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[float] = []

    def hang_up() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            accepted.append(time.monotonic())
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    worker = farm.Worker(f"127.0.0.1:{listener.getsockname()[1]}")
    worker.register("f", lambda job: b"")
    serving_thread = threading.Thread(target=worker.work, daemon=True)
    serving_thread.start()
    try:
        wait_for("five connections", lambda: len(accepted) >= 5, timeout=20)
    finally:
        worker.stop()
        serving_thread.join(10)
        listener.close()
    gaps = [b - a for a, b in zip(accepted, accepted[1:], strict=False)][:4]
    # 50, 100, 200, 400 ms: each at least the one before (scheduling only adds to them)
    assert gaps[3] >= 0.35 and sum(gaps) >= 0.7, gaps


def test_farm_worker_job_resolves_in_a_fresh_interpreter() -> None:
    # docs/client.md annotates functions with farm.worker.Job: in a script whose annotations
    # are evaluated (typing.get_type_hints, pydantic, a dataclass), `farm.worker` did not
    # exist until something had touched farm.Worker.
    code = (
        "import typing, farm\n"
        "def f(job: farm.worker.Job) -> bytes: ...\n"
        "assert typing.get_type_hints(f)['job'] is farm.Job\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.stdout == "ok\n", out.stderr


def test_a_server_that_does_not_answer_holds_no_jobs_of_the_others(any_server) -> None:
    # A worker of two servers, one of them accepting no connection (its backlog full): each
    # connect to it blocked the whole loop for connect_timeout, and the other's jobs waited.
    with unanswered_listener() as hung:
        servers = [hung, any_server.addr]
        fns = {"reverse": reverse}
        with serving(servers, fns, connect_timeout=120), farm.Client(any_server.addr) as c:
            for data in (b"ab", b"cd", b"ef"):
                assert c.call("reverse", data, timeout=30) == data[::-1]


@pytest.mark.timeout(20)
def test_a_name_that_cannot_be_sent_raises_its_own_error_not_the_cleanups() -> None:
    # The connection was closed in work()'s cleanup before the selector knew it: a KeyError
    # ("<socket ...> is not registered") hid why the worker could not start.
    with socket.socket() as listener:  # connect() completes in its backlog: enough here
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        worker = farm.Worker(f"127.0.0.1:{listener.getsockname()[1]}")
        # register() refuses such a name now (c8107cc); put it in the table past it, so
        # that work() itself fails at the CAN_DO as it connects, and its cleanup runs.
        worker._functions["\ud800"] = reverse  # a surrogate that stands for no byte
        worker._timeouts["\ud800"] = None
        with pytest.raises(UnicodeEncodeError):
            worker.work(stop_after=1)
        worker.close()
