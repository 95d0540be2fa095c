"""farm.Worker against farm's server and gearmand: reconnect after a restart, stop and
after-job hooks, registering and unregistering functions. Signals, idling and ending work
are in test_worker_signals.py, servers and jobs that misbehave in test_worker_faults.py."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

import pytest

import farm
from farm.protocol.worker import WorkerSession, WorkerState
from tests.helpers import ROOT
from tests.helpers.registered import _workers_of
from tests.helpers.servers import start_like
from tests.helpers.serving import grab_answered_late, reverse, serving
from tests.helpers.waiting import wait_for

SLEEPING = WorkerState.SLEEPING


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
