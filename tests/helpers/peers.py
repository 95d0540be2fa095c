"""A raw-protocol connection to a job server: send packets, read packets or admin text."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from farm import protocol as p
from farm.protocol import PacketType as T
from tests.helpers.servers import Server, connect


class Peer:
    """A raw-protocol connection for tests: send packets, read packets or admin text."""

    def __init__(self, addr: str, timeout: float = 10) -> None:
        self.sock = connect(addr, timeout)
        self.decoder = p.Decoder(allow_admin=False)
        self.pending: list[p.Packet] = []

    def send(self, ptype: int, *args: bytes | str) -> None:
        raw = [a.encode() if isinstance(a, str) else a for a in args]
        self.sock.sendall(p.encode_req(ptype, *raw))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = 10) -> p.Packet:
        self.sock.settimeout(timeout)
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return self.pending.pop(0)

    def expect(self, ptype: int, timeout: float = 10) -> p.Packet:
        pkt = self.recv(timeout)
        assert pkt.type == ptype, f"expected {p.PACKETS[ptype].name}, got {pkt.name} {pkt.args}"
        return pkt

    def nothing_within(self, seconds: float) -> bool:
        """True when no packet arrives within ``seconds`` (a bounded negative check)."""
        if self.pending:
            return False
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return True
        if data:
            self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        return False

    def closed_within(self, seconds: float = 5) -> bool:
        """True when the server closes this connection within ``seconds``."""
        self.sock.settimeout(seconds)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.pending.extend(self.decoder.feed(data))  # type: ignore[arg-type]
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def admin(self, command: str, timeout: float = 10) -> str:
        """Send an admin command; return the reply up to and including its end line."""
        self.sock.settimeout(timeout)
        self.sock.sendall(command.encode() + b"\r\n")
        buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return buf.decode()
            buf += data
            text = buf.decode()
            if text.startswith(("OK", "ERR")) and text.endswith("\n"):
                return text
            if text == ".\n" or text.endswith("\n.\n"):
                return text

    def close(self) -> None:
        self.sock.close()


def sleeping_worker(make: Callable[[str], Peer], srv: Server, function: str) -> Peer:
    """A raw worker of ``function`` on ``srv``, asleep (PRE_SLEEP) once this returns."""
    w = make(srv.addr)
    w.send(T.CAN_DO, function)
    w.send(T.PRE_SLEEP)
    w.send(T.ECHO_REQ, "asleep")
    w.expect(T.ECHO_RES)
    return w


def grab_all(addr: str, function: str = "f") -> list[tuple[bytes, bytes]]:
    """(unique, data) of every job a raw worker of ``function`` gets, in order, completing
    each; returns once the server answered an echo after the last (the turn's commit of
    the store's deletes is in by then)."""
    return [(unique, data) for _, unique, data in grab_every_job(addr, [function])]


def grab_every_job(addr: str, functions: Iterable[str]) -> list[tuple[bytes, bytes, bytes]]:
    """(handle, unique, data) of every job a raw worker of ``functions`` gets, in order,
    completing each, as ``grab_all``."""
    worker = Peer(addr)
    for function in functions:
        worker.send(T.CAN_DO, function)
    got = []
    while True:
        worker.send(T.GRAB_JOB_UNIQ)
        pkt = worker.recv()
        if pkt.type == T.NO_JOB:
            break
        assert pkt.type == T.JOB_ASSIGN_UNIQ, pkt
        handle, _, unique, data = pkt.args
        got.append((bytes(handle), bytes(unique), bytes(data)))
        worker.send(T.WORK_COMPLETE, handle, b"")
    worker.send(T.ECHO_REQ, b"x")
    worker.expect(T.ECHO_RES)
    worker.close()
    return got
