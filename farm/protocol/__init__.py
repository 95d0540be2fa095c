"""The Gearman wire, sans I/O: the codec, the client and worker sessions, argument checks.

Nothing in this package opens a socket, starts a thread or touches an event
loop; the server, the client faces and the worker move bytes in and out of it.

    codec     the packet table (numbers, names, field names) and the framing
    decoder   Decoder: a stream of bytes in, whole packets and admin lines out
    kinds     submit kinds and priorities: one table for client and server
    admin     the admin text protocol's replies, parsed
    events    what sessions report to their faces
    client    ClientSession: which reply answers which request, tasks by handle
    tasks     what a client face and its session share: Task, Query, the job events
    worker    WorkerSession: the grab/sleep/wake cycle as a table
    checks    what callers hand the client and worker APIs, checked

The codec's names are re-exported here (``from farm import protocol as p; p.Decoder``).
"""

from farm.protocol.codec import (
    DEFAULT_MAX_PACKET,
    HEADER,
    MAX_ADMIN_LINE,
    MAX_CLIENT_ID,
    MAX_EPOCH,
    MAX_FUNCTION,
    MAX_TIMEOUT,
    MAX_UNIQUE,
    MIN_TIMEOUT,
    OPTION_FAIL_REASON,
    OPTION_GIVE_BACK,
    OPTION_HELD_GRAB,
    OPTION_LAZY_CREATED,
    OPTION_READ_ACCEPT,
    OPTION_REVOKE,
    OPTION_WORK_EXCEPTION,
    PACKETS,
    REQ,
    RES,
    RESERVED,
    RESERVED_PREFIX,
    UNPRINTABLE,
    AdminLine,
    LocalProtocolError,
    Packet,
    PacketSpec,
    PacketType,
    ProtocolError,
    encode,
    encode_req,
    encode_res,
    frame_res,
    name_problem,
)
from farm.protocol.decoder import Decoder, Oversized

__all__ = [
    "DEFAULT_MAX_PACKET",
    "HEADER",
    "MAX_ADMIN_LINE",
    "MAX_CLIENT_ID",
    "MAX_EPOCH",
    "MAX_FUNCTION",
    "MAX_TIMEOUT",
    "MAX_UNIQUE",
    "MIN_TIMEOUT",
    "OPTION_FAIL_REASON",
    "OPTION_GIVE_BACK",
    "OPTION_HELD_GRAB",
    "OPTION_LAZY_CREATED",
    "OPTION_WORK_EXCEPTION",
    "OPTION_READ_ACCEPT",
    "OPTION_REVOKE",
    "PACKETS",
    "REQ",
    "RES",
    "RESERVED",
    "RESERVED_PREFIX",
    "UNPRINTABLE",
    "AdminLine",
    "Decoder",
    "Oversized",
    "LocalProtocolError",
    "Packet",
    "PacketSpec",
    "PacketType",
    "ProtocolError",
    "encode",
    "name_problem",
    "encode_req",
    "encode_res",
    "frame_res",
]
