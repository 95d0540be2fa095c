"""One asyncio.Protocol per connection: bytes in, calls on the job model, bytes out.

The connection decides nothing about jobs; it decodes packets, checks their
arguments against the wire's limits, and calls ``JobServer``. Replies are
collected in a per-connection buffer and written once per loop turn, so a
pipelining peer costs one write per read, not one per packet.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from farm.server.jobs import HIGH, LOW, NORMAL, Job, QueueFull
from farm.server.store import StoreError

if TYPE_CHECKING:
    from farm.server.app import Server

log = logging.getLogger("farm.server")

# Submit packet type -> (priority, background).
SUBMITS: dict[int, tuple[int, bool]] = {
    T.SUBMIT_JOB: (NORMAL, False),
    T.SUBMIT_JOB_BG: (NORMAL, True),
    T.SUBMIT_JOB_HIGH: (HIGH, False),
    T.SUBMIT_JOB_HIGH_BG: (HIGH, True),
    T.SUBMIT_JOB_LOW: (LOW, False),
    T.SUBMIT_JOB_LOW_BG: (LOW, True),
}


def error(code: str, text: str) -> bytes:
    return encode_res(T.ERROR, code.encode(), text.encode())


class Connection(asyncio.Protocol):
    """A client, a worker, an admin tool -- or all three on one socket."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.jobs = server.jobs
        self.decoder = p.Decoder(max_packet=server.max_packet)
        self.transport: asyncio.Transport | None = None
        self.out = bytearray()
        self.dirty = False
        self.closed = False
        self.fd = -1
        self.ip = "-"
        self.client_id = b"-"
        # What the job model reads and writes (see jobs.Peer).
        self.abilities: dict[bytes, float] = {}
        self.running: dict[bytes, Job] = {}
        self.attached: set[Job] = set()
        self.exceptions = server.exceptions_default
        self.sleeping = False

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                peer = transport.get_extra_info("peername")
                self.ip = peer[0] if peer else "-"
            else:
                self.ip = "unix"
        if len(self.server.connections) >= self.server.options.max_connections:
            log.warning(
                "connection limit (%d) reached; closing fd %d",
                len(self.server.connections),
                self.fd,
            )
            self.closed = True
            transport.close()
            return
        self.server.connections.add(self)

    def detach(self) -> None:
        """Hand back what this connection held. As a client first: its own foreground jobs
        that it also runs as a worker are then dropped, not requeued as a worker death."""
        self.jobs.detach_client(self)
        self.jobs.detach_worker(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        self.detach()
        self.server.flush()
        if self.server.all_closed is not None and not self.server.connections:
            self.server.all_closed.set()

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests until it does.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.decoder.feed(data)
            for event in events:
                if type(event) is p.Packet:
                    self.handle_packet(event)
                else:
                    self.handle_admin(event.line)  # type: ignore[union-attr]
                if self.closed:
                    break
            self.decoder.check()
        except p.ProtocolError as exc:
            self.protocol_error(exc)
        except Exception:
            # A bug must cost one connection, never the server and its queues.
            log.exception("fd %d (%s): internal error; closing the connection", self.fd, self.ip)
            self.close()
            self.detach()
        finally:
            self.server.flush()

    # -- output --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        self.out += data
        if not self.dirty:
            self.dirty = True
            self.server.dirty.append(self)

    def flush(self) -> None:
        self.dirty = False
        if self.out and not self.closed and self.transport is not None:
            self.transport.write(bytes(self.out))
        self.out.clear()

    def close(self) -> None:
        """Flush what is owed, then close."""
        if self.closed:
            return
        self.server.flush()  # commits staged background jobs before their JOB_CREATED leaves
        self.flush()
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def protocol_error(self, exc: p.ProtocolError) -> None:
        log.info("fd %d (%s): protocol error: %s", self.fd, self.ip, exc)
        if exc.code in ("INVALID_MAGIC", "ARGUMENT_TOO_LARGE") or not exc.fatal:
            self.send(error(exc.code, str(exc)))
        if exc.fatal:
            self.close()
            # Work this connection held goes back to the queue now, not after the close lands.
            self.detach()

    # -- packets -------------------------------------------------------------

    def handle_packet(self, pkt: p.Packet) -> None:
        if pkt.magic != p.REQ:
            self.send(error("INVALID_MAGIC", "Request magic expected"))
            return
        handler = HANDLERS.get(pkt.type)
        if handler is None:
            self.send(error("INVALID_COMMAND", "Command not expected"))
            return
        handler(self, pkt.args)

    def on_submit(
        self, ptype: int, function: bytes, unique: bytes, data: bytes, **kw: object
    ) -> None:
        if len(unique) > p.MAX_UNIQUE:
            self.send(error("ARGUMENT_TOO_LARGE", "Unique value too large"))
            return
        if not function:
            self.send(error("INVALID_COMMAND", "function name is empty"))
            return
        priority, background = SUBMITS.get(ptype, (NORMAL, bool(kw.get("background"))))
        try:
            job = self.jobs.submit(
                None if background else self,
                function,
                unique,
                data,
                priority=priority,
                background=background,
                reducer=kw.get("reducer"),  # type: ignore[arg-type]
                when=kw.get("when", 0.0),  # type: ignore[arg-type]
            )
        except QueueFull:
            self.send(error("QUEUE_ERROR", "Job queue is full"))
            return
        except StoreError as exc:
            self.send(error("QUEUE_ERROR", str(exc)))
            return
        self.send(encode_res(T.JOB_CREATED, job.handle))

    def submit(self, args: tuple[bytes, ...], ptype: int) -> None:
        self.on_submit(ptype, *args)

    def submit_epoch(self, args: tuple[bytes, ...]) -> None:
        function, unique, epoch, data = args
        try:
            when = float(int(epoch))  # clients send whole seconds; refuses nan and inf
        except ValueError:
            self.send(error("INVALID_COMMAND", "epoch is not a number"))
            return
        self.on_submit(T.SUBMIT_JOB_EPOCH, function, unique, data, background=True, when=when)

    def submit_reduce(self, args: tuple[bytes, ...], background: bool) -> None:
        function, unique, reducer, _aggregator, data = args
        ptype = T.SUBMIT_JOB_BG if background else T.SUBMIT_JOB
        self.on_submit(ptype, function, unique, data, reducer=reducer)

    def submit_sched(self, args: tuple[bytes, ...]) -> None:
        self.send(
            error("INVALID_COMMAND", "SUBMIT_JOB_SCHED is not supported; use SUBMIT_JOB_EPOCH")
        )

    def grab(self, args: tuple[bytes, ...], ptype: int) -> None:
        job = self.jobs.grab(self)
        if job is None:
            self.send(NO_JOB)
        elif ptype == T.GRAB_JOB:
            self.send(encode_res(T.JOB_ASSIGN, job.handle, job.function, job.data))
        elif ptype == T.GRAB_JOB_ALL and job.reducer is not None:
            self.send(
                encode_res(
                    T.JOB_ASSIGN_ALL, job.handle, job.function, job.unique, job.reducer, job.data
                )
            )
        else:
            self.send(encode_res(T.JOB_ASSIGN_UNIQ, job.handle, job.function, job.unique, job.data))

    def work_update(self, args: tuple[bytes, ...], ptype: int) -> None:
        handle = args[0]
        job = self.jobs.held(self, handle)
        if job is None:
            self.send(error("JOB_NOT_FOUND", NOT_FOUND_TEXT.get(ptype, NOT_FOUND_DEFAULT)))
            return
        packet = encode_res(ptype, *args)
        if ptype == T.WORK_STATUS:
            job.numerator, job.denominator = args[1], args[2]
            self.jobs.forward(job, packet)
        elif ptype in (T.WORK_DATA, T.WORK_WARNING):
            self.jobs.forward(job, packet)
        elif ptype == T.WORK_EXCEPTION:
            self.jobs.finish(self, job, packet, encode_res(T.WORK_FAIL, handle))
        else:
            self.jobs.finish(self, job, packet)

    def get_status(self, args: tuple[bytes, ...]) -> None:
        handle = args[0]
        job = self.jobs.jobs.get(handle)
        if job is None:
            self.send(encode_res(T.STATUS_RES, handle, b"0", b"0", b"0", b"0"))
        else:
            running = b"1" if job.worker is not None else b"0"
            self.send(
                encode_res(T.STATUS_RES, handle, b"1", running, job.numerator, job.denominator)
            )

    def get_status_unique(self, args: tuple[bytes, ...]) -> None:
        unique = args[0]
        same = self.jobs.by_unique.get(unique)
        job = same[-1] if same else None
        if job is None:
            self.send(encode_res(T.STATUS_RES_UNIQUE, unique, b"0", b"0", b"0", b"0", b"0"))
        else:
            running = b"1" if job.worker is not None else b"0"
            count = str(len(job.clients)).encode()
            self.send(
                encode_res(
                    T.STATUS_RES_UNIQUE,
                    unique,
                    b"1",
                    running,
                    job.numerator,
                    job.denominator,
                    count,
                )
            )

    def can_do(self, args: tuple[bytes, ...]) -> None:
        self.jobs.can_do(self, args[0])

    def can_do_timeout(self, args: tuple[bytes, ...]) -> None:
        function, raw = args
        try:
            value = int(raw)
        except ValueError:
            self.send(error("INVALID_COMMAND", "CAN_DO_TIMEOUT timeout is not an integer"))
            return
        # The protocol says seconds; libgearman >= 1.1.19 sends milliseconds.
        self.jobs.can_do(self, function, value / 1000 if value >= 1000 else float(value))

    def option(self, args: tuple[bytes, ...]) -> None:
        name = args[0]
        if name == b"exceptions":
            self.exceptions = True
            self.send(encode_res(T.OPTION_RES, name))
        else:
            self.send(error("UNKNOWN_OPTION", "Server does not recognize given option"))

    def set_client_id(self, args: tuple[bytes, ...]) -> None:
        client_id = args[0]
        if len(client_id) > p.MAX_CLIENT_ID:
            self.send(
                error("ARGUMENT_TOO_LARGE", f"client id is longer than {p.MAX_CLIENT_ID} bytes")
            )
            return
        self.client_id = client_id or b"-"

    # -- admin ---------------------------------------------------------------

    def handle_admin(self, line: str) -> None:
        from farm.server.admin import run_admin

        reply = run_admin(self.server, line)
        if reply is not None:
            self.send(reply.encode())


NO_JOB = encode_res(T.NO_JOB)
# gearmand's texts, so tools that match on them keep working.
NOT_FOUND_DEFAULT = "Job given in work result not found"
NOT_FOUND_TEXT = {
    T.WORK_DATA: "Job does not exist on server",
    T.WORK_WARNING: "Job does not exist on server",
    T.WORK_EXCEPTION: "An exception was received for a job that does not exist",
}
_echo = T.ECHO_RES

Handler = Callable[[Connection, tuple[bytes, ...]], None]


def _bind(method: Callable[..., None], *extra: object) -> Handler:
    return lambda conn, args: method(conn, args, *extra)


HANDLERS: dict[int, Handler] = {
    T.CAN_DO: Connection.can_do,
    T.CANT_DO: lambda c, a: c.jobs.cant_do(c, a[0]),
    T.RESET_ABILITIES: lambda c, a: c.jobs.reset_abilities(c),
    T.PRE_SLEEP: lambda c, a: c.jobs.pre_sleep(c),
    T.GRAB_JOB: _bind(Connection.grab, T.GRAB_JOB),
    T.GRAB_JOB_UNIQ: _bind(Connection.grab, T.GRAB_JOB_UNIQ),
    T.GRAB_JOB_ALL: _bind(Connection.grab, T.GRAB_JOB_ALL),
    T.WORK_STATUS: _bind(Connection.work_update, T.WORK_STATUS),
    T.WORK_COMPLETE: _bind(Connection.work_update, T.WORK_COMPLETE),
    T.WORK_FAIL: _bind(Connection.work_update, T.WORK_FAIL),
    T.WORK_EXCEPTION: _bind(Connection.work_update, T.WORK_EXCEPTION),
    T.WORK_DATA: _bind(Connection.work_update, T.WORK_DATA),
    T.WORK_WARNING: _bind(Connection.work_update, T.WORK_WARNING),
    T.GET_STATUS: Connection.get_status,
    T.GET_STATUS_UNIQUE: Connection.get_status_unique,
    T.ECHO_REQ: lambda c, a: c.send(encode_res(_echo, a[0])),
    T.SET_CLIENT_ID: Connection.set_client_id,
    T.CAN_DO_TIMEOUT: Connection.can_do_timeout,
    T.OPTION_REQ: Connection.option,
    T.SUBMIT_JOB_EPOCH: Connection.submit_epoch,
    T.SUBMIT_JOB_SCHED: Connection.submit_sched,
    T.SUBMIT_REDUCE_JOB: _bind(Connection.submit_reduce, False),
    T.SUBMIT_REDUCE_JOB_BACKGROUND: _bind(Connection.submit_reduce, True),
    **{t: _bind(Connection.submit, t) for t in SUBMITS},
}
