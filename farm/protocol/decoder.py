"""The incremental decoder of the Gearman wire: bytes in, whole packets and admin lines out.

The packet table and the framing rules are ``codec``'s; this module applies them to a
stream that arrives in pieces, on the hot path of every peer (the server reads each
connection's bytes through it), so it trades a little generality for calls saved.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.protocol.codec import (
    DEFAULT_MAX_PACKET,
    HEADER,
    HEADER_SIZE,
    HELD_GRAB_ONLY,
    MAX_ADMIN_LINE,
    NARGS,
    PACKETS,
    REQ,
    RES,
    SERVER_SENT_ONLY,
    AdminLine,
    Packet,
    PacketType,
    ProtocolError,
)

__all__ = ["Decoder", "Oversized"]

#: What a server reads: not farm's own packets that only a server sends (JOB_REVOKE, to a
#: worker that asked: docs/held-grab.md). From a peer they are the unknown numbers they are
#: to gearmand, which closes the connection; known ones sent the wrong way (JOB_ASSIGN) are
#: answered INVALID_COMMAND, by both.
_SERVER_NARGS = {t: n for t, n in NARGS.items() if t not in SERVER_SENT_ONLY}
#: What a server reads from a peer that has not negotiated held grab: not JOB_ACCEPT either
#: (docs/held-grab.md). Unknown here, before its size is looked at, it closes the connection
#: whatever size it claims, as any unknown number does, not ARGUMENT_TOO_LARGE and 2 GiB
#: read past; and with \0RES magic too, not INVALID_MAGIC.
_UNNEGOTIATED_NARGS = {t: n for t, n in _SERVER_NARGS.items() if t not in HELD_GRAB_ONLY}
_ARGS = {t: s.args for t, s in PACKETS.items()}
_NO_ARGS: tuple[bytes, ...] = ()
#: How many NULs split a body: all but the last argument's when it is data (which may hold
#: NULs), one more otherwise, so that a NUL inside that last argument shows (see feed).
_SPLITS = {t: s.nargs - 1 if s.has_data else s.nargs for t, s in PACKETS.items()}
#: A client's that asked for fail-reason (docs/held-grab.md): WORK_FAIL whole, its handle,
#: a NUL and why the server failed the job (the session cuts it at the NUL, as above).
_FAIL_REASON_SPLITS = {**_SPLITS, int(PacketType.WORK_FAIL): 0}
#: A worker's news of a job, and a job assigned to a worker: packets whose first argument is
#: the job's handle, so that one too large to take can still fail that job.
_HANDLE_FIRST = frozenset(
    t
    for t, s in PACKETS.items()
    if s.name.startswith(("WORK_", "JOB_ASSIGN")) and s.fields[0] == "handle"
)
#: A worker's news that is a handle and data (WORK_DATA, _WARNING, _COMPLETE, _EXCEPTION):
#: Perl's Gearman::Worker sends the bare handle when the data is false in Perl ("" or "0"),
#: and that can only mean no data.
_HANDLE_THEN_DATA = frozenset(
    t for t in _HANDLE_FIRST if PACKETS[t].has_data and PACKETS[t].fields == ("handle", "data")
)
_tuple_new = tuple.__new__


#: The longest job handle looked for at the start of a packet too large to take.
_HANDLE_PEEK = 128


def _over_limit(size: int, limit: int, *, fatal: bool = True) -> ProtocolError:
    return ProtocolError(
        f"packet body of {size} bytes exceeds the limit of {limit}",
        code="ARGUMENT_TOO_LARGE",
        fatal=fatal,
    )


def _too_large(
    src: bytes | bytearray, pos: int, end: int, ptype: int, size: int, limit: int
) -> ProtocolError | None:
    """The error for a packet whose body is over ``limit``; None to wait for more bytes.

    A worker's news of its job (a result too large, say) names the job's handle first, as
    does a job assigned to a worker: the error carries it, so the server (or the worker)
    can fail that job rather than have it run, and refused, again and again. It waits
    for the handle's bytes, never more.
    """
    exc = _over_limit(size, limit)
    if ptype in _HANDLE_FIRST:
        start = pos + HEADER_SIZE
        head = bytes(src[start : min(end, start + _HANDLE_PEEK)])
        nul = head.find(b"\0")
        if nul < 0 and len(head) < _HANDLE_PEEK and len(head) < size:
            return None
        exc.ptype = ptype
        exc.handle = head[:nul] if nul >= 0 else None
    return exc


@dataclass(frozen=True, slots=True)
class Oversized:
    """A packet over the size limit, read past (``skip_too_large``, ``read_past_too_large``):
    its type, the job handle it names first (None: it names none) and its body's size; the
    body itself was dropped unbuffered."""

    ptype: int
    handle: bytes | None
    size: int
    limit: int

    def error(self) -> ProtocolError:
        """The error to answer it with; not fatal, as the stream goes on behind it."""
        exc = _over_limit(self.size, self.limit, fatal=False)
        exc.ptype, exc.handle = self.ptype, self.handle  # read only with a handle
        return exc


#: A buffered body this large is split where it lies (``_split_in_place``): slicing it out
#: and splitting that held the body three times over besides the buffer, 240 MB of memory
#: at the peak of one 60 MB job.
_LARGE = 1 << 16


def _split_in_place(buf: bytes | bytearray, start: int, stop: int, maxsplit: int) -> list[bytes]:
    """``bytes(buf[start:stop]).split(b"\\0", maxsplit)`` with one copy of each argument and
    none of the whole (``maxsplit`` >= 0, as every packet's is)."""
    parts = []
    with memoryview(buf) as view:  # released before the caller trims the buffer
        for _ in range(maxsplit):
            nul = buf.find(b"\0", start, stop)
            if nul < 0:
                break
            parts.append(bytes(view[start:nul]))
            start = nul + 1
        parts.append(bytes(view[start:stop]))
    return parts


class Decoder:
    """Incremental decoder: ``feed`` bytes, get whole packets and admin lines.

    ``max_packet`` bounds the body size: a bigger header raises ProtocolError
    at once, before any of the body is buffered. ``allow_admin`` is False on
    the client side, where every byte must be binary. With ``skip_too_large`` (a client's,
    whose peer may be a gearmand, which has no limit) such a packet that names its job
    first is an ``Oversized`` event instead, and its body is read past, never buffered: the
    stream stays whole, and the other jobs on it go on. ``read_past_too_large`` (the
    server's) does so for every packet: a client that sent one too large gets its ERROR
    and keeps its connection, as its next request would otherwise meet the close. The
    server's (``server_side``) does not know the packets only a server sends, nor, until
    ``held_grab_negotiated``, the ones only a held-grab worker sends.
    """

    __slots__ = (
        "_buf",
        "_skip",
        "error",
        "max_packet",
        "allow_admin",
        "skip_too_large",
        "read_past_too_large",
        "_nargs",
        "_splits",
    )

    def __init__(
        self,
        *,
        max_packet: int = DEFAULT_MAX_PACKET,
        allow_admin: bool = True,
        skip_too_large: bool = False,
        read_past_too_large: bool = False,
        server_side: bool = False,
        fail_reason: bool = False,
    ) -> None:
        self._buf = bytearray()
        self._skip = 0  # bytes of an Oversized packet's body still to read past
        #: The protocol error held back by the last ``feed`` (raised by ``check``), if any.
        self.error: ProtocolError | None = None
        self.max_packet = max_packet
        self.allow_admin = allow_admin
        self.skip_too_large = skip_too_large
        self.read_past_too_large = read_past_too_large
        self._nargs = _UNNEGOTIATED_NARGS if server_side else NARGS
        self._splits = _FAIL_REASON_SPLITS if fail_reason else _SPLITS

    def held_grab_negotiated(self) -> None:
        """The peer negotiated held grab: a server's decoder now knows JOB_ACCEPT. Called
        as the OPTION_REQ is acted on; a JOB_ACCEPT decoded in the same read before then
        stays unknown, and none can be owed yet: it answers a push, which comes later."""
        if self._nargs is _UNNEGOTIATED_NARGS:
            self._nargs = _SERVER_NARGS

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet | AdminLine | Oversized]:
        """Add ``data`` and return every event it completes, in order.

        A protocol error is raised at once when nothing before it was decoded;
        otherwise the events before it are returned and the error is kept for
        ``check()`` (or the next ``feed``), so no good packet is lost to a bad one.
        """
        if self.error is not None:
            self.check()
        if self._skip:  # the rest of an Oversized body (nothing is buffered meanwhile)
            if len(data) <= self._skip:
                self._skip -= len(data)
                return []
            data, self._skip = data[self._skip :], 0
        buf = self._buf
        # Most reads hold whole packets and nothing waits before them: those are decoded
        # from ``data`` itself, whose slices are already the bytes the arguments must be.
        # Otherwise the bytes go to the buffer first, as a large body arriving in pieces
        # must (appending is linear; re-joining each piece would be quadratic).
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data if data.__class__ is bytes else bytes(data)
        events: list[Packet | AdminLine | Oversized] = []
        pos = 0
        end = len(src)
        unpack = HEADER.unpack_from
        max_packet = self.max_packet
        known = self._nargs
        splits = self._splits
        try:
            while pos < end:
                if src[pos] != 0:
                    if not self.allow_admin:
                        raise ProtocolError("expected a binary packet", code="INVALID_MAGIC")
                    # A line of more than MAX_ADMIN_LINE bytes with its "\n" closes the
                    # connection, as gearmand's does, whether it is whole in this read or
                    # still coming: a long line came whole was answered, one cut was not.
                    nl = src.find(b"\n", pos, pos + MAX_ADMIN_LINE)
                    if nl < 0:
                        if end - pos >= MAX_ADMIN_LINE:
                            raise ProtocolError("admin line too long")
                        break
                    line = bytes(src[pos:nl]).rstrip(b"\r")
                    pos = nl + 1
                    # Bytes that are not UTF-8 survive the round trip (function names).
                    events.append(AdminLine(line.decode("utf-8", "surrogateescape")))
                    continue
                if end - pos < HEADER_SIZE:
                    break
                magic, ptype, size = unpack(src, pos)
                if magic != REQ and magic != RES:
                    raise ProtocolError(f"bad magic {magic!r}", code="INVALID_MAGIC")
                nargs = known.get(ptype)
                if nargs is None:
                    raise ProtocolError(f"unknown packet type {ptype}")
                if size > max_packet:
                    too_large = _too_large(src, pos, end, ptype, size, max_packet)
                    if too_large is None:
                        break  # the handle is not here yet
                    if not self.read_past_too_large and (
                        not self.skip_too_large or too_large.handle is None
                    ):
                        raise too_large
                    events.append(Oversized(ptype, too_large.handle, size, max_packet))
                    stop = pos + HEADER_SIZE + size
                    self._skip = max(0, stop - end)
                    pos = min(stop, end)
                    continue
                stop = pos + HEADER_SIZE + size
                if stop > end:
                    break
                if nargs == 0:
                    events.append(_tuple_new(Packet, (magic, ptype, _NO_ARGS)))
                    pos = stop
                    continue
                start = pos + HEADER_SIZE
                if src is data:
                    parts = src[start:stop].split(b"\0", splits[ptype])
                elif size < _LARGE:
                    parts = bytes(src[start:stop]).split(b"\0", splits[ptype])
                else:  # no copy of the body on the way: each argument is copied once
                    parts = _split_in_place(src, start, stop, splits[ptype])
                pos = stop
                if len(parts) != nargs:
                    if len(parts) > nargs:
                        # A NUL inside a last argument that is not data: it ends there, as
                        # gearmand reads such arguments as C strings. (Kept, it would go out
                        # again in a reply field that cannot hold one: STATUS_RES's handle.)
                        parts = parts[:nargs]
                    elif ptype in _HANDLE_THEN_DATA:
                        parts = (bytes(src[start:stop]) + b"\0").split(b"\0", 1)  # [handle, b""]
                    else:
                        raise ProtocolError(
                            f"{PACKETS[ptype].name} needs {nargs} arguments, got {len(parts)}",
                            fatal=False,
                        )
                # tuple.__new__ rather than the named tuples' own __new__ (a Python function):
                # the same objects, one call layer less per packet.
                args = _tuple_new(_ARGS[ptype], parts)
                events.append(_tuple_new(Packet, (magic, ptype, args)))
        except ProtocolError as exc:
            if not events:
                raise
            self.error = exc
        finally:
            # Keep what was decoded even when a later packet in the same read is bad.
            if src is buf:
                if pos:
                    del buf[:pos]
            elif pos < end:
                buf += memoryview(src)[pos:]
        return events

    def check(self) -> None:
        """Raise the protocol error held back by the last ``feed``, if any."""
        exc, self.error = self.error, None
        if exc is not None:
            raise exc
