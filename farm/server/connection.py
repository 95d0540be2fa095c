"""One asyncio.Protocol per connection: bytes in, calls on the job model, bytes out.

The connection decides nothing about jobs; it decodes packets, checks their
arguments against the wire's limits, and calls ``JobServer``. What the model
answers or tells it (a job, a wake-up, a job's progress or end) it alone turns
into packets -- including WORK_FAIL for a client that did not ask for
exceptions. Replies are collected in a per-connection buffer and written once
per loop turn (``Hub.flush``), so a pipelining peer costs one write per read.

The connection keeps the bytes (decoding, buffers, the store's held replies) and the
packet table; what a client asks is in ``farm.server.clientside``, what a worker says in
``farm.server.workerside``, its admin commands in ``farm.server.adminside``, its options and
name in ``farm.server.peeroptions`` and who waits for whose reader in
``farm.server.backpressure``, mixins of the one ``Connection`` class
(a socket may be all of them).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from operator import length_hint

from farm import protocol as p
from farm.net import keep_alive
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from farm.protocol.kinds import SUBMIT_KINDS
from farm.server.adminside import AdminSide
from farm.server.backpressure import READ_SLICE, BackPressure, Event
from farm.server.clientside import ClientSide
from farm.server.hub import HELD_READ_LIMIT, HeldReply, Hub
from farm.server.jobs import Job
from farm.server.peeroptions import PeerOptions, refusals
from farm.server.workerside import WorkerSide, error
from farm.unixsocket import peer_credentials

log = logging.getLogger("farm.server")


#: Peers cut off at a limit: one line each 10 s at most per kind, as any local user could
#: send them by the thousand a second (the journal's rate limit then drops other lines).
class Connection(ClientSide, WorkerSide, BackPressure, AdminSide, PeerOptions, asyncio.Protocol):
    """A client, a worker, an admin tool -- or all three on one socket."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.jobs = hub.jobs
        self.decoder = p.Decoder(
            max_packet=hub.options.max_packet, read_past_too_large=True, server_side=True
        )
        self.transport: asyncio.Transport | None = None
        self.out = bytearray()
        # JOB_CREATEDs waiting for the store's commits, each with what came after it.
        self.held: list[HeldReply] | None = None
        self.held_bytes = 0  # what the held replies carry after them (HELD_READ_LIMIT)
        self.held_full = False  # past HELD_READ_LIMIT: not read until they leave
        self.held_counted = 0  # of those, what hub.tcp_held counts (a TCP peer's)
        self.partial = 0  # bytes of unfinished packets this connection holds (see count_partial)
        self.unsent = 0  # bytes sent to a TCP peer this turn, not written yet (count_unsent)
        self.dirty = False
        self.closed = False
        # Closed while replies wait for the store's commit: not read any more, and its
        # transport closed once they have left (release_held).
        self.lingering = False
        self.fd = -1
        self.ip = "-"
        self.tcp = False  # counted in the hub's TCP shares (see connection_made)
        self.client_id = b"-"
        self.peer_uid: int | None = None  # Unix-socket peers only (SO_PEERCRED)
        self.opened = time.monotonic()  # accepted: admin `claim` takes no end opened before
        self.tls_pending = False  # counted in hub.handshakes until now (farm.server.tlsgate)
        # Who is at the other end, for farm's admin `peers`, `drain` and `killing`: the
        # process on a Unix socket (SO_PEERCRED), the remote port on TCP (0: not known).
        self.peer_pid = 0
        self.peer_port = 0
        self.jobs_done = 0  # jobs this connection ended (WORK_COMPLETE / FAIL / EXCEPTION)
        self.draining = False  # admin `drain`: no more jobs for it (Sleepers.drain)
        self.killed = False  # admin `killing`: its death is its supervisor's, not its job's
        # What the job model reads and writes (see jobs.Peer).
        self.abilities: dict[bytes, float] = {}
        self.running: dict[bytes, Job] = {}
        self.expired: dict[bytes, int] = {}
        self.excepted: bytes | None = None  # (WorkerSide.work_update)
        self.attached: set[Job] = set()
        self.exceptions = hub.options.exceptions
        self.sleeping = False
        self.awaits_jobs = False  # (WorkerSide.grab, pre_sleep, can_do)
        self.woken = False
        self.late = False  # past a wake-up's deadline (Sleepers._add_sleeper)
        # Back-pressure. A connection whose peer does not read (its transport passed the
        # high-water mark) is not read either; a worker streaming WORK_DATA or WARNING to
        # such a client is not read until that client's buffer drains.
        self.write_paused = False
        self.reading = True
        self.waiting_on: set[BackPressure] = set()  # clients this worker waits for
        self.held_back: set[BackPressure] = set()  # workers waiting for this client
        self.stall_timer: asyncio.TimerHandle | None = None  # (BackPressure.time_stall)
        self.stall_mark = self.bytes_out = 0  # (BackPressure.taken)
        # Held grab (docs/held-grab.md): negotiated; the grab packet held (0: none); a job
        # pushed to this worker and not yet accepted, with its deadline.
        self.used_admin = False
        self.answering = False  # an admin reply made in another thread is owed (AdminSide)
        self.hung_up = False
        self.may_hold_grab = False
        self.held_grab = 0
        self.pushed: Job | None = None
        self.heard_since_push = False
        self.read_accept = False  # docs/held-grab.md: having read a pushed job accepts it
        self.revoke = False  # docs/held-grab.md: told (JOB_REVOKE) of a push taken back
        self.gives_back = False  # docs/held-grab.md: its CANT_DO gives back unrun jobs
        # docs/held-grab.md "lazy-created": foreground JOB_CREATEDs ride with the next write.
        self.lazy_created = False
        self.fail_reason = False  # docs/held-grab.md: WORK_FAIL says why the server failed it
        self.lazy_waiting = False  # replies held with a deadline in hub.lazy
        self.written_this_read = 0  # what AdminSide counts as unread across a read's slices
        self.backlog: Iterator[Event] | None = None  # a read's packets left for a later turn
        # Packets acted on per call of data_received (-1: all): a server driven by hand, as
        # in tests, has no loop to leave the rest to.
        self.read_slice = READ_SLICE if hub.loop is not None else -1

    # -- asyncio callbacks ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.tls_pending:  # its handshake is done: it counts as a connection from here on
            self.tls_pending = False
            self.hub.handshakes -= 1
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                self.tcp = True
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                o = self.hub.options
                keep_alive(sock, (o.keepalive_idle, o.keepalive_interval, o.keepalive_count))
                peer = transport.get_extra_info("peername")
                self.ip = peer[0] if peer else "-"
                self.peer_port = peer[1] if peer else 0
            else:
                self.ip = "unix"
                self.peer_pid, self.peer_uid, _ = peer_credentials(sock)
        if not self.hub.admit(self, self.tcp):
            self.turn_away(transport)

    def detach(self) -> None:
        """Hand back what this connection held. As a client first: its own foreground jobs
        that it also runs as a worker are then dropped, not requeued as a worker death."""
        self.jobs.detach_client(self)
        self.jobs.detach_worker(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish_backlog()  # what it sent before it went
        self.closed = True
        self.hub.slow_readers.discard(self)
        self.release_held_back()
        self.stop_waiting()
        self.hub.count_partial(-self.partial, self.tcp)
        self.partial = 0
        self.hub.unaccepted.discard(self)
        self.hub.lazy.discard(self)
        self.hub.leave(self, self.tcp)
        self.detach()  # while still marked TCP: its registrations leave the TCP count
        self.tcp = False
        self.hub.flush_soon()
        if self.hub.all_closed is not None and not self.hub.connections:
            self.hub.all_closed.set()

    def data_received(self, data: bytes, backlog: Iterator[Event] | None = None) -> None:
        """Decode ``data`` and act on its packets, or go on with a ``backlog`` of them left
        by an earlier call: at most ``read_slice`` in this call, the rest in a later loop
        turn (``defer``)."""
        if backlog is None:
            self.hub.stats.bytes_in += len(data)
            self.written_this_read = 0
        if self.pushed is not None:  # read-accept: a worker that talks is not stopped (a
            self.heard_since_push = True  # backlog's replies wait behind the pushed job too)
        decoder = self.decoder
        budget = self.read_slice
        try:
            while True:
                try:
                    events = backlog if backlog is not None else iter(decoder.feed(data))
                    backlog = None
                    for event in events:
                        if event.__class__ is p.Packet:
                            magic, ptype, args = event
                            handler = HANDLERS.get(ptype)
                            if magic != p.REQ:
                                self.send(error("INVALID_MAGIC", "Request magic expected"))
                            elif handler is None:
                                self.send(error("INVALID_COMMAND", "Command not expected"))
                            else:
                                handler(self, args, ptype)
                        elif event.__class__ is p.Oversized:  # read past: ERROR, and go on
                            self.protocol_error(event.error())
                        else:
                            self.handle_admin(event.line)  # type: ignore[union-attr]  # AdminLine
                            if self.answering:  # its reply comes later: the rest waits
                                self.backlog = events
                                break
                        if self.closed:
                            break
                        budget -= 1
                        # The rest wait, in this same iterator (a chain each slice nested:
                        # quadratic). At or below 0, not at 0: a bad packet's retry below
                        # goes on with the budget left, and from -1 it never came back to 0.
                        if budget <= 0 < self.read_slice and length_hint(events):
                            self.defer(events)
                            break
                    if decoder.error is not None and self.backlog is None:
                        decoder.check()
                    break
                except p.ProtocolError as exc:
                    self.protocol_error(exc)
                    if exc.fatal or self.closed or not decoder.buffered:
                        break
                    data = b""  # what this read held behind the bad packet is decoded now
            if decoder.buffered != self.partial and not self.closed:
                self.count_partial()
        except Exception:
            # A bug must cost one connection, never the server and its queues.
            log.exception("fd %d (%s): internal error; closing the connection", self.fd, self.ip)
            self.close()
            self.detach()
        finally:
            self.hub.flush_soon()

    # -- output --------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.held is None:
            self.out += data
        else:
            self.held[-1].after.extend(data)  # keeps its place behind a held JOB_CREATED
            self.held_bytes += len(data)
            if self.held_bytes > HELD_READ_LIMIT and not self.held_full:
                self.held_full = True  # as a peer past its transport's high-water mark
                self.update_reading()
        if not self.dirty:
            self.dirty = True
            self.hub.dirty.append(self)
        if self.tcp:
            if self.held is None:
                self.count_unsent(len(data))
            else:
                self.count_held(len(data))

    def flush(self) -> None:
        self.dirty = False
        if self.lazy_waiting:  # what it held leaves now
            self.lazy_waiting = False
            self.hub.lazy.discard(self)
        if self.out and not self.closed and self.transport is not None:
            size = len(self.out)
            self.hub.stats.bytes_out += size
            self.bytes_out += size
            self.written_this_read += size
            self.transport.write(bytes(self.out))
            if self.write_paused and self.tcp:
                self.check_unread()
        self.out.clear()
        if self.unsent:
            self.unsent_gone()

    def close(self) -> None:
        """Flush what is owed, then close."""
        if self.closed:
            return
        self.hub.flush()  # the next commit begun: what it releases leaves before the close
        self.flush()
        self.closed = True
        # Its unfinished packets will never finish: their bytes leave the server-wide count
        # now, not when the close lands, or peers read later this turn are refused as well.
        self.hub.count_partial(-self.partial, self.tcp)
        self.partial = 0
        if self.transport is not None:
            if self.held is not None:  # owed JOB_CREATEDs (and what followed) leave first
                self.lingering = True
                self.transport.pause_reading()
            else:
                self.transport.close()

    def protocol_error(self, exc: p.ProtocolError) -> None:
        log.info("fd %d (%s): protocol error: %s", self.fd, self.ip, exc)
        if exc.handle is not None and self.jobs.held(self, exc.handle) is not None:
            # A result too large for a job held here: the job fails (its clients are told
            # why), and the worker hears nothing, as from gearmand, which takes it: an ERROR
            # it never asked for ended PHP's `while ($worker->work())` ("unexpected packet").
            self.news_too_large(exc.handle, exc)
        elif exc.code == "ARGUMENT_TOO_LARGE" or not exc.fatal:
            # Bad magic and an unknown type close without a word, as docs/server.md ("How it
            # is built") says and gearmand does: what follows cannot be framed.
            self.send(error(exc.code, str(exc)))
        if exc.fatal:
            self.close()
            # Work this connection held goes back to the queue now, not after the close lands.
            self.detach()

    # -- packets -------------------------------------------------------------

    def function_ok(
        self, name: bytes, priority: int | None = None, what: str = "function name"
    ) -> bool:
        """Whether the server takes ``name`` from this peer (else it was told why): for a
        submit at ``priority``, or (None) a worker's CAN_DO."""
        if name in self.jobs.functions:
            return True  # a name the server holds was checked when it came
        if (problem := p.name_problem(name)) is not None:
            # A tab or a newline would break the admin protocol's lines (status, workers),
            # and `farm status` with them, until the server restarted: farm refuses it.
            code, why = problem
            self.send(error(code, f"{what} {why}"))
            return False
        if self.tcp and not self.jobs.room_for_new(self.hub.options.max_functions):
            # Each costs memory, a line of `status` and a series of the metrics: local users
            # must not make them without bound (the farm's own peers on the Unix socket may).
            # Idle entries count for nothing: they are freed to make room (room_for_new).
            self.send(error("QUEUE_ERROR", "the server holds --max-functions functions"))
            if priority is None:
                self.hub.stats.registrations_refused["max_functions"] += 1
            else:
                self.jobs.refused_past_max_functions(priority)
            return False
        return True

    def refuse(self, text: str, code: str = "INVALID_COMMAND") -> None:
        """A peer past a limit, or sending what no peer speaking the protocol sends: say
        why (ERROR), then close; what it held goes back to the queues now."""
        msg = "fd %d (%s): refused, closing: %s %s"
        refusals(text, logging.WARNING, msg, self.fd, self.ip, code, text)
        self.send(error(code, text))
        self.close()
        self.detach()

    # -- admin ---------------------------------------------------------------

    @property
    def kind(self) -> str:
        """What the metrics count this connection as."""
        return "worker" if self.abilities else "admin" if self.used_admin else "client"


_echo = T.ECHO_RES

#: A packet's handler: the connection, the packet's arguments, its type. The hot ones
#: (submits, grabs, a worker's news) are methods that take the type; the others are
#: adapted to the one signature here, so each packet is one call from ``data_received``.
Handler = Callable[[Connection, tuple[bytes, ...], int], None]


def _args_only(method: Callable[[Connection, tuple[bytes, ...]], None]) -> Handler:
    return lambda conn, args, _ptype: method(conn, args)


def _plain_keys(table: dict[int, Handler]) -> dict[int, Handler]:
    """Keyed by plain ints, as the decoder gives them: a lookup then ends on identity,
    where an IntEnum key would be compared with ``==`` every time."""
    return {int(ptype): handler for ptype, handler in table.items()}


HANDLERS: dict[int, Handler] = _plain_keys(
    {
        T.CAN_DO: _args_only(Connection.can_do),
        T.CANT_DO: lambda c, a, _: c.jobs.cant_do(c, a[0]),
        T.RESET_ABILITIES: _args_only(Connection.reset_abilities),
        T.PRE_SLEEP: _args_only(Connection.pre_sleep),
        T.GRAB_JOB: Connection.grab,
        T.GRAB_JOB_UNIQ: Connection.grab,
        T.GRAB_JOB_ALL: Connection.grab,
        T.WORK_STATUS: Connection.work_update,
        T.WORK_COMPLETE: Connection.work_update,
        T.WORK_FAIL: Connection.work_update,
        T.WORK_EXCEPTION: Connection.work_update,
        T.WORK_DATA: Connection.work_update,
        T.WORK_WARNING: Connection.work_update,
        T.JOB_ACCEPT: _args_only(Connection.accept),
        T.GET_STATUS: _args_only(Connection.get_status),
        T.GET_STATUS_UNIQUE: _args_only(Connection.get_status_unique),
        T.ECHO_REQ: lambda c, a, _: c.send(encode_res(_echo, a[0])),
        T.SET_CLIENT_ID: _args_only(Connection.set_client_id),
        T.CAN_DO_TIMEOUT: _args_only(Connection.can_do_timeout),
        T.OPTION_REQ: _args_only(Connection.option),
        T.SUBMIT_JOB_EPOCH: _args_only(Connection.submit_epoch),
        T.SUBMIT_JOB_SCHED: _args_only(Connection.submit_sched),
        T.SUBMIT_REDUCE_JOB: Connection.submit_reduce,
        T.SUBMIT_REDUCE_JOB_BACKGROUND: Connection.submit_reduce,
        **dict.fromkeys(SUBMIT_KINDS, Connection.submit),
    }
)
