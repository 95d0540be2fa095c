"""``status(task)`` of a background job whose server restarted since: unknown, not another
job's status. gearmand's handles count from H:host:1 again in each process, so the old
handle named whichever job the new process had given it; farm.Client and AsyncClient alike."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import farm
from farm.protocol.client import JobStatus, Task
from tests.helpers import ROOT
from tests.helpers.servers import Server, start_like

UNKNOWN = JobStatus(False, False, 0, 0)


@pytest.fixture
def restart(any_server: Server) -> Iterator[tuple[Server, list[Server]]]:
    """The server, and a list into which ``_restart`` puts its successor (stopped after)."""
    again: list[Server] = []
    yield any_server, again
    for srv in again:
        srv.stop()


def _restart(srv: Server, again: list[Server]) -> None:
    """``srv`` stopped and started again on its port, where another client then queues three
    background jobs: the new process's first handles."""
    srv.stop()
    again.append(start_like(srv, port=srv.port))
    with farm.Client(srv.addr) as other:
        for i in range(3):
            other.submit("theirs", f"theirs{i}", background=True)


def test_status_of_a_task_whose_server_restarted_since_is_unknown(restart) -> None:
    srv, again = restart
    with farm.Client(srv.addr, timeout=10) as c:
        mine = [c.submit("nobody-serves-this", f"mine{i}", background=True) for i in range(3)]
        assert c.status(mine[0]).known
        _restart(srv, again)
        assert [c.status(t) for t in mine] == [UNKNOWN] * 3
        assert c.status(c.submit("nobody-serves-this", b"new", background=True)).known


def test_async_status_of_a_task_whose_server_restarted_since_is_unknown(restart) -> None:
    srv, again = restart

    async def main() -> None:
        c = farm.AsyncClient(srv.addr)
        try:
            mine = [
                await c.submit("nobody-serves-this", f"mine{i}", background=True) for i in range(3)
            ]
            assert (await c.status(mine[0])).known
            await asyncio.to_thread(_restart, srv, again)
            assert [await c.status(t) for t in mine] == [UNKNOWN] * 3
            new = await c.submit("nobody-serves-this", b"new", background=True)
            assert (await c.status(new)).known
        finally:
            await c.close()

    asyncio.run(main())


FORKED_STATUS = """
import os, sys
import farm

with farm.Client(sys.argv[1], timeout=10) as c:
    task = c.submit("nobody-serves-this", b"x", background=True)
    pid = os.fork()
    if pid == 0:  # the child's first use closes its copies of the parent's sockets
        print(c.status(task).known, c.status(task.handle).known, flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
    print(c.status(task).known, flush=True)
"""


def test_status_of_a_task_in_a_forked_child_asks_the_server(farm_server: Server) -> None:
    # The child's closing its copies of the parent's sockets read as the server's loss:
    # status(task) said unknown of a job the never-restarted server holds.
    run = subprocess.run(
        [sys.executable, "-c", FORKED_STATUS, farm_server.addr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["True True", "True"], run.stderr


def test_async_status_of_a_task_from_an_ended_loop_asks_the_server(farm_server: Server) -> None:
    # The first loop's end closes its connections (not the server's doing): status(task)
    # in the next loop said unknown of a job the never-restarted server holds.
    c = farm.AsyncClient(farm_server.addr)

    async def first() -> Task[Any]:
        return await c.submit("nobody-serves-this", b"x", background=True)

    async def second(task: Task[Any]) -> tuple[bool, bool]:
        try:
            return (await c.status(task)).known, (await c.status(task.handle or "")).known
        finally:
            await c.close()

    task = asyncio.run(first())
    assert asyncio.run(second(task)) == (True, True)
