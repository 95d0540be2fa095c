"""farm.server.endedpeers.EndedPeers: the closed worker connections admin `served` counts,
kept ENDED_KEPT_FOR seconds, ENDED_KEPT names at most, and only those whose names (or ports)
their supervisor asked about (``watch``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from farm.server import endedpeers
from farm.server.endedpeers import ENDED_KEPT, ENDED_KEPT_FOR, EndedPeers


@dataclass
class Conn:
    peer_port: int
    fd: int = 9
    ip: str = "127.0.0.1"
    peer_pid: int = 0


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1000.0]
    monkeypatch.setattr(endedpeers, "monotonic", lambda: now[0])
    return now


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
