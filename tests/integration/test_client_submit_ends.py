"""A foreground ``farm.Client.submit`` returns its Task at JOB_CREATED, also where the job's
end came in the same read (a fast worker, a network that batches what it carries): the end
is ``wait``'s to raise. It raised from ``submit``, so a loop of submits stopped at the first
job that failed quickly, and the tasks it had made were lost to the caller."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest

import farm
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from tests.helpers.stalled import misbehaving

_HEADER = struct.Struct(">4sII")


def _reads(conn: socket.socket) -> Iterator[list[tuple[int, bytes]]]:
    """The whole requests each read completes, until the client closes."""
    buf = b""
    while chunk := conn.recv(65536):
        buf += chunk
        packets = []
        while len(buf) >= _HEADER.size:
            _magic, kind, size = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            packets.append((kind, buf[_HEADER.size : _HEADER.size + size]))
            buf = buf[_HEADER.size + size :]
        yield packets


def ends_with_created(end: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """A server that answers each SUBMIT_JOB with JOB_CREATED and the job's end (``end``:
    WORK_FAIL or WORK_EXCEPTION of that handle) in one write, as gearmand may when its
    worker was quick; OPTION_REQ is answered as granted."""

    def behave(conn: socket.socket, stop: threading.Event) -> None:
        made = 0
        for packets in _reads(conn):
            out = b""
            for kind, body in packets:
                if kind == T.OPTION_REQ:
                    out += encode_res(T.OPTION_RES, body)
                elif kind == T.SUBMIT_JOB:
                    made += 1
                    handle = b"H:fake:%d" % made
                    out += encode_res(T.JOB_CREATED, handle)
                    if end == b"exception":
                        out += encode_res(T.WORK_EXCEPTION, handle, b"ZeroDivisionError")
                    else:
                        out += encode_res(T.WORK_FAIL, handle)
            conn.sendall(out)

    return behave


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("end", "error"), [(b"fail", farm.JobFailed), (b"exception", farm.JobException)]
)
def test_a_submit_whose_job_ended_in_the_same_read_returns_the_task(
    end: bytes, error: type[Exception]
) -> None:
    with misbehaving(ends_with_created(end)) as addr, farm.Client(addr, timeout=5) as client:
        tasks = [client.submit("f", b"x") for _ in range(3)]
        assert [t.handle for t in tasks] == ["H:fake:1", "H:fake:2", "H:fake:3"]
        for task in tasks:
            with pytest.raises(error):
                client.wait(task)


@pytest.mark.timeout(30)
def test_the_async_client_returns_such_a_task_too() -> None:
    async def submit_three(addr: str) -> None:
        async with farm.AsyncClient(addr) as client:
            tasks = [await client.submit("f", b"x") for _ in range(3)]
            assert [t.handle for t in tasks] == ["H:fake:1", "H:fake:2", "H:fake:3"]
            for task in tasks:
                with pytest.raises(farm.JobFailed):
                    await client.wait(task, timeout=5)

    with misbehaving(ends_with_created(b"fail")) as addr:
        asyncio.run(submit_three(addr))
