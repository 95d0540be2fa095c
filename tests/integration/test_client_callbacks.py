"""A progress callback that raises costs nothing: the job and its neighbours still end; a call
left by an interruption gives its job up."""

from __future__ import annotations

import asyncio
import threading

import pytest

import farm
from farm.protocol import PacketType as T
from tests.helpers.peers import Peer
from tests.helpers.servers import Server


def serve_with_status(addr: str, jobs: int) -> threading.Thread:
    def run() -> None:
        worker = Peer(addr)
        worker.send(T.CAN_DO, "progress")
        for _ in range(jobs):
            worker.send(T.GRAB_JOB)
            pkt = worker.recv()
            while pkt.type in (T.NO_JOB, T.NOOP):
                if pkt.type == T.NO_JOB:
                    worker.send(T.PRE_SLEEP)
                else:
                    worker.send(T.GRAB_JOB)
                pkt = worker.recv()
            handle = pkt.args[0]
            worker.send(T.WORK_STATUS, handle, "1", "2")
            worker.send(T.WORK_COMPLETE, handle, b"done")
        worker.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def boom(*_: object) -> None:
    raise RuntimeError("user callback bug")


def test_blocking_client_survives_a_raising_callback(farm_server: Server) -> None:
    thread = serve_with_status(farm_server.addr, 2)
    with farm.Client(farm_server.addr) as client:
        assert client.call("progress", "x", on_status=boom, timeout=10) == b"done"
        assert client.call("progress", "y", timeout=10) == b"done"
    thread.join(10)


def test_async_client_survives_a_raising_callback(farm_server: Server) -> None:
    thread = serve_with_status(farm_server.addr, 2)

    async def main() -> list[bytes]:
        client = farm.AsyncClient(farm_server.addr)
        try:
            first = client.call("progress", "x", on_status=boom, timeout=10)
            second = client.call("progress", "y", timeout=10)
            return list(await asyncio.gather(first, second))
        finally:
            await client.close()

    assert asyncio.run(main()) == [b"done", b"done"]
    thread.join(10)


def test_a_call_interrupted_gives_its_job_up(any_server: Server) -> None:
    # A call left by an exception not the job's (Ctrl-C in a notebook, here while its
    # progress callback runs) gives its job up as a Timeout does: its callbacks must not
    # go on firing inside the next call, nor the client keep the job.
    go = threading.Event()

    def work() -> None:
        worker = Peer(any_server.addr)
        worker.send(T.CAN_DO, "ticks")
        while True:
            worker.send(T.GRAB_JOB)
            pkt = worker.recv()
            if pkt.type == T.JOB_ASSIGN:
                break
            worker.send(T.PRE_SLEEP)
            worker.expect(T.NOOP)
        handle = pkt.args[0]
        worker.send(T.WORK_DATA, handle, b"before")
        go.wait(10)
        worker.send(T.WORK_DATA, handle, b"after")
        worker.send(T.WORK_COMPLETE, handle, b"done")
        worker.send(T.ECHO_REQ, b"sync")  # answered once the server has passed the above on
        worker.expect(T.ECHO_RES)
        worker.close()

    def tick(data: bytes) -> None:
        seen.append(data)
        if len(seen) == 1:
            raise KeyboardInterrupt

    seen: list[bytes] = []
    thread = threading.Thread(target=work, daemon=True)
    with farm.Client(any_server.addr) as client:
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            client.call("ticks", "x", on_data=tick, timeout=10)
        go.set()
        thread.join(10)
        assert client.echo(b"after the job ended") == b"after the job ended"
        assert seen == [b"before"], "the job given up still called its callbacks"
