"""A progress callback that raises costs nothing: the job and its neighbours still end; a call
left by an interruption gives its job up."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

import farm
from farm.protocol import PacketType as T
from farm.worker import Job
from tests.helpers.peers import Peer
from tests.helpers.servers import Server
from tests.helpers.serving import serving


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


def grab(worker: Peer) -> bytes:
    """The handle of the next job ``worker`` is given, asleep until there is one."""
    return grab_job(worker)[0]


def grab_job(worker: Peer) -> tuple[bytes, bytes]:
    """The handle and payload of the next job ``worker`` is given, asleep until there is one."""
    while True:
        worker.send(T.GRAB_JOB)
        pkt = worker.recv()
        if pkt.type == T.JOB_ASSIGN:
            return bytes(pkt.args[0]), bytes(pkt.args[2])
        if pkt.type == T.NO_JOB:
            worker.send(T.PRE_SLEEP)
            worker.expect(T.NOOP)


class OneRead:
    """A worker's status for one call and another job's result, sent so that the client
    reads them in one read: the client is held in its data callback (``hold``) until both
    wait in its socket, and its status callback raises KeyboardInterrupt (``interrupt``)."""

    def __init__(self) -> None:
        self.held, self.sent = threading.Event(), threading.Event()

    def send(self, worker: Peer, call: bytes, other: bytes, result: bytes) -> None:
        worker.send(T.WORK_DATA, call, b"hold")  # the client stops reading in its callback
        self.held.wait(10)
        worker.send(T.WORK_STATUS, call, b"1", b"2")
        worker.send(T.WORK_COMPLETE, other, result)
        worker.send(T.ECHO_REQ, b"sync")  # answered once the server has passed the above on
        worker.expect(T.ECHO_RES)
        self.sent.set()
        worker.close()

    def hold(self, _: bytes) -> None:
        self.held.set()
        self.sent.wait(10)  # both packets now wait in the socket, for one read

    @staticmethod
    def interrupt(*_: int) -> None:
        raise KeyboardInterrupt


def test_an_interrupt_in_a_callback_keeps_the_rest_of_its_read(farm_server: Server) -> None:
    # One read carries call a's status and a map job's result; Ctrl-C in a's status callback
    # must not lose that result (the map then waited for it until its timeout).
    read = OneRead()

    def work() -> None:
        worker = Peer(farm_server.addr)
        worker.send(T.CAN_DO, "f")
        first, second = grab(worker), grab(worker)
        worker.send(T.WORK_COMPLETE, first, b"b1")
        read.send(worker, grab(worker), second, b"b2")

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with farm.Client(farm_server.addr, timeout=5) as client:  # a lost result: a Timeout
        results = client.map("f", ["b1", "b2"])
        assert next(results) == b"b1"
        with pytest.raises(KeyboardInterrupt):
            client.call("f", "a", on_data=read.hold, on_status=read.interrupt)
        assert read.sent.is_set()
        assert list(results) == [b"b2"]
    thread.join(10)


def test_an_interrupt_in_an_async_callback_keeps_the_rest_of_its_read(
    farm_server: Server,
) -> None:
    # As above for AsyncClient: the Ctrl-C leaves the loop; run again, the other call ends.
    read = OneRead()

    def work() -> None:
        worker = Peer(farm_server.addr)
        worker.send(T.CAN_DO, "f")
        jobs = {data: handle for handle, data in (grab_job(worker), grab_job(worker))}
        read.send(worker, jobs[b"a"], jobs[b"b"], b"b")

    thread = threading.Thread(target=work, daemon=True)
    loop = asyncio.new_event_loop()
    client = farm.AsyncClient(farm_server.addr)
    try:
        first = loop.create_task(client.call("f", "a", on_data=read.hold, on_status=read.interrupt))
        second = loop.create_task(client.call("f", "b", timeout=5))  # lost: a Timeout
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(second)
        assert read.sent.is_set()
        assert loop.run_until_complete(second) == b"b"
    finally:
        first.cancel()
        loop.run_until_complete(client.close())
        loop.close()
    thread.join(10)


def test_a_callback_that_uses_its_client_keeps_its_jobs_events_in_order(
    farm_server: Server,
) -> None:
    # A callback that submits on its own client reads again (the submit's catch-up): what
    # that read brought (d4) was handed on before the rest of the outer read (d2, d3), so a
    # job's data came out of order.
    held, sent, held_again, sent_again = (threading.Event() for _ in range(4))

    def work() -> None:
        worker = Peer(farm_server.addr)
        worker.send(T.CAN_DO, "f")
        call = grab(worker)
        worker.send(T.WORK_DATA, call, b"hold")  # the client stops reading in its callback
        held.wait(10)
        for chunk in (b"d1", b"d2", b"d3"):  # one read's worth, while it is held
            worker.send(T.WORK_DATA, call, chunk)
        worker.send(T.ECHO_REQ, b"sync")  # answered once the server has passed the above on
        worker.expect(T.ECHO_RES)
        sent.set()
        held_again.wait(10)  # the client is in d1's callback, d2 and d3 read with it
        worker.send(T.WORK_DATA, call, b"d4")
        worker.send(T.WORK_COMPLETE, call, b"done")
        worker.send(T.ECHO_REQ, b"sync")
        worker.expect(T.ECHO_RES)
        sent_again.set()
        worker.close()

    seen: list[bytes] = []

    def on_data(data: bytes) -> None:
        seen.append(data)
        if data == b"hold":
            held.set()
            sent.wait(10)  # d1, d2 and d3 now wait in the socket, for one read
        elif data == b"d1":
            held_again.set()
            sent_again.wait(10)
            client.submit("elsewhere", b"x", background=True)  # reads d4 on its way

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    with farm.Client(farm_server.addr, timeout=10) as client:
        assert client.call("f", "a", on_data=on_data) == b"done"
    thread.join(10)
    assert seen == [b"hold", b"d1", b"d2", b"d3", b"d4"]


@pytest.mark.timeout(30)
def test_a_call_whose_client_is_closed_under_it_fails_as_closed(any_server: Server) -> None:
    # A shutdown handler (a signal's, or a callback's) that closes the client while a call
    # waits in the same thread: the call raised Timeout "not done within Nones" (or within
    # its own timeout, at once). It fails as AsyncClient's calls do when it closes.
    releases = {b"0": threading.Event(), b"1": threading.Event()}  # one per job: none missed

    def steps(job: Job) -> bytes:
        job.send_status(1, 2)
        releases[job.data].wait(20)
        return b"done"

    def closer(client: farm.Client, job: bytes) -> Callable[[int, int], None]:
        def close(numerator: int, denominator: int) -> None:
            client.close()
            releases[job].set()  # the job ends now: its end is not what the call fails by

        return close

    with serving(any_server.addr, {"steps": steps}):
        for job, timeout in ((b"0", None), (b"1", 10.0)):
            client = farm.Client(any_server.addr)
            with pytest.raises(farm.errors.ServerUnavailable, match="Client was closed"):
                client.call("steps", job, timeout=timeout, on_status=closer(client, job))
            with pytest.raises(RuntimeError, match="closed"):
                client.call("steps", "y")


def test_news_a_job_cannot_send_is_named_as_that_news(farm_server: Server) -> None:
    # send_warning's and send_data's bad str was reported as "data holds a surrogate ...":
    # as_bytes's default name, the job's own data's.
    def news(job: Job) -> bytes:
        said = []
        for send in (job.send_warning, job.send_data):
            try:
                send("x\ud800")
            except ValueError as exc:
                said.append(str(exc).partition(" holds ")[0])
        return "|".join(said).encode()

    with serving(farm_server.addr, {"news": news}), farm.Client(farm_server.addr) as c:
        assert c.call("news", b"", timeout=30) == (
            b"send_warning's warning (WORK_WARNING)|send_data's chunk (WORK_DATA)"
        )
