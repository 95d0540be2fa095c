"""Job server stand-ins that misbehave: one accepts a connection and reads nothing until told
to, one accepts none, and one does with its connection whatever a test gives it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: What a ``misbehaving`` server does with its one connection, until the event is set.
Behaviour = Callable[[socket.socket, threading.Event], None]


class StalledPeer:
    """Accepts one connection and never reads it (a hung or SIGSTOPped server) until
    ``read()``: then it takes everything sent, into ``received``. It never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        # Inherited by the accepted socket: a small window, so the client's own buffer
        # fills after little of what it sends.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = bytearray()
        self._lock = threading.Lock()
        self._reading = threading.Event()
        self._closing = False
        self.ended = threading.Event()  # the client closed the connection: all it sent is read
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            self._reading.wait()
            conn.settimeout(0.2)  # to notice close()
            while not self._closing:
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                except OSError:  # reset: the client went away with bytes unsent
                    data = b""
                if not data:
                    self.ended.set()
                    return
                with self._lock:
                    self.received += data

    def read(self) -> None:
        """Start reading what the client sent, and all it sends from now on."""
        self._reading.set()

    def seen(self, marker: bytes) -> bool:
        with self._lock:
            return marker in self.received

    def close(self) -> None:
        self._closing = True
        self._reading.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() that still waits
        except OSError:
            pass
        self.listener.close()
        self._thread.join(10)


@contextmanager
def unanswered_listener() -> Iterator[str]:
    """The address of a listener whose backlog is full, as a host that is down or behind a
    firewall that drops our packets: a connect to it neither succeeds nor fails, it waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # one fills the queue of a listen(0); the others wait for a SYN-ACK
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for sock in (listener, *fillers):
            sock.close()


@contextmanager
def misbehaving(behave: Behaviour) -> Iterator[str]:
    """The address of a server that accepts one connection and hands it to ``behave``
    (with an event set when the test is done), in a thread of its own; closed after."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:  # closed before anyone connected
            return
        with conn:
            try:
                behave(conn, stop)
            except OSError:  # the client went away
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes an accept() that still waits
        except OSError:
            pass
        listener.close()
        thread.join(10)


class CuttingShort:
    """Accepts every connection, reads a little of it and closes it (a reset: bytes unread),
    counting them in ``accepts``: a server that cuts every large submit short (one at its
    --max-connections, a proxy's limit), having sent ``says`` first (an ERROR: as farm's
    server did at its limit). ``addr`` while open; ``close()`` after."""

    def __init__(self, says: bytes = b"", hold: threading.Event | None = None) -> None:
        self.says = says
        # Set: the first accept waits for it (the kernel still takes the connect, and what
        # fits its buffers), so that what a test queued meanwhile all waits on one connection.
        self.hold = hold
        self.listener = socket.socket()
        # Inherited by the accepted socket: a small window, so a large submit is not all
        # in the kernel's buffers when the connection is reset.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.addr = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepts = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        if self.hold is not None:
            self.hold.wait(30)
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepts += 1
            with conn:
                try:
                    conn.sendall(self.says)
                    conn.recv(1024)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that waits
        except OSError:
            pass
        self.listener.close()
        self._thread.join(10)
