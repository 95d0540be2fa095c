"""A progress callback that raises costs nothing: the job and its neighbours still end."""

from __future__ import annotations

import asyncio
import threading

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
