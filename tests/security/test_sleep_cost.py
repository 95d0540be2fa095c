"""What a local user's worker connection can make the server spend by saying it sleeps.

A worker may register 4,096 functions (--max-abilities). Putting it to sleep puts it in
each one's list of sleepers; a PRE_SLEEP, or a held grab, repeated while it already slept
did all of that again: 60 KB of them (5,000 packets) held the server's loop, and with it
every Executor call, for 25 s; a PRE_SLEEP and a GRAB_JOB in turn took it out of them and
put it back each time, and with jobs queued in 4,096 functions it does not serve, each of
its grabs walked 4,096 names to find nothing. What is counted here is that work itself,
the server's sleeper-list insertions and removals and the names a grab walks, on a server
driven in this process: a timing seen from another connection would stay small while the
loop did the same work a slice at a time."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest

from farm import protocol as p
from farm.protocol import PacketType as T
from farm.server.connection import Connection
from farm.server.hub import Hub
from farm.server.options import parse_args
from farm.server.sleepers import RESETTLE_MAX, Sleepers
from tests.helpers.pair import MemoryTransport

REPEATS = 5000
#: Turns of the tests that count what each turn cost before (8,192 list operations, or
#: 4,096 names): fewer, or those would take seconds to show it.
TURNS = 200


def _worker(functions: int, *, held: bool = True) -> tuple[Hub, Connection, MemoryTransport]:
    hub = Hub(parse_args(["--store", "none"]))
    conn, wire = Connection(hub), MemoryTransport()
    conn.connection_made(wire)  # type: ignore[arg-type]  # a stand-in
    conn.data_received(
        (p.encode_req(T.OPTION_REQ, p.OPTION_HELD_GRAB) if held else b"")
        + b"".join(p.encode_req(T.CAN_DO, b"f%04d" % n) for n in range(functions))
    )
    return hub, conn, wire


class CountedSleepers(OrderedDict[Any, bool]):
    """A function's sleepers list that counts the workers put in it and taken out."""

    changes = 0

    def __setitem__(self, key: Any, value: bool) -> None:
        CountedSleepers.changes += key not in self
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        CountedSleepers.changes += 1
        super().__delitem__(key)

    def pop(self, key: Any, *default: Any) -> Any:
        CountedSleepers.changes += key in self
        return super().pop(key, *default)


class CountedAbilities(dict[bytes, float]):
    """A worker's functions that count the names a walk over them, or a look-up, meets."""

    met = 0

    def __iter__(self) -> Iterator[bytes]:
        for name in super().__iter__():
            CountedAbilities.met += 1
            yield name

    def __contains__(self, name: object) -> bool:
        CountedAbilities.met += 1
        return super().__contains__(name)


def _count_sleepers(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CountedSleepers, "changes", 0)
    for fq in hub.jobs.functions.values():
        fq.sleepers = CountedSleepers(fq.sleepers)


@pytest.mark.parametrize("how", ["pre-sleep", "held-grab"])
def test_a_worker_saying_again_that_it_sleeps_costs_the_server_nothing_more(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    added = 0
    real = Sleepers._add_sleeper

    def counted(fq: Any, worker: Any) -> None:
        nonlocal added
        added += 1
        real(fq, worker)

    monkeypatch.setattr(Sleepers, "_add_sleeper", staticmethod(counted))
    _, conn, _ = _worker(4096)
    asleep = p.encode_req(T.PRE_SLEEP if how == "pre-sleep" else T.GRAB_JOB)
    conn.data_received(asleep)
    assert added == 4096  # asleep on each of its functions, once
    conn.data_received(asleep * REPEATS)
    assert added == 4096, f"{REPEATS} more {how} walked its functions again"
    assert conn.sleeping and not conn.closed


def test_a_worker_of_few_functions_still_moves_to_the_warm_end() -> None:
    _, conn, _ = _worker(RESETTLE_MAX)
    other = Connection(conn.hub)
    other.connection_made(MemoryTransport())  # type: ignore[arg-type]  # a stand-in
    other.data_received(p.encode_req(T.CAN_DO, b"f0000"))
    conn.data_received(p.encode_req(T.PRE_SLEEP))
    other.data_received(p.encode_req(T.PRE_SLEEP))  # the newest sleeper now
    conn.data_received(p.encode_req(T.PRE_SLEEP))  # said again: the newest once more
    sleepers = conn.jobs.functions[b"f0000"].sleepers
    assert list(sleepers)[-1] is conn


def test_a_held_grab_of_a_worker_left_with_no_function_is_answered() -> None:
    _, conn, wire = _worker(1)
    conn.data_received(p.encode_req(T.GRAB_JOB))  # held, asleep
    conn.data_received(p.encode_req(T.CANT_DO, b"f0000"))
    wire.take()
    conn.data_received(p.encode_req(T.GRAB_JOB))
    got = [pkt.type for pkt in p.Decoder(allow_admin=False).feed(wire.take())]
    assert got == [T.NO_JOB], "a worker with nothing to do waited for ever"


def test_a_worker_that_sleeps_and_grabs_in_turn_is_not_put_in_every_list_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A PRE_SLEEP and a GRAB_JOB, 24 bytes: out of 4,096 sleepers lists and into them again.
    hub, conn, wire = _worker(4096, held=False)
    _count_sleepers(hub, monkeypatch)
    conn.data_received(p.encode_req(T.PRE_SLEEP))
    assert CountedSleepers.changes == 4096  # asleep on each of its functions, once
    conn.data_received((p.encode_req(T.GRAB_JOB) + p.encode_req(T.PRE_SLEEP)) * TURNS)
    assert CountedSleepers.changes <= 4096 + 2 * TURNS, "each turn walked its functions"
    replies = [pkt.type for pkt in p.Decoder(allow_admin=False).feed(wire.take())]
    assert replies == [T.NO_JOB] * TURNS and conn.sleeping and not conn.closed


def test_a_worker_woken_for_each_job_is_not_put_in_every_list_each_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub, worker, worker_wire = _worker(4096, held=False)
    client = Connection(hub)
    client.connection_made(MemoryTransport())  # type: ignore[arg-type]  # a stand-in
    _count_sleepers(hub, monkeypatch)
    worker.data_received(p.encode_req(T.PRE_SLEEP))
    for _ in range(TURNS):
        client.data_received(p.encode_req(T.SUBMIT_JOB_BG, b"f0001", b"", b"x"))
        woken = [pkt.type for pkt in p.Decoder(allow_admin=False).feed(worker_wire.take())]
        assert woken == [T.NOOP]  # a job for it: woken, as ever
        worker.data_received(p.encode_req(T.GRAB_JOB))
        (assigned,) = p.Decoder(allow_admin=False).feed(worker_wire.take())
        worker.data_received(
            p.encode_req(T.WORK_COMPLETE, assigned.args[0], b"") + p.encode_req(T.PRE_SLEEP)
        )
    assert CountedSleepers.changes <= 4096 + 2 * TURNS, "each wake walked its functions"
    assert not hub.jobs.jobs


def _queued(hub: Hub, submit: T, prefix: bytes) -> Connection:
    """A client that queued a background job in each of 4,096 functions PREFIX0000..."""
    client = Connection(hub)
    client.connection_made(MemoryTransport())  # type: ignore[arg-type]  # a stand-in
    client.data_received(
        b"".join(p.encode_req(submit, prefix + b"%04d" % n, b"", b"x") for n in range(4096))
    )
    return client


def test_a_grab_does_not_walk_a_worker_s_functions_to_find_none_with_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Jobs queued in 4,096 functions nobody serves: a grab looked among the functions both
    # the worker's and with work, walking 4,096 names of one or the other.
    hub, conn, wire = _worker(4096, held=False)
    client = _queued(hub, T.SUBMIT_JOB_BG, b"g")
    monkeypatch.setattr(CountedAbilities, "met", 0)
    conn.abilities = CountedAbilities(conn.abilities)
    conn.data_received(p.encode_req(T.GRAB_JOB) * TURNS)
    assert CountedAbilities.met <= TURNS, "each grab walked the names"
    replies = [pkt.type for pkt in p.Decoder(allow_admin=False).feed(wire.take())]
    assert replies == [T.NO_JOB] * TURNS
    client.data_received(p.encode_req(T.SUBMIT_JOB_BG, b"f4095", b"", b"x"))
    conn.data_received(p.encode_req(T.GRAB_JOB))  # work of its own: found
    (assigned,) = p.Decoder(allow_admin=False).feed(wire.take())
    assert assigned.type == T.JOB_ASSIGN and assigned.args[1] == b"f4095"


class CountedFunctions(dict[bytes, Any]):
    """The server's functions, counting the look-ups of one by name (a walk's steps)."""

    met = 0

    def __getitem__(self, name: bytes) -> Any:
        CountedFunctions.met += 1
        return super().__getitem__(name)


def test_a_pre_sleep_with_work_waiting_does_not_walk_the_worker_s_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A job queued (low) in each of its own 4,096 functions: each PRE_SLEEP looked for the
    # best of them, 12,288 steps, only to say NOOP, and takes none: 60 KB of them held
    # the loop for seconds.
    hub, conn, wire = _worker(4096, held=False)
    _queued(hub, T.SUBMIT_JOB_LOW_BG, b"f")
    monkeypatch.setattr(CountedFunctions, "met", 0)
    hub.jobs.functions = CountedFunctions(hub.jobs.functions)
    conn.data_received(p.encode_req(T.PRE_SLEEP) * TURNS)
    replies = [pkt.type for pkt in p.Decoder(allow_admin=False).feed(wire.take())]
    assert replies == [T.NOOP] * TURNS  # work waits for it: woken at once, as ever
    assert CountedFunctions.met <= TURNS, "each PRE_SLEEP walked its functions"
