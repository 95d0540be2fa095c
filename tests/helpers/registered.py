"""How many workers a server's admin status counts for a function."""

from __future__ import annotations

from tests.helpers.peers import Peer


def _workers_of(addr: str, function: str) -> int:
    peer = Peer(addr)
    try:
        rows = [line.split("\t") for line in peer.admin("status").splitlines()]
    finally:
        peer.close()
    return sum(int(r[3]) for r in rows if len(r) == 4 and r[0] == function)
