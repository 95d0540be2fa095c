"""Before a server takes over the jobs gearmand queued in its store: are its addresses free?

Opening the store moves gearmand's queued jobs into farm's table of the same file (and
makes the file farm's: mode 600, WAL). The server binds its addresses only after that, so a
start that then failed on a port in use (gearmand itself still running there, the usual
case while a host is switched over) had emptied gearmand's queue and exited 1: a gearmand
started again on its file found none of its jobs. Where the store holds such a queue, the
addresses are tried first (bound and let go), and a refusal is said before the file is
touched, as the listeners would say it. Farm's own store is opened first as before: a
second server on the same port and store is told of the store (exit 2), which names the
port to change.
"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from farm.net import parse_address
from farm.server.options import ServerOptions
from farm.server.refusals import ListenError, another_users_socket, taken_by_another_user
from farm.server.store import memory_only
from farm.server.storetables import GEARMAND_COLUMNS, HEADER_SIZE, quoted, read_only_uri
from farm.unixsocket import clear_socket_path

__all__ = ["gearmand_queue_in", "listen_first"]


def listen_first(options: ServerOptions) -> None:
    """ListenError where one of the server's addresses is taken, when its store holds
    gearmand's queue; nothing (and nothing tried) otherwise."""
    if memory_only(options.store) or not gearmand_queue_in(options.store):
        return
    for addr in options.listen:
        tcp = parse_address(addr, default_port=options.port)
        try:
            _try_bind(tcp.host or None, tcp.port)
        except OSError as exc:
            raise ListenError(str(tcp), exc, taken_by_another_user(options, tcp, exc)) from exc
    for path in options.unix:
        try:
            clear_socket_path(path)  # what the listener does first: a live socket refuses
        except OSError as exc:
            raise ListenError(
                f"unix:{path}", exc, another_users_socket(options, path, exc)
            ) from exc


def gearmand_queue_in(store: str) -> bool:
    """Whether the file at ``store`` may have a table of gearmand's queue with a row in it.
    Read as it is, immutable: SQLite makes no -wal or -shm beside it (another program's
    database refused must stay as it was). A missing file: False. One that cannot be read
    so: True where it is in rollback-journal mode (gearmand's, written in place meanwhile),
    False in WAL mode (farm's own, which a running server's checkpoint may be writing: a
    second server on its port is told of the store, not the port)."""
    path = Path(store)
    try:
        with path.open("rb") as file:
            wal = file.read(HEADER_SIZE)[18:19] == b"\x02"  # SQLite's write version: 2 is WAL
    except OSError:
        return False
    try:
        db = sqlite3.connect(read_only_uri(store) + "&immutable=1", uri=True, timeout=0)
    except sqlite3.Error:
        return not wal
    try:
        names = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        for (name,) in names:
            table = quoted(name)
            columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if columns >= GEARMAND_COLUMNS and db.execute(f"SELECT 1 FROM {table}").fetchone():
                return True
        return False
    except sqlite3.Error:
        return not wal
    finally:
        db.close()


def _try_bind(host: str | None, port: int) -> None:
    """Bind ``host``'s addresses at ``port`` as the listener will (all of them for no
    host), and let them go; OSError as the listener's bind would raise it."""
    # As bytes: a str is encoded with the idna codec, imported then, which a server that
    # dropped privileges after its imports may not be able to read (tests/integration/
    # test_store_header.py runs one so).
    name = host.encode("ascii") if host is not None and host.isascii() else host
    for family, kind, proto, _, address in socket.getaddrinfo(
        name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio binds it: v4 has a socket of its own
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
