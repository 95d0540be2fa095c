"""What every executor of a process shares: the drain at interpreter exit, fork(), and
the lock of their futures.

At exit, every executor finishes what was submitted, as ProcessPoolExecutor does. A child
forked after an executor sent calls inherits its pump: the parent's connections, its
wake-up pipe and a thread that does not exist in the child. Writing on those would
break the parent's calls, and waiting for that thread would never end. So a fork starts
a new generation: an executor first used in the child gets a pump of its own there
(``Executor._renew``), and the child's exit waits only for the child's pumps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref

from farm.executor.pump import Pump

__all__ = ["EXIT_QUIET", "state", "started", "renewing"]

log = logging.getLogger("farm.executor")

#: At exit, how long the drain waits before it says what it waits for (seconds).
EXIT_QUIET = 10.0


class _State:
    """Read on every submit: a plain object, no lock."""

    exiting = False  # set by the exit hook: no executor takes new calls after it
    generation = 0  # one more in each forked child
    #: The Condition of every executor's futures (CallFuture), one for the process:
    #: concurrent.futures.wait() and as_completed() lock the futures given them in id()
    #: order, and with a lock per executor two threads waiting on futures of two executors
    #: could take the two locks in opposite orders and wait for each other for good. Sets
    #: that mix them with other pools' futures still can (docs/executor.md says so): only
    #: a lock per future avoids that, which cost a fifth of the caller's CPU on tiny calls.
    condition = threading.Condition()


state = _State()
_live_pumps: weakref.WeakSet[Pump] = weakref.WeakSet()
_renew_lock = threading.Lock()


def started(pump: Pump) -> None:
    """A pump whose thread runs: the exit drains it."""
    _live_pumps.add(pump)


def renewing() -> threading.Lock:
    """Held while an executor replaces the pump it inherited through fork()."""
    return _renew_lock


def _after_fork_in_child() -> None:
    global _live_pumps, _renew_lock
    state.generation += 1
    state.condition = threading.Condition()  # a thread of the parent may have held it
    for pump in list(_live_pumps):
        # Inert at once, not at the executor's next use: a result() on a future of the
        # parent's would read the parent's replies off the parent's sockets.
        pump.forget()
    _live_pumps = weakref.WeakSet()  # the parent's pumps have no thread here
    _renew_lock = threading.Lock()  # another thread of the parent may have held it


os.register_at_fork(after_in_child=_after_fork_in_child)


def _drain_at_exit() -> None:
    """At interpreter exit, every executor finishes what was submitted (as ProcessPoolExecutor)."""
    state.exiting = True
    try:
        for pump in list(_live_pumps):
            pump.stop()
        for pump in list(_live_pumps):
            if not pump.finished.wait(EXIT_QUIET):
                # Silence here looks like a hang: say what the exit waits for (calls queued on
                # a server with no worker for them wait until one comes, as a pool's would).
                log.warning(
                    "exiting: waiting for the calls of %r still on the farm (Ctrl-C abandons them)",
                    pump.function,
                )
                pump.finished.wait()
    except BaseException:
        # Ctrl-C abandons the calls (docs/executor.md): their files go now, as shutdown()
        # removes what is left; the sweep is for killed processes. A worker still reading
        # one fails its call, whose result no one waits for. BaseException: a second Ctrl-C
        # landing while the first unwinds Event.wait() turns it into "RuntimeError: release
        # unlocked lock" (CPython gh-78667), and the files stayed for the sweep.
        _abandon()
        raise


def _abandon() -> None:
    """Remove the files of every pump's calls, further Ctrl-Cs ignored meanwhile (a hurried
    user presses it again, and one landing in the removal left the rest of the files)."""
    ignoring = False
    for _ in range(2):  # signal.signal() raises a Ctrl-C pending before it swaps: once more
        try:
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except KeyboardInterrupt:
            continue
        except ValueError:  # not the main thread: Ctrl-C is not raised in this one
            break
        ignoring = True
        break
    try:
        for pump in list(_live_pumps):
            hook, pump.on_finished = pump.on_finished, None
            if hook is not None:
                hook()
    finally:
        if ignoring:
            signal.signal(signal.SIGINT, previous)


# Where ProcessPoolExecutor registers its own: run as the main thread ends, before the
# non-daemon threads are joined, so that one of them submitting after that is refused as
# the pool refuses it. With atexit, the hook ran after those joins, and their calls ran.
try:
    threading._register_atexit(_drain_at_exit)  # type: ignore[attr-defined]
except RuntimeError:  # first imported by an exit hook, the shutdown under way: no new calls
    state.exiting = True
