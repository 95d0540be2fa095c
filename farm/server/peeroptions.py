"""What a peer asks about its own connection: a mixin of
:class:`farm.server.connection.Connection`.

OPTION_REQ turns on what gearmand offers (``exceptions``) and farm's own extensions
(held grab, read-accept, revoke, lazy-created, give-back, fail-reason: docs/held-grab.md);
SET_CLIENT_ID names the peer in the ``workers`` listing. The state lives on the connection
(``Connection.__init__``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from farm import protocol as p
from farm.logrepeats import Repeats
from farm.protocol import PacketType as T
from farm.protocol import encode_res
from farm.server.hub import Hub
from farm.server.workerside import error

__all__ = ["PeerOptions", "refusals"]

#: Refusals a peer's library may not show (PHP reads "unexpected packet:GEARMAN_ERROR"):
#: each reason once each 10 s at most.
refusals = Repeats(logging.getLogger("farm.server"), kinds=16)


class PeerOptions:
    """OPTION_REQ and SET_CLIENT_ID."""

    # The connection's, read and written here (declared for the type checker).
    hub: Hub
    decoder: p.Decoder
    send: Callable[[bytes], None]
    fd: int
    ip: str
    exceptions: bool
    may_hold_grab: bool
    read_accept: bool
    revoke: bool
    gives_back: bool
    lazy_created: bool
    fail_reason: bool
    client_id: bytes

    def option(self, args: tuple[bytes, ...]) -> None:
        name = args[0]
        # gearmand reads its one option in any case and echoes the name as sent; farm's
        # own options (docs/held-grab.md) are spelled one way only.
        if name.lower() == b"exceptions":
            self.exceptions = True
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_HELD_GRAB:
            self.may_hold_grab = True
            self.decoder.held_grab_negotiated()  # JOB_ACCEPT is no longer unknown
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_READ_ACCEPT and self.ip == "unix":  # outq is told on Unix only
            self.read_accept = True
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_REVOKE:
            self.revoke = True
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_WORK_EXCEPTION:  # what farm does anyway: see the constant
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_GIVE_BACK:
            self.gives_back = True
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_FAIL_REASON:
            self.fail_reason = True
            self.send(encode_res(T.OPTION_RES, name))
        elif name == p.OPTION_LAZY_CREATED:
            self.lazy_created = self.hub.loop is not None  # its timer needs a running loop
            self.send(encode_res(T.OPTION_RES, name))
        else:
            self.send(error("UNKNOWN_OPTION", "Server does not recognize given option"))

    def set_client_id(self, args: tuple[bytes, ...]) -> None:
        client_id = args[0]
        if len(client_id) > p.MAX_CLIENT_ID:
            why = f"client id is longer than {p.MAX_CLIENT_ID} bytes"
            msg = "fd %d (%s): refused: ARGUMENT_TOO_LARGE %s"
            refusals(why, logging.WARNING, msg, self.fd, self.ip, why)
            self.send(error("ARGUMENT_TOO_LARGE", why))
            return
        if p.UNPRINTABLE.search(client_id):
            # It is a word of the `workers` listing: a newline in it planted lines there.
            self.send(error("INVALID_COMMAND", "client id holds a control character"))
            return
        self.client_id = client_id or b"-"
