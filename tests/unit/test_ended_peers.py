"""farm.server.endedpeers.EndedPeers: the closed worker connections admin `served` counts,
kept ENDED_KEPT_FOR seconds, ENDED_KEPT names at most, and only those whose names (or ports)
their supervisor asked about (``watch``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from farm.server import endedpeers
from farm.server.endedpeers import ENDED_KEPT, ENDED_KEPT_FOR, EndedPeers


@dataclass
class Conn:
    peer_port: int
    fd: int = 9
    ip: str = "127.0.0.1"
    peer_pid: int = 0
    abilities: dict[bytes, float] = field(default_factory=dict)
    opened: float = 1000.0  # the clock fixture's start
    peer_uid: int | None = None  # TCP: no user known


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(endedpeers, "monotonic", lambda: now[0])
    return now


ME = {1000}  # the claimant's user and the server's


def watching(*ports: int) -> EndedPeers:
    ended = EndedPeers()
    ended.watch({f"tcp:127.0.0.1:{port}" for port in ports})
    return ended


def test_an_end_is_kept_for_its_time_then_forgotten(clock: list[float]) -> None:
    ended = watching(5000)
    ended.note(Conn(5000), 3, 0)
    ended.note(Conn(5000), 2, 1)  # a second connection of the same name adds up
    assert ended.jobs("tcp:127.0.0.1:5000") == (5, 1)
    clock[0] += ENDED_KEPT_FOR + 0.1
    assert ended.jobs("tcp:127.0.0.1:5000") == (0, 0)


def test_only_ends_asked_about_named_and_with_jobs_are_kept(clock: list[float]) -> None:
    ended = watching(5002)
    ended.note(Conn(5001), 3, 0)  # never asked about
    ended.note(Conn(0, peer_pid=0), 3, 0)  # fd:N names the next connection on that fd
    ended.note(Conn(5002), 0, 0)
    assert ended.jobs("tcp:127.0.0.1:5001") == (0, 0)
    assert ended._jobs == {}


def test_at_most_ended_kept_names_the_oldest_going_first(clock: list[float]) -> None:
    ended = EndedPeers()
    for port in range(10000, 10000 + ENDED_KEPT + 1):  # each asked about, then ended
        ended.watch({f"tcp:127.0.0.1:{port}"})
        ended.note(Conn(port), 1, 0)
    assert len(ended._jobs) == ENDED_KEPT
    assert ended.jobs("tcp:127.0.0.1:10000") == (0, 0)
    assert ended.jobs(f"tcp:127.0.0.1:{10000 + ENDED_KEPT}") == (1, 0)


def test_the_names_asked_about_are_as_many_the_latest_asked_kept(clock: list[float]) -> None:
    ended = EndedPeers()
    for port in range(10000, 10000 + ENDED_KEPT):  # one at a time: asked in this order
        ended.watch({f"tcp:127.0.0.1:{port}"})
    ended.watch({"tcp:127.0.0.1:10000"})  # asked again: the latest
    ended.watch({"pid:7"})  # one more: the oldest asked goes
    assert len(ended._watched) == ENDED_KEPT
    for port in (10000, 10001):
        ended.note(Conn(port), 1, 0)
    ended.note(Conn(0, peer_pid=7), 1, 0)
    assert ended.jobs("tcp:127.0.0.1:10000") == (1, 0)
    assert ended.jobs("tcp:127.0.0.1:10001") == (0, 0)
    assert ended.jobs("pid:7") == (1, 0)


def test_an_end_nobody_named_is_claimed_once_by_its_functions(clock: list[float]) -> None:
    # `gearman -w -c 2` with a backlog: its process ended its 2 jobs and left before its
    # supervisor read its sockets, so nothing named its connection.
    ended = EndedPeers()
    ended.note(Conn(5001, abilities={b"rev": 0.0}), 2, 0)
    ended.note(Conn(5002, abilities={b"rev": 0.0}), 2, 0)
    ended.note(Conn(5003, abilities={b"rev": 0.0}), 0, 0)  # no job: nothing to claim
    ended.note(Conn(5004, abilities={b"rev": 0.0}), 1, 1)  # left holding one: no clean end
    ended.note(Conn(5005, abilities={b"other": 0.0}), 3, 0)
    clock[0] += 1.0
    assert ended.claim(0.5, ME, {b"rev"}) == 0  # ended before the claiming process started
    assert ended.claim(2.0, ME, {b"rev"}) == 2
    assert ended.claim(2.0, ME, {b"rev"}) == 2  # the other one: one end per claim
    assert ended.claim(2.0, ME, {b"rev"}) == 0  # none left: that worker did nothing
    assert ended.claim(2.0, ME, {b"other"}) == 3
    ended.note(Conn(5006, abilities={b"rev": 0.0}), 2, 0)
    clock[0] += ENDED_KEPT_FOR + 0.1
    assert ended.claim(ENDED_KEPT_FOR + 1, ME, {b"rev"}) == 0  # forgotten with the rest


def test_an_end_named_only_after_it_closed_is_claimed_not_served(clock: list[float]) -> None:
    # Its supervisor read its socket, and it closed before the `peers` naming it arrived:
    # `served` counts named ends alone (any local user's would push a pool's out), and its
    # supervisor claims it as it would a quick worker's.
    ended = EndedPeers()
    ended.note(Conn(5001, abilities={b"rev": 0.0}), 2, 0)
    ended.watch({"tcp:127.0.0.1:5001"})
    assert ended.jobs("tcp:127.0.0.1:5001") == (0, 0)
    assert ended.claim(1.0, ME, {b"rev"}) == 2


def test_at_most_unnamed_kept_ends_the_oldest_going_first(clock: list[float]) -> None:
    ended = EndedPeers()
    ended.note(Conn(4999, abilities={b"mine": 0.0}), 2, 0)
    for port in range(10000, 10000 + endedpeers.UNNAMED_KEPT):  # any local user's workers
        ended.note(Conn(port, abilities={b"theirs": 0.0}), 1, 0)
    assert ended.claim(1.0, ME, {b"mine"}) == 0


def test_an_end_opened_before_the_claimant_started_is_not_its_own(clock: list[float]) -> None:
    # Another worker's connection, open before this process started, closed in its lifetime.
    ended = EndedPeers()
    clock[0] += 5.0
    ended.note(Conn(5001, abilities={b"rev": 0.0}), 2, 0)  # opened at 1000, closed at 1005
    clock[0] += 0.5
    assert ended.claim(1.0, ME, {b"rev"}) == 0
    assert ended.claim(6.0, ME, {b"rev"}) == 2  # one whose lifetime holds both


def test_a_unix_end_of_another_user_is_never_claimed(clock: list[float]) -> None:
    ended = EndedPeers()
    ended.note(Conn(0, peer_pid=41, peer_uid=1001, abilities={b"rev": 0.0}), 3, 0)
    ended.note(Conn(0, peer_pid=42, peer_uid=1000, abilities={b"rev": 0.0}), 2, 0)
    assert ended.claim(1.0, ME, {b"rev"}) == 2  # the older is another user's
    assert ended.claim(1.0, ME, {b"rev"}) == 0
    assert ended.claim(1.0, {1001}, {b"rev"}) == 3  # a pool run as that user claims it
