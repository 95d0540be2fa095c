"""Sans-I/O codec for the Gearman wire: bytes in, packets out; packets in, bytes out.

This module knows the packet table, the NUL-separated argument framing and the
admin text lines. It performs no I/O at all, so the server, the client and the
worker share it and tests drive it without sockets.

Framing (Gearman's): a binary packet is a 12-byte header -- magic (``\\0REQ``
toward the server, ``\\0RES`` from it), uint32 type, uint32 body size, all
big-endian -- followed by the body. The body holds a fixed number of
arguments separated by NUL; the last one runs to the end of the body. A
connection whose next byte is not NUL speaks the admin text protocol instead.
"""

from __future__ import annotations

import collections
import enum
import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "REQ",
    "RES",
    "HEADER",
    "DEFAULT_MAX_PACKET",
    "MAX_BODY",
    "MAX_UNIQUE",
    "MAX_FUNCTION",
    "MAX_TIMEOUT",
    "MIN_TIMEOUT",
    "MAX_EPOCH",
    "MAX_CLIENT_ID",
    "name_problem",
    "RESERVED",
    "RESERVED_PREFIX",
    "OPTION_HELD_GRAB",
    "PacketType",
    "PacketSpec",
    "PACKETS",
    "NARGS",
    "SERVER_SENT_ONLY",
    "HELD_GRAB_ONLY",
    "Packet",
    "AdminLine",
    "ProtocolError",
    "LocalProtocolError",
    "encode",
    "encode_req",
    "encode_res",
    "frame_res",
    "text_bytes",
    "wire_text",
    "wire_int",
]

REQ = b"\0REQ"
RES = b"\0RES"
HEADER = struct.Struct(">4sII")
HEADER_SIZE = HEADER.size

#: Largest body accepted by default (gearmand has no limit; farm refuses bigger
#: bodies before buffering them so one peer cannot exhaust memory).
DEFAULT_MAX_PACKET = 64 * 1024 * 1024
#: Longest admin line accepted, its "\n" included (gearmand's limit too): a longer one closes
#: the connection, the peer is treated as hostile.
MAX_ADMIN_LINE = 8192
#: The largest body a packet can carry: its size goes out in 4 bytes (4 GiB - 1).
MAX_BODY = 0xFFFF_FFFF
MAX_UNIQUE = 63
#: Longest function name (and reducer name) accepted. gearmand takes longer ones; here names
#: live as long as their function's entry, so they must not be a way to pin memory.
MAX_FUNCTION = 512
#: Longest CAN_DO_TIMEOUT (seconds) and latest SUBMIT_JOB_EPOCH (epoch seconds) accepted.
MAX_TIMEOUT = 366 * 86400
#: Shortest timeout (seconds) a worker registers. CAN_DO_TIMEOUT goes out in milliseconds,
#: which gearmand reads every value as; farm's server reads one under 1000 as seconds (as
#: php.net documents PHP's, which libgearman passes on as given): only from 1000 ms on do
#: both read one length, and 500 ms would be 500 s on farm (docs/server.md).
MIN_TIMEOUT = 1
MAX_EPOCH = 1 << 40
MAX_CLIENT_ID = 127
#: What a function name or client id may not hold: the admin protocol's listings are lines
#: (status, workers) and a name that breaks one breaks `farm status` and the supervisor's
#: reading of them. ASCII controls; C1 controls (NEL among them) and the Unicode line and
#: paragraph separators, as UTF-8, which Python's str.splitlines() also splits at.
UNPRINTABLE = re.compile(rb"[\x00-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8\xa9]")
#: The prefix of reserved function names (the Executor's pools: signed calls). A farm
#: server hands their jobs only to its trusted Unix-socket workers and takes no submit of
#: one over TCP (server.workerside, server.clientside); farm.toml's pools serving one get a
#: Unix socket alone (config.model, config.rules); an Executor's pool must be one
#: (executor.arguments). Here once, so that none of them drifts: as bytes on the wire, and
#: as text for names read as str.
RESERVED = b"farm."
RESERVED_PREFIX = RESERVED.decode()
#: OPTION_REQ of a worker asking the server to hold its grabs (docs/held-grab.md).
OPTION_HELD_GRAB = b"held-grab"
#: OPTION_REQ of a held-grab worker on a Unix socket: reading a pushed job accepts it.
OPTION_READ_ACCEPT = b"read-accept"
#: OPTION_REQ of a held-grab worker: tell it (JOB_REVOKE) of a pushed job taken back.
OPTION_REVOKE = b"revoke"
#: OPTION_REQ of a client that needs no JOB_CREATED before the job's next news.
OPTION_LAZY_CREATED = b"lazy-created"
#: OPTION_REQ of a worker asking whether WORK_EXCEPTION is safe to send: the server hands
#: it on to clients that asked for exceptions and a plain WORK_FAIL to the others (farm
#: does; gearmand sends those others a WORK_FAIL with a stray NUL that hangs or kills them).
OPTION_WORK_EXCEPTION = b"work-exception"
#: OPTION_REQ of a worker that sends CANT_DO or RESET_ABILITIES only with no job of those
#: functions in hand that it runs: a job the server holds for it then came after them, and it
#: lets that job go unrun, so the server takes it back with no retry (docs/held-grab.md).
OPTION_GIVE_BACK = b"give-back"
#: OPTION_REQ of a client: a job the server fails itself (its timeout, its retries, an
#: operator's cancel) ends in a WORK_FAIL that says why after its handle (docs/held-grab.md).
OPTION_FAIL_REASON = b"fail-reason"


class PacketType(enum.IntEnum):
    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42
    # farm's own, after OPTION_REQ held-grab only (docs/held-grab.md); gearmand numbers
    # its packets one by one and is at 42, so farm's start at 200.
    JOB_ACCEPT = 200
    JOB_REVOKE = 201  # S→W, after OPTION_REQ revoke


PT = PacketType
#: farm's own packets that only a server sends: a server's decoder does not know them.
SERVER_SENT_ONLY = frozenset({int(PT.JOB_REVOKE)})
#: farm's own packets that a server takes only from a peer that negotiated held grab
#: (docs/held-grab.md): until then, a server's decoder does not know them either.
HELD_GRAB_ONLY = frozenset({int(PT.JOB_ACCEPT)})


class PacketSpec(NamedTuple):
    """One row of the packet table: the arguments' names, and whether the last is data.

    ``args`` is the named-tuple type a decoded packet's arguments come in, so
    code reads ``packet.args.handle`` rather than ``packet.args[0]``.
    """

    name: str
    fields: tuple[str, ...]
    has_data: bool
    args: type[tuple[bytes, ...]]
    number: int

    @property
    def nargs(self) -> int:
        return len(self.fields)


def _spec(ptype: PacketType, fields: str = "", *, data: bool = False) -> PacketSpec:
    """A table row; the packet's name is its PacketType's, written once."""
    name = ptype.name
    names = tuple(fields.split())
    args = collections.namedtuple(name.title().replace("_", "") + "Args", names)  # type: ignore[misc]  # names come from the table
    return PacketSpec(name, names, data, args, int(ptype))


#: The packet table, as data: number → name, arguments (the data argument last).
PACKETS: dict[int, PacketSpec] = {
    spec.number: spec
    for spec in (
        _spec(PT.CAN_DO, "function"),
        _spec(PT.CANT_DO, "function"),
        _spec(PT.RESET_ABILITIES),
        _spec(PT.PRE_SLEEP),
        _spec(PT.NOOP),
        _spec(PT.SUBMIT_JOB, "function unique data", data=True),
        _spec(PT.JOB_CREATED, "handle"),
        _spec(PT.GRAB_JOB),
        _spec(PT.NO_JOB),
        _spec(PT.JOB_ASSIGN, "handle function data", data=True),
        _spec(PT.WORK_STATUS, "handle numerator denominator"),
        _spec(PT.WORK_COMPLETE, "handle data", data=True),
        _spec(PT.WORK_FAIL, "handle"),
        _spec(PT.GET_STATUS, "handle"),
        _spec(PT.ECHO_REQ, "data", data=True),
        _spec(PT.ECHO_RES, "data", data=True),
        _spec(PT.SUBMIT_JOB_BG, "function unique data", data=True),
        _spec(PT.ERROR, "code text"),
        _spec(PT.STATUS_RES, "handle known running numerator denominator"),
        _spec(PT.SUBMIT_JOB_HIGH, "function unique data", data=True),
        _spec(PT.SET_CLIENT_ID, "client_id"),
        _spec(PT.CAN_DO_TIMEOUT, "function timeout"),
        _spec(PT.ALL_YOURS),
        _spec(PT.WORK_EXCEPTION, "handle data", data=True),
        _spec(PT.OPTION_REQ, "option"),
        _spec(PT.OPTION_RES, "option"),
        _spec(PT.WORK_DATA, "handle data", data=True),
        _spec(PT.WORK_WARNING, "handle data", data=True),
        _spec(PT.GRAB_JOB_UNIQ),
        _spec(PT.JOB_ASSIGN_UNIQ, "handle function unique data", data=True),
        _spec(PT.SUBMIT_JOB_HIGH_BG, "function unique data", data=True),
        _spec(PT.SUBMIT_JOB_LOW, "function unique data", data=True),
        _spec(PT.SUBMIT_JOB_LOW_BG, "function unique data", data=True),
        _spec(PT.SUBMIT_JOB_SCHED, "function unique minute hour mday month wday data", data=True),
        _spec(PT.SUBMIT_JOB_EPOCH, "function unique epoch data", data=True),
        _spec(PT.SUBMIT_REDUCE_JOB, "function unique reducer aggregator data", data=True),
        _spec(
            PT.SUBMIT_REDUCE_JOB_BACKGROUND, "function unique reducer aggregator data", data=True
        ),
        _spec(PT.GRAB_JOB_ALL),
        _spec(PT.JOB_ASSIGN_ALL, "handle function unique reducer data", data=True),
        _spec(PT.GET_STATUS_UNIQUE, "unique"),
        _spec(PT.STATUS_RES_UNIQUE, "unique known running numerator denominator client_count"),
        _spec(PT.JOB_ACCEPT, "handle"),
        _spec(PT.JOB_REVOKE, "handle"),
    )
}


#: Each packet type's number of arguments (its decoders' table, too).
NARGS = {t: s.nargs for t, s in PACKETS.items()}


class ProtocolError(Exception):
    """The peer broke the protocol.

    ``code`` is the Gearman ERROR code to answer with, when an answer makes
    sense; ``fatal`` says the byte stream cannot be resynchronised and the
    connection must be closed.
    """

    def __init__(self, message: str, *, code: str = "INVALID_COMMAND", fatal: bool = True) -> None:
        super().__init__(message)
        self.code = code
        self.fatal = fatal
        #: Of a packet over the size limit whose first argument is a job handle (a worker's
        #: news of its job): the type and that handle, so the server can fail the job.
        self.ptype: int | None = None
        self.handle: bytes | None = None


class LocalProtocolError(ValueError):
    """We were asked to produce something the protocol cannot express."""


class Packet(NamedTuple):
    """One binary packet. ``magic`` is REQ or RES; ``args`` is the table's named tuple
    for the type (``args.handle``, ``args.data``), so it indexes like a plain tuple too."""

    magic: bytes
    type: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        spec = PACKETS.get(self.type)
        return spec.name if spec else f"UNKNOWN({self.type})"


@dataclass(frozen=True, slots=True)
class AdminLine:
    """One line of the admin text protocol, without its line ending."""

    line: str


def name_problem(name: bytes) -> tuple[str, str] | None:
    """Why farm's job server refuses ``name`` as a function (or reducer) name: the Gearman
    error code and what is wrong, worded to follow the name ("function name is empty");
    None if it takes it. The one statement of the server's rule: the binary protocol, the
    admin commands that make functions and the CLI's checks read it. The libraries
    (farm.protocol.checks.check_name) do not: gearmand serves names this refuses (past 512
    bytes, a tab, ESC, C1 controls, U+2028), so they refuse only what no server can take
    (empty, a NUL) and leave the rest to the server they talk to."""
    if not name:
        return "INVALID_COMMAND", "is empty"
    if len(name) > MAX_FUNCTION:
        return "ARGUMENT_TOO_LARGE", f"is longer than {MAX_FUNCTION} bytes"
    if UNPRINTABLE.search(name):
        return "INVALID_COMMAND", "holds a control character"
    return None


def encode(magic: bytes, ptype: int, *args: bytes) -> bytes:
    """Frame one packet. Raises LocalProtocolError (a ValueError) for a wrong argument list,
    or a body over ``MAX_BODY``."""
    nargs = NARGS.get(ptype)
    if nargs is None:
        raise LocalProtocolError(f"unknown packet type {ptype}")
    if len(args) != nargs:
        raise LocalProtocolError(f"{PACKETS[ptype].name} takes {nargs} arguments, got {len(args)}")
    # Weighed before it is joined: a body past what its length can say is refused without
    # a copy of it all (4 GiB, a MemoryError of its own), and as such, not as struct.error.
    size = sum(map(len, args)) + max(nargs - 1, 0)
    if size > MAX_BODY:
        raise LocalProtocolError(
            f"{PACKETS[ptype].name}: a body of {size} bytes is more than a packet can carry:"
            f" its length is 4 bytes, at most {MAX_BODY} (4 GiB - 1)"
        )
    body = b"\0".join(args)
    # The separators must be the only NULs before the last argument (which may hold any):
    # one count in C instead of a search per argument.
    if nargs > 1 and body.count(b"\0", 0, size - len(args[-1])) != nargs - 1:
        raise LocalProtocolError(f"{PACKETS[ptype].name}: NUL inside a non-final argument")
    return HEADER.pack(magic, ptype, size) + body


def frame_res(ptype: int, *args: bytes) -> bytes:
    """A packet from the server, unchecked: for the server's hot replies, whose arguments
    are its own handles and what it decoded from the wire (split on NUL, so only the last
    can hold one). Anything else goes through ``encode_res``."""
    body = b"\0".join(args)
    return HEADER.pack(RES, ptype, len(body)) + body


def encode_req(ptype: int, *args: bytes) -> bytes:
    """A packet toward the server."""
    return encode(REQ, ptype, *args)


def encode_res(ptype: int, *args: bytes) -> bytes:
    """A packet from the server."""
    return encode(RES, ptype, *args)


def text_bytes(text: str) -> bytes:
    """``wire_text`` undone: a name or key as the bytes it stands for (UTF-8, and each
    surrogate that ``wire_text`` or os.fsdecode made of a byte as that byte).
    UnicodeEncodeError for a surrogate that stands for none."""
    return text.encode("utf-8", "surrogateescape")


def wire_text(raw: bytes) -> str:
    """Bytes the protocol leaves opaque (a job handle) as text that keeps them all:
    surrogateescape, as os.fsdecode, so ``.encode("utf-8", "surrogateescape")`` gives the
    bytes back. A strict decode of a server's handle raised out of the client's call."""
    return raw.decode("utf-8", "surrogateescape")


def wire_int(raw: bytes) -> int:
    """A number field of a server's packet (WORK_STATUS, STATUS_RES); 0 where it is none."""
    try:
        return int(raw or b"0")
    except ValueError:
        return 0
