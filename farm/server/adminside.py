"""The admin text protocol on a connection: a mixin of :class:`farm.server.connection.Connection`.

Admin lines (``status``, ``workers``, ``metrics``...) may come on any connection, between
binary packets. Their replies are text the peer must read: one that sends commands and
never reads them is given a short refusal past ``MAX_UNREAD_ADMIN`` bytes owed, and cut
off at twice that, so a few bytes of ``status`` each cannot make the server hold a whole
reply without bound. The state lives on the connection (``Connection.__init__``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future

from farm import protocol as p
from farm.logrepeats import Brief
from farm.server.admin import run_admin
from farm.server.hub import Hub

__all__ = ["AdminSide", "MAX_UNREAD_ADMIN", "BUSY"]

log = logging.getLogger("farm.server")
#: One line each 10 s at most: any local user could make many (farm.server.connection).
admin_unread = Brief(log)
tcp_admin_refused = Brief(log)

#: Bytes of replies a connection may leave unread before admin commands are refused.
MAX_UNREAD_ADMIN = 1 << 20
BUSY = b"ERR BUSY too+many+replies+unread;+read+them+first\r\n"
#: The share of the server's time that TCP peers' admin commands may take together, and
#: the seconds they may run ahead of it. A listing costs the server in proportion to what
#: it lists, and any local user may make it list much (65,536 functions, 4,096 on each of
#: 64 connections: a 134 MB `workers` took 2-3 s of the loop that serves every job); asked
#: in a loop, such listings held the Executor's calls for seconds. Past the share, TCP
#: peers' admin commands get TCP_BUSY until the time they took is paid down; the Unix
#: socket's (the supervisor's, the farm's own tools') are neither counted nor refused.
TCP_ADMIN_SHARE = 0.1
TCP_ADMIN_AHEAD = 1.0
#: The reply to a command whose work failed in another thread (a bug: it is logged).
FAILED = b"ERR UNKNOWN_ERROR the+command+failed;+see+the+server's+log\r\n"
TCP_BUSY = (
    b"ERR BUSY admin+commands+over+TCP+have+taken+their+share+of+the+server;"
    b"+try+again+in+a+few+seconds+or+use+the+Unix+socket\r\n"
)


class AdminSide:
    """A connection's admin commands (see the module docstring)."""

    # The connection's, read and written here (declared for the type checker).
    hub: Hub
    fd: int
    ip: str
    peer_uid: int | None  # the Unix socket's peer (SO_PEERCRED): own-user commands
    out: bytearray
    closed: bool
    used_admin: bool
    written_this_read: int  # bytes written since the read being acted on came
    transport: asyncio.Transport | None
    backlog: Iterator[p.Packet | p.AdminLine | p.Oversized] | None
    # A reply made in another thread (``backup``) is owed: until it is sent, the connection
    # is not read and the rest of its last read waits (backlog), so no later reply passes it.
    answering: bool
    hung_up: bool  # the peer half-closed while answering: closed once the reply is sent
    send: Callable[[bytes], None]
    detach: Callable[[], None]
    close: Callable[[], None]
    update_reading: Callable[[], None]
    resume_backlog: Callable[[], None]
    finish_backlog: Callable[[], None]

    def handle_admin(self, line: str) -> None:
        self.used_admin = True
        unread = len(self.out)
        if self.transport is not None:
            # What earlier slices of this read were sent counts too: they left for the
            # socket between slices (farm.server.backpressure), where a loopback peer's
            # buffers hide megabytes, while a whole read's replies waited in ``out``.
            unread += max(self.transport.get_write_buffer_size(), self.written_this_read)
        if unread > MAX_UNREAD_ADMIN:
            # Past the limit a command gets a short refusal instead, and back-pressure
            # (pause_writing) stops reading the peer after this turn. Within one read,
            # refusals of blank lines could still pile up: at twice the limit the
            # connection is cut off.
            if unread <= 2 * MAX_UNREAD_ADMIN:
                self.send(BUSY)
                return
            admin_unread(
                "fd %d (%s): %d bytes of replies unread; closing", self.fd, self.ip, unread
            )
            self.out.clear()
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
            self.detach()
            return
        over_tcp = self.ip != "unix"
        if not over_tcp:
            reply = run_admin(self.hub, line, peer_uid=self.peer_uid)
            if isinstance(reply, Future):
                self.owe(reply)
                return
            self.send(reply.encode("utf-8", "surrogateescape"))  # names' bytes as they came
            return
        hub = self.hub
        started = time.monotonic()
        paid = (started - hub.tcp_admin_paid) * TCP_ADMIN_SHARE
        hub.tcp_admin_debt, hub.tcp_admin_paid = max(0.0, hub.tcp_admin_debt - paid), started
        if hub.tcp_admin_debt > TCP_ADMIN_AHEAD:
            tcp_admin_refused("admin commands over TCP past their share; refusing fd %d", self.fd)
            self.send(TCP_BUSY)
            return
        reply = run_admin(hub, line, over_tcp=True)
        assert isinstance(reply, str), "commands answered later are for the Unix socket"
        self.send(reply.encode("utf-8", "surrogateescape"))
        hub.tcp_admin_debt += time.monotonic() - started

    def owe(self, reply: Future[str]) -> None:
        """Send ``reply`` when it is made, before anything else (``answering``)."""
        self.answering = True
        self.update_reading()
        loop = self.hub.loop
        assert loop is not None, "a reply made later needs the loop"

        def made(_: Future[str]) -> None:
            try:
                loop.call_soon_threadsafe(self.answered, reply)
            except RuntimeError:  # the loop has closed: the server stopped meanwhile
                pass

        reply.add_done_callback(made)

    def answered(self, reply: Future[str]) -> None:
        """``reply`` is made: sent, then the rest of the peer's last read is acted on and
        the connection read again (or closed, where the peer half-closed meanwhile)."""
        self.answering = False
        try:
            text = reply.result().encode("utf-8", "surrogateescape")
        except Exception:
            log.exception("fd %d (%s): an admin command failed", self.fd, self.ip)
            text = FAILED
        self.send(text)
        if self.hung_up:
            self.finish_backlog()
            if not self.answering and not self.closed:  # another such command: its turn
                self.close()
                self.detach()
        elif self.backlog is not None:
            self.resume_backlog()  # reads again once it is acted on
        else:
            self.update_reading()
        self.hub.flush_soon()
