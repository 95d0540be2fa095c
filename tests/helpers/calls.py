"""Functions the executor tests send by reference: worker processes (started in the
repository root) and ProcessPoolExecutor's children import them from here; and the
start method of the pools they are compared with (``POOL_CONTEXT``)."""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable

#: The compared pools' processes come from a fork server, not a fork of the test process,
#: which runs farm.Executor's threads: Python 3.12 and later warn of such a fork (3.14 makes
#: forkserver the default), and farm's workers are not forked from their caller either.
POOL_CONTEXT = multiprocessing.get_context("forkserver")


def add(a: int, b: int = 0) -> int:
    return a + b


def fails(x: int) -> int:
    if x == 3:
        raise ValueError(f"bad input {x}")
    return x * 10


def nap(seconds: float) -> float:
    time.sleep(seconds)  # stands in for a call that takes a while
    return seconds


def long_at(i: int, at: int, seconds: float) -> int:
    """A call of a batch: the one at ``at`` takes ``seconds`` (past a pool's timeout)."""
    if i == at:
        time.sleep(seconds)
    return i


def pid_then_block(fifo: str) -> int:
    """Write this process's pid to ``fifo`` (the test's sign that the call started), then hang."""
    with open(fifo, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(60)  # until the test kills this worker
    return 0


def batch_step(i: int, fifo: str, slow_at: int, block_at: int) -> int:
    """A call of a batch: the one at ``slow_at`` takes longer than the batch's flush interval
    (so the batch sends the outcomes it has so far), the one at ``block_at`` hangs like
    ``pid_then_block``."""
    from farm.executor.batchflush import BATCH_FLUSH_EVERY

    if i == slow_at:
        time.sleep(2.5 * BATCH_FLUSH_EVERY)
    if i == block_at:
        pid_then_block(fifo)
    return i


class ExitsWhenPickled:
    """A result whose pickling raises SystemExit (a BaseException) in the worker."""

    def __reduce__(self) -> tuple[object, ...]:
        raise SystemExit("this result will not be pickled")


class ExitsWhenLoaded:
    """A result that pickles, but whose unpickling raises SystemExit in the caller."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, ("this result will not be unpickled",))


class Box:
    """A result object the test can hold a weak reference to."""

    def __init__(self, value: int) -> None:
        self.value = value


def exits_when_pickled(i: int = 0) -> object:
    """Returns ``i``, except for 3, whose result cannot be sent back (SystemExit)."""
    return ExitsWhenPickled() if i == 3 else i


def exits_when_loaded() -> ExitsWhenLoaded:
    return ExitsWhenLoaded()


def unpicklable_result(i: int = 0) -> object:
    return threading.Lock()


class TwoArgError(Exception):
    """Pickles, but does not unpickle: ``args`` holds one of the two that ``__init__`` wants."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(a)


def two_arg_error_at(i: int, at: int) -> int:
    """Returns ``i``, except at ``at``, where it raises an exception that will not unpickle."""
    if i == at:
        raise TwoArgError("x", "y")
    return i


def box(value: int) -> Box:
    return Box(value)


#: What ``init_state`` last set in this process (read by ``get_init_state``).
INIT_STATE = "uninitialized"


def init_state(value: str) -> None:
    """An Executor initializer: records ``value`` in this worker process."""
    global INIT_STATE
    INIT_STATE = value


def get_init_state(_: object = None) -> str:
    return INIT_STATE


def init_fails(*_: object) -> None:
    raise ValueError("error in initializer")


def init_dies(*_: object) -> None:
    """An initializer that ends its worker process at once (as a crash in C would)."""
    os._exit(3)


def init_tells_then_waits(directory: str, gate: str) -> None:
    """An Executor initializer that leaves ``directory/init.PID`` and then, while
    ``directory/slow`` exists, waits at ``gate``: a healthy, slow initializer."""
    with open(os.path.join(directory, f"init.{os.getpid()}"), "w"):
        pass
    if os.path.exists(os.path.join(directory, "slow")):
        wait_gate(gate)


def getpid(_: object = None) -> int:
    return os.getpid()


def wait_gate(path: str) -> None:
    """Block until the test opens the gate at ``path`` (tests.helpers.gate.Gate): connect to
    its Unix socket and wait until the test closes it. Already open: return at once."""
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(path)
            sock.recv(1)  # b"" or a reset: the test closed the listener
        except OSError:
            pass  # refused, gone or reset: the gate is open


def wait_gate_and_raise(path: str) -> None:
    wait_gate(path)
    raise Exception("this is an exception")


def wait_gate_then_tell(gate: str, path: str) -> str:
    """Block at the gate, then say so (``tell``): a call that runs on after its caller left."""
    wait_gate(gate)
    return tell(path)


def raise_runtime_error_123() -> None:
    raise RuntimeError(123)  # some comment


def identity(value: object) -> object:
    """The argument back: a large one comes back through a spill file too."""
    return value


def nested(depth: int) -> list[object]:
    """A list in a list ``depth`` deep: past the recursion limit, no pickler can write it."""
    out: list[object] = []
    for _ in range(depth):
        out = [out]
    return out


def nbytes_after_gate(data: bytes, gate: str) -> int:
    wait_gate(gate)
    return len(data)


def large_result(size: int) -> bytes:
    return b"\x01" * size


def large_result_after_gate(gate: str, size: int) -> bytes:
    """A result over the spill threshold (a file the worker writes), once the gate opens."""
    wait_gate(gate)
    return b"\x02" * size


def batch_gate_step(i: int, gate: str, slow_at: int, block_at: int) -> int:
    """A call of a batch, as ``batch_step``, whose call at ``block_at`` waits at the gate."""
    from farm.executor.batchflush import BATCH_FLUSH_EVERY

    if i == slow_at:
        time.sleep(2.5 * BATCH_FLUSH_EVERY)  # past a flush: the outcomes so far leave first
    if i == block_at:
        wait_gate(gate)
    return i


def spill_and_die(size: int) -> None:
    """Leave a result file behind, as a worker killed while writing one, and die (kill -9)."""
    import signal

    from farm.executor import spill

    spill.write(spill.worker_settings(), b"\x00" * size, "r")
    os.kill(os.getpid(), signal.SIGKILL)


def leave_result_file() -> str:
    """Write a result file as a worker does, and leave it, as one killed before answering;
    its path (the worker's spill directory, which the supervisor must sweep)."""
    from farm.executor import spill

    reference = spill.write(spill.worker_settings(), b"\x00" * 10, "r")
    return str(spill.reference_path(reference))


def tell(path: str) -> str:
    """Send one datagram to the Unix socket at ``path``: the test's sign that the call ran."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"ran", path)
    return path


def size_plus(data: bytes, x: int) -> int:
    """With ``data`` of over 1 MiB bound by functools.partial: a function the executor sends
    as a spill file shared by its calls."""
    return len(data) + x


class Tally:
    """A callable with state: what its calls saw so far (each call gets a fresh copy, as
    ProcessPoolExecutor pickles the callable with each call)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def add(self, x: int) -> list[int]:
        self.seen.append(x)
        return list(self.seen)

    def __call__(self, x: int) -> list[int]:
        return self.add(x)


def append_to(seen: list[int], x: int) -> list[int]:
    seen.append(x)
    return list(seen)


def nested_warnings(servers: str, key_file: str, function: str, run: bool) -> list[str]:
    """Run inside a farm call: make an Executor for ``function`` (and with ``run``, let it
    run one call); the warnings that raised."""
    import warnings

    import farm

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with farm.Executor(1, servers=servers, key_file=key_file, function=function) as inner:
            if run:
                assert inner.submit(abs, -2).result(timeout=30) == 2
    return [str(w.message) for w in caught]


def tell_wait_then_nest(told: str, gate: str, config: dict[str, object], n: int) -> list[int]:
    """An outer joblib task: say it runs (``tell``), wait at the gate (so each worker of the
    pool holds one), then run an inner Parallel with ``config`` (the farm backend)."""
    from joblib import Parallel, delayed, parallel_config

    import farm.joblib  # noqa: F401  (registers the backend in this worker)

    tell(told)
    wait_gate(gate)
    with parallel_config(**config):  # type: ignore[arg-type]
        return list(Parallel(n_jobs=2)(delayed(add)(i, i) for i in range(n)))


def fork_and_come_back(how: str, tally: str | None = None) -> tuple[str, int | None]:
    """Fork, and let the child come back out of the call where it should ``os._exit()``:
    it returns, ``sys.exit(3)``s or raises (``how``: "return", "exit 3", "raise"). The parent
    returns the child's exit status, or None when the child still runs 10 s on (it is
    killed then: it would go on serving the worker's connection). ``tally``: a file that
    gets a line each time the call runs (in any process)."""
    if tally is not None:
        with open(tally, "a") as f:
            f.write(f"{os.getpid()}\n")
    pid = os.fork()
    if pid == 0:
        if how == "exit 3":
            sys.exit(3)
        if how == "raise":
            raise ValueError("the forked child raises")
        return ("child", None)
    ended = select.select([os.pidfd_open(pid)], [], [], 10)[0]
    if not ended:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return ("parent", os.waitstatus_to_exitcode(status) if ended else None)


def grow(mb: int) -> int:
    """Touch ``mb`` MiB, 10 at a time (past a pool's kill_rss_mb on the way)."""
    chunks = []
    for _ in range(mb // 10):
        chunks.append(bytearray(b"\x01") * (10 << 20))
        time.sleep(0.01)
    return len(chunks)


async def afetch(x: int) -> int:
    """An async def function, submitted as if it were a plain one."""
    return x * 2


async def astream(x: int) -> AsyncIterator[int]:
    yield x


def adder(n: int) -> Callable[[int], int]:
    """A closure: the worker sends it back by value, as its Python's bytecode."""
    return lambda x: x + n


def adder_at(n: int, at: int) -> object:
    """``n``, but ``adder(n)`` (code by value) for the call whose ``n`` is ``at``."""
    return adder(n) if n == at else n
