"""Abilities cannot be used to make the server slow or large.

A connection sending 100,000 CAN_DOs made every GRAB take 62 ms and stalled
every client for 12.5 s. Now a grab looks only at the functions that have
runnable jobs when a worker has more abilities than that, and one connection
may register at most --max-abilities functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.server.jobs import JobServer
from tests.helpers.fakes import FakePeer
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server


class CountingAbilities(dict[bytes, float]):
    """A worker's abilities that count how often the whole table is walked."""

    walks = 0

    def __iter__(self) -> Iterator[bytes]:
        CountingAbilities.walks += 1
        return super().__iter__()


def test_a_grab_does_not_walk_a_huge_ability_table() -> None:
    jobs = JobServer(hostname="h")
    worker = FakePeer()
    abilities = CountingAbilities()
    worker.abilities = abilities  # type: ignore[assignment]  # counts the walks
    for i in range(50_000):
        jobs.can_do(worker, b"f%d" % i)
    client: Any = FakePeer()
    submitted = [jobs.submit(client, b"f7", b"", b"x") for _ in range(100)]
    CountingAbilities.walks = 0
    grabbed = [jobs.grab(worker) for _ in range(100)]
    assert [j.handle for j in grabbed if j] == [j.handle for j in submitted]
    assert jobs.grab(worker) is None
    assert CountingAbilities.walks == 0, "no grab walked the 50,000 abilities"


def test_a_connection_past_the_ability_cap_gets_an_error_and_is_closed(
    peer_factory: Callable[[str], Peer],
) -> None:
    srv = start_farm_server("--max-abilities", "100")
    try:
        w = peer_factory(srv.addr)
        w.send_raw(b"".join(p.encode_req(T.CAN_DO, b"f%d" % i) for i in range(101)))
        err = w.expect(T.ERROR)
        assert err.args == (b"ARGUMENT_TOO_LARGE", b"more than 100 functions on one connection")
        assert w.closed_within(5)
        ok = peer_factory(srv.addr)
        ok.send_raw(b"".join(p.encode_req(T.CAN_DO, b"g%d" % i) for i in range(100)))
        ok.send(T.CAN_DO, "g5")  # again: no new entry, so not past the cap
        ok.send(T.ECHO_REQ, "alive")
        assert ok.expect(T.ECHO_RES).args == (b"alive",)
    finally:
        srv.stop()
