"""The floor under any Python job server's throughput: a bare forwarder on uvloop.

    python -m bench.server_floor --port N

It speaks just enough Gearman for ``bench.server_load``'s client and workers: SUBMIT_JOB
is given a handle and pushed to a worker holding a grab (farm's held grab, answered
with NOOP + JOB_ASSIGN in one write) or queued; WORK_COMPLETE goes to the submitter
with its JOB_CREATED (lazy-created), and the worker's next GRAB_JOB is held. Nothing
else: no priorities, uniques, limits, deadlines, metrics, back-pressure, store or
errors, and a malformed packet kills it. No server is meant to run like this; it is
what a Python process on one core pays per job for the loop, the reads, the writes
and a few dictionary operations, before any of a real server's rules, so
``bench.server_load --floor`` shows how much of the gap to gearmand the language
itself leaves (docs/server.md, "What a job costs").
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from collections import deque

HEADER = struct.Struct(">4sII")
REQ, RES = b"\0REQ", b"\0RES"
CAN_DO, PRE_SLEEP, NOOP, SUBMIT_JOB, JOB_CREATED = 1, 4, 6, 7, 8
GRAB_JOB, JOB_ASSIGN, WORK_COMPLETE, OPTION_REQ, OPTION_RES = 9, 11, 13, 26, 27


def frame(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HEADER.pack(RES, ptype, len(body)) + body


NOOP_PACKET = frame(NOOP)


class Forwarder:
    def __init__(self) -> None:
        self.counter = 0
        self.queue: deque[tuple[bytes, bytes, bytes]] = deque()  # handle, function, data
        self.holding: deque[Peer] = deque()  # workers holding a grab
        self.waiting: dict[bytes, Peer] = {}  # handle -> its client


class Peer(asyncio.Protocol):
    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        fwd = self.fwd
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 12:
            _, ptype, size = HEADER.unpack_from(buf, pos)
            if end - pos - 12 < size:
                break
            body = buf[pos + 12 : pos + 12 + size]
            pos += 12 + size
            if ptype == SUBMIT_JOB:
                function, _unique, payload = body.split(b"\0", 2)
                fwd.counter += 1
                handle = b"H:floor:%d" % fwd.counter
                fwd.waiting[handle] = self
                if fwd.holding:
                    worker = fwd.holding.popleft()
                    worker.transport.write(  # type: ignore[union-attr]
                        NOOP_PACKET + frame(JOB_ASSIGN, handle, function, payload)
                    )
                else:
                    fwd.queue.append((handle, function, payload))
            elif ptype == WORK_COMPLETE:
                handle, result = body.split(b"\0", 1)
                client = fwd.waiting.pop(handle)
                client.transport.write(  # type: ignore[union-attr]
                    frame(JOB_CREATED, handle) + frame(WORK_COMPLETE, handle, result)
                )
            elif ptype == GRAB_JOB:
                if fwd.queue:
                    out.append(frame(JOB_ASSIGN, *fwd.queue.popleft()))
                else:
                    fwd.holding.append(self)
            elif ptype == OPTION_REQ:
                out.append(frame(OPTION_RES, body))
            # CAN_DO and PRE_SLEEP need nothing here
        self.buf = buf[pos:]
        if out:
            self.transport.write(b"".join(out))  # type: ignore[union-attr]


async def serve(port: int) -> None:
    fwd = Forwarder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Peer(fwd), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    import uvloop

    uvloop.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
