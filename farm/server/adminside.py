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
from collections.abc import Callable

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
    send: Callable[[bytes], None]
    detach: Callable[[], None]

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
        self.send(reply.encode("utf-8", "surrogateescape"))
        hub.tcp_admin_debt += time.monotonic() - started
