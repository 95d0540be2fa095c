"""farm.Client shared where it should not be: across fork() (gunicorn --preload,
multiprocessing's fork), and across threads."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from typing import Any

import pytest

import farm
from tests.helpers import ROOT
from tests.helpers.servers import Server
from tests.helpers.serving import reverse, serving

FORK_PROGRAM = """
import os, sys
import farm

c = farm.Client(sys.argv[1])
assert c.call("reverse", "parent") == b"tnerap"
unserved = c.submit("nobody.serves.this", "x")  # in flight across the fork, never answered

def calls(who):
    for i in range(100):
        sent = f"{who}-{i}"
        got = c.call("reverse", sent, timeout=10)
        assert got == sent[::-1].encode(), (sent, got)

pid = os.fork()
if pid == 0:
    try:
        c.wait(unserved, 5)
    except farm.ServerUnavailable as exc:  # not a Timeout: its reply goes to the parent
        assert "forked" in str(exc), exc
    calls("child")
    c.close()  # the child's copies only: the parent's connection stays registered
    print("child done", flush=True)
    os._exit(0)
calls("parent")
_, status = os.waitpid(pid, 0)
closer = os.fork()
if closer == 0:
    c.close()  # its first use: unregistering the sockets from the shared epoll muted the parent
    os._exit(0)
os.waitpid(closer, 0)
calls("parent-after")
c.abandon(unserved)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
print("parent done", flush=True)
"""


def test_a_forked_child_gets_connections_of_its_own(farm_server: Server) -> None:
    # gunicorn --preload: a Client used in the master, then every worker forked from it.
    # The child wrote on the parent's sockets and both read each other's replies (calls
    # timed out on both sides, or the parent's connection was dropped as "went away").
    with serving(farm_server.addr, {"reverse": reverse}):
        run = subprocess.run(
            [sys.executable, "-c", FORK_PROGRAM, farm_server.addr],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == ["child done", "child exit 0", "parent done"], (
        run.stdout,
        run.stderr,
    )


def test_a_second_thread_inside_a_client_is_refused(farm_server: Server) -> None:
    # Two threads in one Client read one socket: results went to the wrong callers, and
    # nothing said so (18 of 800 calls of 8 threads). Documented as not thread-safe, now
    # refused; handing a client from one thread to another stays allowed.
    entered, release = threading.Event(), threading.Event()

    def held(job: Any) -> bytes:
        entered.set()
        release.wait(30)
        return b"held " + job.data

    def steps(job: Any) -> bytes:
        job.send_status(1, 2)
        return job.data

    got: list[bytes] = []
    with (
        serving(farm_server.addr, {"held": held}),
        serving(farm_server.addr, {"reverse": reverse, "steps": steps}),
        farm.Client(farm_server.addr) as c,
    ):
        first = threading.Thread(target=lambda: got.append(c.call("held", "a", timeout=30)))
        first.start()
        try:
            assert entered.wait(10)
            for refused in (
                lambda: c.call("reverse", "b", timeout=5),
                lambda: list(c.map("reverse", ["c"])),
                lambda: c.echo(),
            ):
                with pytest.raises(RuntimeError, match="in use by another thread"):
                    refused()
        finally:
            release.set()
            first.join(30)
        assert got == [b"held a"]
        assert c.call("reverse", "d", timeout=10) == b"d"  # the other thread left it

        def progress(numerator: int, denominator: int) -> None:
            got.append(c.echo(b"from a callback"))  # the same thread comes back in

        assert c.call("steps", "e", timeout=10, on_status=progress) == b"e"
        assert got == [b"held a", b"from a callback"]


@pytest.mark.timeout(30)
def test_a_task_waited_for_on_a_client_that_did_not_submit_it_is_refused(
    any_server: Server,
) -> None:
    # One Client per thread, as documented, and a task handed from one to the other: the
    # other's wait() read its own connections, where the task's end never comes, and
    # waited for ever (with no connection yet, a Timeout "not done within Nones" at once).
    # It says ValueError until the task is done (AsyncClient too: the test below).
    release = threading.Event()

    def held(job: Any) -> bytes:
        release.wait(20)
        return job.data

    with (
        serving(any_server.addr, {"held": held}),
        serving(any_server.addr, {"reverse": reverse}),
        farm.Client(any_server.addr) as mine,
        farm.Client(any_server.addr) as other,
    ):
        task = mine.submit("held", "x")
        try:
            with pytest.raises(ValueError, match="not submitted by this client"):
                other.wait(task)  # no connection of its own yet
            assert other.call("reverse", "ab", timeout=10) == b"ba"
            with pytest.raises(ValueError, match="not submitted by this client"):
                other.wait(task)  # connected to the very server that holds the job
        finally:
            release.set()
        assert mine.wait(task, 10) == b"x"
        assert other.wait(task) == b"x"  # done: its outcome is there for anyone to read


@pytest.mark.timeout(30)
def test_asyncclient_refuses_another_clients_task_until_it_is_done_as_client_does(
    farm_server: Server,
) -> None:
    # AsyncClient B's wait() on A's task waited on A's future (on another loop asyncio
    # raised "attached to a different loop"), and its wait() on a farm.Client task raised
    # ValueError even once that task was done. Both clients now refuse another client's
    # task while it runs, and give its outcome once it is done.
    release = threading.Event()

    def held(job: Any) -> bytes:
        release.wait(20)
        return job.data

    async def main(blocking: farm.Client) -> None:
        async with farm.AsyncClient(farm_server.addr) as a, farm.AsyncClient(farm_server.addr) as b:
            task = await a.submit("held", "x")
            blocking_task = blocking.submit("held", "y")
            try:
                with pytest.raises(ValueError, match="not submitted by this client"):
                    await asyncio.wait_for(b.wait(task, 5), 10)
                with pytest.raises(ValueError, match="not submitted by this client"):
                    await asyncio.wait_for(b.wait(blocking_task, 5), 10)  # type: ignore[arg-type]
                with pytest.raises(ValueError, match="not submitted by this client"):
                    blocking.wait(task, 5)  # type: ignore[arg-type]
            finally:
                release.set()
            assert await a.wait(task, 10) == b"x"
            assert blocking.wait(blocking_task, 10) == b"y"
            assert await b.wait(task) == b"x"  # done: its outcome is there for anyone
            assert await b.wait(blocking_task) == b"y"  # type: ignore[arg-type]
            assert blocking.wait(task) == b"x"  # type: ignore[arg-type]

    with serving(farm_server.addr, {"held": held}), farm.Client(farm_server.addr) as blocking:
        asyncio.run(main(blocking))


HELD_AT_FORK_PROGRAM = """
import os, signal, sys, threading
import farm

c = farm.Client(sys.argv[1])
assert c.echo("parent") == b"parent"
held, forked = threading.Event(), threading.Event()

def hold():  # as a close() from this thread holds it for a moment
    with c._wire.dialer.lock:
        held.set()
        forked.wait(30)

threading.Thread(target=hold, daemon=True).start()
held.wait(30)
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a child stuck on the lock ends, not orphaned for ever
    assert c.echo("child") == b"child"  # connects anew: the parent's lock is not the child's
    os._exit(0)
forked.set()
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status), flush=True)
"""


def test_a_child_forked_while_a_close_held_the_connects_lock_connects(farm_server: Server) -> None:
    # The lock that lets close() cut a connect short (farm.client.dialer), held by another
    # thread of the parent at fork(), stayed held in the child: its first connect waited
    # for it for ever.
    run = subprocess.run(
        [sys.executable, "-c", HELD_AT_FORK_PROGRAM, farm_server.addr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.stdout.splitlines() == ["child exit 0"], (run.stdout, run.stderr)
