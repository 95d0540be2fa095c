"""Abilities cannot be used to make the server slow or large.

A connection sending 100,000 CAN_DOs made every GRAB take 62 ms and stalled
every client for 12.5 s. Now a grab looks only at the functions that have
runnable jobs when a worker has more abilities than that, and one connection
may register at most --max-abilities functions.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.server.jobs import MAX_IDLE_FUNCTIONS, JobServer
from tests.helpers.fakes import FakePeer
from tests.helpers.peers import Peer
from tests.helpers.servers import start_farm_server, stop_process
from tests.helpers.waiting import wait_for


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
        assert err.args == (
            b"ARGUMENT_TOO_LARGE",
            b"more than 100 functions on one connection (--max-abilities)",
        )
        assert w.closed_within(5)
        ok = peer_factory(srv.addr)
        ok.send_raw(b"".join(p.encode_req(T.CAN_DO, b"g%d" % i) for i in range(100)))
        ok.send(T.CAN_DO, "g5")  # again: no new entry, so not past the cap
        ok.send(T.ECHO_REQ, "alive")
        assert ok.expect(T.ECHO_RES).args == (b"alive",)
    finally:
        srv.stop()


def test_partial_bodies_are_bounded_across_connections(
    peer_factory: Callable[[str], Peer],
) -> None:
    # 15 connections x 50 MB half-sent bodies once held 788 MB. Here: 1 MB for all.
    srv = start_farm_server("--max-packet", "1000000", "--max-partial-bytes", "1000000")
    try:
        header = p.HEADER.pack(p.REQ, T.SUBMIT_JOB_BG, 900_000)
        a, b = peer_factory(srv.addr), peer_factory(srv.addr)
        a.send_raw(header + b"f\0\0" + b"x" * 600_000)  # each fine alone,
        b.send_raw(header + b"f\0\0" + b"y" * 600_000)  # together past the limit
        (refused,) = wait_for(
            "one of the two to be refused",
            lambda: [q for q in (a, b) if not q.nothing_within(0.05)],
        )
        err = refused.expect(T.ERROR)
        assert err.args[0] == b"ARGUMENT_TOO_LARGE" and b"partly received" in err.args[1]
        assert refused.closed_within(5)
        other = b if refused is a else a
        other.send_raw(b"z" * 299_997)  # the other finishes its packet and is answered
        assert other.expect(T.JOB_CREATED).type == T.JOB_CREATED
        witness = peer_factory(srv.addr)
        witness.send(T.ECHO_REQ, "alive")
        assert witness.expect(T.ECHO_RES).args == (b"alive",)
    finally:
        srv.stop()


def test_unused_function_entries_are_freed_past_a_bound(
    peer_factory: Callable[[str], Peer],
) -> None:
    # Every name a worker or a client ever used stayed in the server for good. Now unused
    # ones (no job, no worker, no limit of their own) are kept up to MAX_IDLE_FUNCTIONS.
    srv = start_farm_server()
    try:
        names = [b"gone%d" % i for i in range(MAX_IDLE_FUNCTIONS + 1500)]
        w = peer_factory(srv.addr)
        w.send_raw(b"".join(p.encode_req(T.CAN_DO, n) for n in names[:1500]))
        w.send_raw(b"".join(p.encode_req(T.CANT_DO, n) for n in names[:1500]))
        # Acted on before the client's below, which must be the newest unused ones: the
        # server takes a long read a slice a turn, interleaved with other peers' reads.
        w.send(T.ECHO_REQ, "after the CANT_DOs")
        w.expect(T.ECHO_RES)
        c = peer_factory(srv.addr)  # foreground jobs nobody runs, dropped with their client
        c.send_raw(b"".join(p.encode_req(T.SUBMIT_JOB, n, b"", b"x") for n in names[1500:]))
        for _ in names[1500:]:
            c.expect(T.JOB_CREATED)
        c.sock.close()
        keep = peer_factory(srv.addr)
        keep.send(T.SUBMIT_JOB_BG, "queued", "", "stays")
        keep.expect(T.JOB_CREATED)
        keep.send(T.CAN_DO, "registered")
        admin = peer_factory(srv.addr)
        listed = wait_for(
            "the unused entries to be freed",
            lambda: (
                rows
                if len(rows := admin.admin("status").splitlines()[:-1]) <= MAX_IDLE_FUNCTIONS + 2
                else None
            ),
        )
        functions = {row.split("\t")[0]: row.split("\t")[1:] for row in listed}
        assert functions["queued"] == ["1", "0", "0"]
        assert functions["registered"] == ["0", "0", "1"]
        assert "gone0" not in functions, "the oldest unused entries go first"
        assert f"gone{len(names) - 1}" in functions, "the newest unused ones are kept"
    finally:
        srv.stop()


def test_a_refused_connection_frees_its_share_at_once(peer_factory: Callable[[str], Peer]) -> None:
    # The bytes of a connection refused for passing the limit were counted until its close
    # landed, so connections read later in the same loop turn were refused too: 5 of 6
    # PHP clients sending 55 MB each were cut off where one had to be.
    srv = start_farm_server("--max-packet", "1000000", "--max-partial-bytes", "3000000")
    try:
        header = p.HEADER.pack(p.REQ, T.SUBMIT_JOB_BG, 900_000) + b"f\0\0"
        peers = [peer_factory(srv.addr) for _ in range(4)]
        for peer in peers:
            peer.send_raw(header + b"x" * 450_000)  # 1.8 MB of TCP's 2 MB share
        witness = peer_factory(srv.addr)
        witness.send(T.ECHO_REQ, "read")
        witness.expect(T.ECHO_RES)
        stop_process(srv.proc.pid)  # the next bytes of all four are read in one turn
        try:
            for peer in peers:
                peer.send_raw(b"y" * 100_000)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        witness.send(T.ECHO_REQ, "after")
        witness.expect(T.ECHO_RES)
        refused = [q for q in peers if not q.nothing_within(0.2)]
        assert len(refused) == 1, f"{len(refused)} refused where one takes it past the limit"
    finally:
        srv.stop()
