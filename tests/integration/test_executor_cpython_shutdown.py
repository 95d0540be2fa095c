"""CPython's test_shutdown.py (ExecutorShutdownTest) and test_init.py (the initializer
mixins), with farm.Executor under test.

Adapted as test_executor_cpython.py says: our code, CPython's checks, a real `farm up`;
each test names the CPython test it adapts.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from concurrent.futures import BrokenExecutor

import pytest

import farm
from tests.helpers import ROOT, cpythonfarm
from tests.helpers.calls import get_init_state, init_fails, init_state, nap
from tests.helpers.cpythonfarm import WORKERS, Farm

# The fixtures, taken by assignment: pytest finds them as if defined here, and no
# import stands unused beside the parameters that name them.
shared = cpythonfarm.shared
executor = cpythonfarm.executor

pytestmark = pytest.mark.timeout(90)

# -- test_shutdown.py: ExecutorShutdownTest --


def test_run_after_shutdown(executor: farm.Executor) -> None:
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 5)


def run_script(shared: Farm, body: str) -> subprocess.CompletedProcess[str]:
    script = "import farm\n" + textwrap.dedent(body)
    env = dict(os.environ, FARM_KEY_FILE=str(shared.key), PYTHONPATH=str(ROOT))
    env["FARM_SERVERS"] = shared.servers[0]
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_interpreter_shutdown(shared: Farm) -> None:
    done = run_script(
        shared,
        """
        from tests.helpers.calls import add
        t = farm.Executor(5)
        f = t.submit(add, "app", "le")
        f.add_done_callback(lambda f: print(f.result(), flush=True))
        """,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == "apple"


def test_submit_after_interpreter_shutdown(shared: Farm) -> None:
    done = run_script(
        shared,
        """
        import atexit
        @atexit.register
        def run_last():
            try:
                t.submit(id, None)
            except RuntimeError:
                print("runtime-error")
                raise
        t = farm.Executor(5)
        t.submit(id, 42).result()
        """,
    )
    assert "RuntimeError: cannot schedule new futures" in done.stderr
    assert done.stdout.strip() == "runtime-error"


def test_submit_from_a_thread_after_the_main_thread_ended(shared: Farm) -> None:
    # ProcessPoolExecutor's exit hook runs before non-daemon threads are joined
    # (threading._register_atexit): a thread that submits after the main thread ended is
    # refused. The executor's hook ran at atexit, after those joins, and the call ran.
    done = run_script(
        shared,
        """
        import threading
        t = farm.Executor(2)
        t.submit(id, 42).result()
        ended = threading.Event()
        def late():
            threading.main_thread().join()  # the main thread ended: the exit hooks ran
            try:
                t.submit(id, None)
            except RuntimeError as exc:
                print("refused:", exc, flush=True)
            else:
                print("accepted", flush=True)
        threading.Thread(target=late).start()
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "refused: cannot schedule new futures after interpreter shutdown"
    ), done.stdout


def test_hang_issue12364(executor: farm.Executor) -> None:
    fs = [executor.submit(nap, 0.01) for _ in range(50)]
    executor.shutdown()
    for f in fs:
        f.result()


def test_cancel_futures(executor: farm.Executor) -> None:
    fs = [executor.submit(nap, 0.1) for _ in range(50)]
    executor.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) > 20
    others = [f for f in fs if not f.cancelled()]
    assert others and all(f.done() and f.exception() is None for f in others)


def test_hang_gh83386(shared: Farm) -> None:
    done = run_script(
        shared,
        """
        from tests.helpers.calls import nap
        t = farm.Executor(max_workers=3)
        t.submit(nap, 0.5).add_done_callback(lambda f: print("apple", flush=True))
        t.shutdown(wait=False)
        """,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.strip() == "apple"


def test_hang_gh94440(shared: Farm) -> None:
    # pytest-timeout stands in for CPython's alarm.
    executor = shared.executor(1)
    executor.submit(int).result()
    executor.submit(int).cancel()
    executor.shutdown(wait=True)


def test_context_manager_shutdown(shared: Farm) -> None:
    with shared.executor(5) as e:
        assert list(e.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert e._thread is not None and not e._thread.is_alive()


def test_del_shutdown(shared: Farm) -> None:
    executor = shared.executor(5)
    results = executor.map(abs, range(-5, 5))
    thread = executor._thread
    del executor
    gc.collect()
    assert thread is not None
    thread.join(30)
    assert not thread.is_alive()
    assert list(results) == [abs(v) for v in range(-5, 5)]


def test_shutdown_no_wait(shared: Farm) -> None:
    executor = shared.executor(5)
    results = executor.map(abs, range(-5, 5))
    executor.shutdown(wait=False)
    assert executor._thread is not None
    executor._thread.join(30)
    assert list(results) == [abs(v) for v in range(-5, 5)]


# -- test_init.py: InitializerMixin and FailingInitializerMixin --


def test_initializer(shared: Farm) -> None:
    executor = shared.executor(WORKERS, initializer=init_state, initargs=("initialized",))
    fs = [executor.submit(get_init_state) for _ in range(WORKERS)]
    assert [f.result() for f in fs] == ["initialized"] * WORKERS
    executor.shutdown()


def test_failing_initializer(shared: Farm, caplog: pytest.LogCaptureFixture) -> None:
    executor = shared.executor(WORKERS, initializer=init_fails)
    try:
        future = executor.submit(get_init_state)
    except BrokenExecutor:
        pass
    else:
        with pytest.raises(BrokenExecutor):
            future.result()
    # The executor is broken once a future says so; from then on submit fails.
    with pytest.raises(BrokenExecutor):
        executor.submit(get_init_state)
    assert any("ValueError: error in initializer" in r.getMessage() for r in caplog.records)
    executor.shutdown()
