"""Back-pressure between peers: a mixin of :class:`farm.server.connection.Connection`.

A connection whose peer does not read its replies (the transport passed its high-water
mark) is not read either, so one slow reader cannot make the server buffer without
bound; a worker streaming WORK_DATA or WARNING to such a client is not read until that
client has drained. Replies it is sent still pile up (each job's result, echoes): what
TCP peers leave unread counts against --max-unread-bytes, and past it the one leaving
the most is disconnected, so local users cannot make the server buffer results until it
runs out of memory. Unix-socket peers are the farm's own callers and are not counted.
What one read brings is acted on READ_SLICE packets a loop turn, the connection not read
meanwhile: a peer that pipelines thousands of packets (another local user's flood of
background jobs) shares the loop with the others, the owner's calls on the Unix socket
among them, instead of holding it for the whole of them.
The state lives on the connection (``Connection.__init__``).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import sys
import termios
from collections.abc import Callable, Iterator
from typing import Any

from farm import protocol as p
from farm.logrepeats import Brief
from farm.server.hub import HeldReply
from farm.server.jobs import Job

log = logging.getLogger("farm.server")
#: One line each 10 s at most: any local user could make many (farm.server.connection).
over_unread, over_partial, over_stall = Brief(log), Brief(log), Brief(log)
over_connections = Brief(log)  # past --max-connections (turn_away; farm.server.tlsgate)
#: Packets of one connection's read acted on in one loop turn; the rest wait for the next
#: (``defer``), so no peer's burst holds the others for the whole of it.
READ_SLICE = 16
Event = p.Packet | p.AdminLine | p.Oversized


def kernel_unsent(fd: int) -> int:
    """What socket ``fd`` still holds of what was written to it, as far as the system tells
    (Linux's SIOCOUTQ), else 0: over TCP the bytes its peer's kernel has not acknowledged;
    on a Unix socket the memory its queued buffers are charged, more than their bytes, which
    falls only as the peer reads a buffer whole. A measure of progress, not of bytes read."""
    try:
        return int.from_bytes(fcntl.ioctl(fd, termios.TIOCOUTQ, bytes(4)), sys.byteorder)
    except (OSError, ValueError, OverflowError):
        return 0


class BackPressure:
    """Who waits for whose reader (see the module docstring)."""

    # The connection's, read and written here (declared for the type checker).
    transport: asyncio.Transport | None
    closed: bool
    tcp: bool
    fd: int
    ip: str
    hub: Any  # farm.server.hub.Hub
    partial: int
    unsent: int
    out: bytearray
    held: list[HeldReply] | None
    held_bytes: int
    held_full: bool  # replies held for the store's commit past HELD_READ_LIMIT
    backlog: Iterator[Event] | None  # a read's packets left for a later loop turn (defer)
    answering: bool  # an admin reply is owed first (AdminSide.owe)
    read_slice: int  # packets acted on per call of data_received (-1: all)
    decoder: p.Decoder
    data_received: Callable[..., None]
    refuse: Callable[..., None]
    held_counted: int  # of held_bytes, what hub.tcp_held counts
    detach: Callable[[], None]
    write_paused: bool
    reading: bool
    waiting_on: set[BackPressure]
    held_back: set[BackPressure]
    stall_timer: asyncio.TimerHandle | None  # this client holds a worker up (time_stall)
    stall_mark: int  # what it had taken when stall_timer was set (taken)
    bytes_out: int  # bytes written to its transport, all told

    def turn_away(self, transport: asyncio.BaseTransport) -> None:
        """A connection past --max-connections: closed at once, as gearmand does, the reason
        in the server's log (once a while: ``over_connections``). No ERROR first: peers
        read one there as an answer (farm's worker reset its backoff on it and reconnected
        16 times a second, Perl's Gearman::Worker died of it, libgearman's looped on
        GEARMAN_UNEXPECTED_PACKET), where a close meets each one's backoff."""
        over_connections(
            "past --max-connections (%d; [server] max_connections, which the descriptor limit"
            " may have lowered: LimitNOFILE=, ulimit -n); closing fd %d (%s)",
            self.hub.options.max_connections,
            self.fd,
            self.ip,
        )
        self.closed = True
        self.tcp = False  # not counted
        transport.close()

    def defer(self, events: Iterator[Event]) -> None:
        """Leave the rest of a read for a later loop turn, not reading meanwhile: a peer
        that sends thousands of packets at once must not hold every other peer (the
        owner's calls on the Unix socket among them) for the whole of them."""
        self.backlog = events
        self.update_reading()
        assert self.hub.loop is not None
        self.hub.loop.call_soon(self.resume_backlog)

    def resume_backlog(self) -> None:
        if self.answering:  # a turn due before the reply was owed: the rest waits for it
            return
        backlog, self.backlog = self.backlog, None
        if backlog is None or self.closed:
            return
        self.data_received(b"", backlog)
        if self.backlog is None:
            self.update_reading()

    def finish_backlog(self) -> None:
        """The peer sends no more (it went, or half-closed: over TLS its close_notify comes
        in the same read as the records before it): what it sent before counts, acted on
        all at once, as there is no later turn for it (the connection closes next)."""
        self._act_on_backlog(later_turns=False)

    def catch_up(self) -> None:
        """Act now on all that is left of the last read: a deadline of this peer's is due,
        and what it sent before it counts (a worker's WORK_COMPLETE read behind its news
        before its job's CAN_DO_TIMEOUT), as when a read was acted on whole. At most one
        read (256 KB) a deadline, in one turn."""
        self._act_on_backlog(later_turns=True)

    def _act_on_backlog(self, later_turns: bool) -> None:
        if self.answering:  # the rest waits for the reply owed (AdminSide.answered)
            return
        backlog, self.backlog = self.backlog, None
        if backlog is None or self.closed:
            return
        slice_, self.read_slice = self.read_slice, -1
        try:
            self.data_received(b"", backlog)
        finally:
            if later_turns:  # the next reads are sliced again
                self.read_slice = slice_
        if later_turns:
            self.update_reading()

    def count_partial(self) -> None:
        """Keep the server-wide count of bytes waiting to become whole packets; the
        connection that takes it past --max-partial-bytes is refused, so many slow
        senders of large bodies cannot hold the server's memory between them."""
        now = self.decoder.buffered
        grew = now - self.partial  # not 0: data_received calls this only on a change
        self.partial = now
        if self.hub.count_partial(grew, self.tcp) and grew > 0:
            over_partial(
                "fd %d (%s): partial packets over the server's limit; closing", self.fd, self.ip
            )
            self.refuse("too many partly received bytes on the server", "ARGUMENT_TOO_LARGE")

    def pause_writing(self) -> None:
        # The peer is not reading its replies: stop reading its requests until it does.
        self.write_paused = True
        if self.tcp:
            self.hub.slow_readers.add(self)
        self.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.hub.slow_readers.discard(self)
        self.update_reading()
        self.release_held_back()

    def count_unsent(self, size: int) -> None:
        """``size`` bytes more for this TCP peer, made this turn and not written yet. One
        job's result goes to every submit attached to it, each a copy: 2,000 submits of one
        unique made a 1 MB result 2 GB before any write could tell who does not read. So
        what TCP peers are owed counts against --max-unread-bytes as it is made."""
        self.unsent += size
        hub = self.hub
        hub.tcp_unsent += size
        if hub.tcp_unsent + hub.tcp_held > hub.options.max_unread_bytes:
            self.check_unread()

    def count_held(self, size: int) -> None:
        """``size`` bytes more held for this TCP peer behind a JOB_CREATED waiting for the
        store's commit: owed to it as much as a reply it has not read, so they count against
        --max-unread-bytes until they leave (``held_gone``), however long the commit takes."""
        self.held_counted += size
        hub = self.hub
        hub.tcp_held += size
        if hub.tcp_unsent + hub.tcp_held > hub.options.max_unread_bytes:
            self.check_unread()

    def held_gone(self, left: int) -> None:
        """Of what count_held counted, only ``left`` bytes are still held."""
        left = min(left, self.held_counted)
        self.hub.tcp_held -= self.held_counted - left
        self.held_counted = left

    def unsent_gone(self) -> None:
        """What count_unsent counted was written, or dropped."""
        self.hub.tcp_unsent -= self.unsent
        self.unsent = 0

    def check_unread(self) -> None:
        """After a write to a TCP peer that does not read, or when what this turn made for
        TCP peers is past the limit: disconnect the peers owed the most (what their transport
        holds, and what is not written yet) until all of them together are within
        --max-unread-bytes."""
        hub = self.hub
        sizes = {
            conn: conn.unsent + conn.held_counted + conn.transport.get_write_buffer_size()
            for conn in (*hub.slow_readers, *hub.dirty, *hub.holding)
            if conn.tcp and conn.transport is not None and not conn.closed
        }
        total, limit = sum(sizes.values()), hub.options.max_unread_bytes
        for conn in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= limit:
                return
            total -= sizes[conn]
            over_unread(
                "fd %d (%s): %d MiB of replies unread, and TCP peers together past"
                " --max-unread-bytes; disconnecting it",
                conn.fd,
                conn.ip,
                sizes[conn] >> 20,
            )
            conn.abort()

    def abort(self) -> None:
        """Close now, dropping what the peer left unread (a close would wait to send it)."""
        self.closed = True
        self.hub.count_partial(-self.partial, self.tcp)
        self.partial = 0
        self.out.clear()  # what it is owed goes now, not at the turn's end
        self.held = None
        self.held_bytes = 0
        self.held_gone(0)
        self.unsent_gone()
        if self.transport is not None:
            self.transport.abort()
        self.detach()  # what it held goes back to the queues now

    def update_reading(self) -> None:
        want = not (
            self.write_paused
            or self.waiting_on
            or self.held_full
            or self.backlog is not None
            or self.answering
        )
        if want == self.reading or self.closed or self.transport is None:
            return
        self.reading = want
        if want:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def wait_for_readers(self, job: Job) -> None:
        """Stop reading this worker until the clients of ``job`` that stopped reading
        (their transport past the high-water mark) have drained what they were sent; a
        client that drains nothing for --stall-timeout is disconnected (``stalled``)."""
        for client in job.clients:
            if not isinstance(client, BackPressure) or client is self or client.closed:
                continue
            if client.write_paused:
                if not client.held_back:
                    client.time_stall()
                client.held_back.add(self)
                self.waiting_on.add(client)
        self.update_reading()

    def let_go(self, job: Job) -> None:
        """The job model no longer counts ``job`` as this worker's (it ended, timed out, was
        taken back): its clients' reading holds the worker no longer. What it still streams
        for the job is read and dropped (``expired``), as gearmand serves on. All its waits
        end: the next news of a job it still holds waits again where it must."""
        if self.waiting_on:  # a worker waits on nobody in the common case: one test a job
            self.stop_waiting()
            self.update_reading()

    def stop_waiting(self) -> None:
        for client in self.waiting_on:
            client.held_back.discard(self)
        self.waiting_on.clear()

    def time_stall(self) -> None:
        """A worker is held up by this client's not reading: past --stall-timeout without
        taking a byte of its replies, the client goes, not the worker. Timed from what it
        has taken so far (``stall_mark``): ``stalled`` looks again then."""
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        loop = self.hub.loop
        if loop is not None:  # a server driven by hand, as in tests, has no timers
            self.stall_mark = self.taken()
            self.stall_timer = loop.call_later(self.hub.options.stall_timeout, self.stalled)

    def taken(self) -> int:
        """How much of its replies this peer has taken, as a mark that rises when it reads:
        written, less what its transport and the kernel hold (``kernel_unsent``: it moves a
        TCP segment, or a Unix socket's buffer, at a time). The kernel's share counts: a
        socket is writable again only once its send buffer (up to 4 MiB) is half empty, so
        the transport's alone stood still for seconds while the peer read."""
        transport = self.transport
        held = transport.get_write_buffer_size() if transport is not None else 0
        return self.bytes_out - held - kernel_unsent(self.fd)

    def stalled(self) -> None:
        """Its unread bytes are what holds the worker: disconnected, as --max-unread-bytes
        would have done had the worker's stream been read into them. A client that took
        some since (reading steadily, slower than the worker streams) is timed again: only
        the drain below the low-water mark (``resume_writing``) ended the wait, and one
        reading 200 KiB/s with more than --stall-timeout's worth waiting was cut."""
        self.stall_timer = None
        if self.closed or not self.write_paused or not self.held_back:
            return
        if self.taken() > self.stall_mark:
            self.time_stall()
            return
        over_stall(
            "fd %d (%s): took nothing of its replies for %g s (not a TCP segment, nor a socket"
            " buffer) while %d worker(s) stream to it (--stall-timeout); disconnecting it",
            self.fd,
            self.ip,
            self.hub.options.stall_timeout,
            len(self.held_back),
        )
        self.release_held_back()
        self.abort()

    def release_held_back(self) -> None:
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        held, self.held_back = self.held_back, set()
        for worker in held:
            worker.waiting_on.discard(self)
            worker.update_reading()
